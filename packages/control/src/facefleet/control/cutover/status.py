"""A readable cutover status: stage, weight, time in stage, every gate with its value and
thresholds, and the users and images on each side in the stage. `describe` is pure (over the
state, the health reads and the counts); `read_status` gathers them; `render` is the text
`facefleet cutover status` prints, and the dashboard shows the same numbers
(`facefleet.dashboards.dashboard`, cutover row)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from facefleet.common.aws import AwsTarget
from facefleet.common.metrics import Metric
from facefleet.common.names import Names
from facefleet.control.cutover import ecs_move, effects
from facefleet.control.cutover import health as health_reads
from facefleet.control.cutover.ecs_move import MoveCheck
from facefleet.control.cutover.machine import (
    STAGES,
    CutoverState,
    Gates,
    GateStatus,
    Health,
    gate_findings,
    gates_of,
)
from facefleet.control.router import BATCH, ECS, METRICS_SERVICE, users_by_side


@dataclass(frozen=True)
class CutoverStatus:
    status: str
    weight: int
    stage: int
    seconds_in_stage: float
    soak_s: float
    reason: str
    gates: tuple[GateStatus, ...]
    # side -> count, for the users and images seen since the stage began
    users: Mapping[str, int] = field(default_factory=dict)
    images: Mapping[str, int] = field(default_factory=dict)
    routed: Mapping[str, int] = field(default_factory=dict)  # router metric, since the stage began
    ecs_queue: str | None = None  # what the ECS service reads (None: not checked)
    ecs_queue_moved: bool | None = None  # every part of the move verified (`ecs_move.check`)
    ecs_move: MoveCheck | None = None


def describe(
    state: CutoverState,
    health: Health,
    gates: Gates,
    now_s: float,
    *,
    uploads: Sequence[tuple[str, str]] = (),
    routed: Mapping[str, int] | None = None,
    ecs_move: MoveCheck | None = None,
) -> CutoverStatus:
    """`uploads`: (user id, image id) seen since the stage began; each user's side is the one
    the router gives it at the current weight."""
    gate_findings(health, gates)  # the same arithmetic as the machine (raises on bad input)
    users = [u for u, _ in uploads]
    sides = users_by_side(users, state.weight)
    on_batch = set(sides[BATCH])
    images = {BATCH: sum(u in on_batch for u in users), ECS: sum(u not in on_batch for u in users)}
    return CutoverStatus(
        status=state.status,
        weight=state.weight,
        stage=STAGES.index(state.weight),
        seconds_in_stage=max(0.0, now_s - state.entered_at_s) if state.entered_at_s else 0.0,
        soak_s=gates.soak(state.weight),
        reason=state.reason,
        gates=gates_of(health, gates),
        users={BATCH: len(sides[BATCH]), ECS: len(sides[ECS])},
        images=images,
        routed=dict(routed or {}),
        ecs_queue=ecs_move.reads if ecs_move else None,
        ecs_queue_moved=ecs_move.moved if ecs_move else None,
        ecs_move=ecs_move,
    )


def _fmt(value: float | None, unit: str = "") -> str:
    return "-" if value is None else f"{value:g}{unit}"


def render(status: CutoverStatus) -> str:
    hours, rest = divmod(int(status.seconds_in_stage), 3600)
    lines = [
        f"cutover: {status.status}  stage {status.stage}/{len(STAGES) - 1}  "
        f"weight {status.weight} % to Batch",
        f"time in stage: {hours}h{rest // 60:02d}m{rest % 60:02d}s of a {status.soak_s:g} s soak"
        + (f"  ({status.reason})" if status.reason else ""),
        "gates:                          value      hold above  roll back above  verdict",
    ]
    for gate in status.gates:
        lines.append(
            f"  {gate.name:<29} {_fmt(gate.value, gate.unit):<10} "
            f"{_fmt(gate.hold_above, gate.unit):<11} {_fmt(gate.rollback_above, gate.unit):<16} "
            f"{gate.verdict}"
        )
    lines.append("in this stage:        Batch    ECS")
    lines.append(
        f"  users             {status.users.get(BATCH, 0):>6} {status.users.get(ECS, 0):>6}"
    )
    lines.append(
        f"  images            {status.images.get(BATCH, 0):>6} {status.images.get(ECS, 0):>6}"
    )
    if status.routed:
        lines.append(
            f"  routed messages   {status.routed.get(BATCH, 0):>6} {status.routed.get(ECS, 0):>6}"
        )
    if status.ecs_move is not None:
        lines += _move_lines(status.ecs_move)
    return "\n".join(lines)


def _yes(value: bool | None, no: str) -> str:
    return "cannot tell (not readable here)" if value is None else ("yes" if value else no)


def _move_lines(check: MoveCheck) -> list[str]:
    move = "run `facefleet cutover move-ecs-queue`"
    overall = "yes" if check.moved else f"NO: {move} before the cutover starts"
    return [
        f"ECS service reads its own queue: {overall}",
        f"  QUEUE_URL: {_yes(check.reads == check.expected, 'NO')} ({check.reads or 'unset'})",
        f"  task role may consume it: {_yes(check.role_access, 'NO: ' + move)}",
        "  scaling alarms on the new queue: "
        + ("yes" if not check.alarms_on_old else f"NO: {', '.join(check.alarms_on_old)}"),
        f"  router mapping enabled: {_yes(check.mapping_enabled, 'NO: ' + move)}",
    ]


def as_dict(status: CutoverStatus) -> dict[str, Any]:
    from dataclasses import asdict

    data = asdict(status)
    for gate, source in zip(data["gates"], status.gates, strict=True):
        gate["verdict"] = source.verdict
    return data


def read_status(
    names: Names,
    aws: AwsTarget,
    *,
    gates: Gates | None = None,
    now_s: float | None = None,
    uploads: Sequence[tuple[str, str]] = (),
    ecs_cluster: str | None = None,
    ecs_service: str | None = None,
) -> CutoverStatus:
    """The status from SSM, CloudWatch and SQS (and the ECS service when named)."""
    import datetime as dt
    import time

    now = time.time() if now_s is None else now_s
    state = effects.load_state(names, aws)
    health = health_reads.read_health(names, state, aws, now_s=now)
    end = dt.datetime.fromtimestamp(now, dt.UTC) + dt.timedelta(minutes=1)
    start = dt.datetime.fromtimestamp(state.entered_at_s or now - 3600, dt.UTC) - dt.timedelta(
        minutes=1
    )
    cloudwatch = aws.client("cloudwatch")
    routed = {
        side: int(
            health_reads.metric_sum(
                cloudwatch,
                names.metrics_namespace,
                str(metric),
                {"Service": METRICS_SERVICE},
                start,
                end,
            )
        )
        for side, metric in ((BATCH, Metric.ROUTED_TO_BATCH), (ECS, Metric.ROUTED_TO_ECS))
    }
    moved = None
    if ecs_cluster and ecs_service:
        moved = ecs_move.check(names, ecs_cluster, ecs_service, aws)
    return describe(
        state,
        health,
        gates or Gates(),
        now,
        uploads=uploads,
        routed=routed,
        ecs_move=moved,
    )
