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
from facefleet.common.config import Names
from facefleet.common.metrics import Metric
from facefleet.control import observe
from facefleet.control.cutover import effects
from facefleet.control.cutover import health as health_reads
from facefleet.control.cutover.machine import STAGES, CutoverState, Gates, Health, gate_findings
from facefleet.control.router import BATCH, ECS, METRICS_SERVICE, users_by_side


@dataclass(frozen=True)
class GateStatus:
    name: str
    value: float | None
    hold_above: float
    rollback_above: float
    unit: str = ""

    @property
    def verdict(self) -> str:
        if self.value is None:
            return "no data"
        if self.value > self.rollback_above:
            return "ROLLBACK"
        if self.value > self.hold_above:
            return "hold"
        return "ok"


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
    ecs_queue_moved: bool | None = None


def gates_of(health: Health, gates: Gates) -> tuple[GateStatus, ...]:
    ratio = None
    if health.p95_ms is not None and health.baseline_p95_ms:
        ratio = round(health.p95_ms / health.baseline_p95_ms, 3)
    return (
        GateStatus("job failure rate", health.failure_rate, *gates.failure_rate),
        GateStatus("p95 per image / ECS baseline", ratio, *gates.p95_ratio, "x"),
        GateStatus("new dead letters", float(health.dead_letters), *gates.dead_letters),
        GateStatus("oldest message age", health.oldest_age_s, *gates.oldest_age_s, " s"),
        GateStatus(
            "Spot interruptions", float(health.spot_interruptions), *gates.spot_interruptions
        ),
    )


def describe(
    state: CutoverState,
    health: Health,
    gates: Gates,
    now_s: float,
    *,
    uploads: Sequence[tuple[str, str]] = (),
    routed: Mapping[str, int] | None = None,
    ecs_queue: str | None = None,
    expected_ecs_queue: str | None = None,
) -> CutoverStatus:
    """`uploads`: (user id, image id) seen since the stage began; each user's side is the one
    the router gives it at the current weight."""
    gate_findings(health, gates)  # the same arithmetic as the machine (raises on bad input)
    users = [u for u, _ in uploads]
    sides = users_by_side(users, state.weight)
    on_batch = set(sides[BATCH])
    images = {BATCH: sum(u in on_batch for u in users), ECS: sum(u not in on_batch for u in users)}
    moved = None
    if ecs_queue is not None or expected_ecs_queue is not None:
        moved = ecs_queue is not None and ecs_queue == expected_ecs_queue
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
        ecs_queue=ecs_queue,
        ecs_queue_moved=moved,
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
    if status.ecs_queue_moved is not None:
        check = "yes" if status.ecs_queue_moved else "NO: move it before the cutover starts"
        lines.append(f"ECS service reads its own queue: {check} ({status.ecs_queue or 'unset'})")
    return "\n".join(lines)


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
    ecs_queue = expected = None
    if ecs_cluster and ecs_service:
        ecs_queue = effects.ecs_queue_url(ecs_cluster, ecs_service, aws)
        expected = observe.stack_queue_url(
            names, aws, "EcsIndexingQueueUrl", names.ecs_indexing_queue
        )
    return describe(
        state,
        health,
        gates or Gates(),
        now,
        uploads=uploads,
        routed=routed,
        ecs_queue=ecs_queue,
        expected_ecs_queue=expected,
    )
