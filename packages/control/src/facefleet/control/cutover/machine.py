"""Gradual cutover from the ECS service to Batch: the pure state machine and its gates.

Stages (percent of indexing traffic the router sends to Batch): 0 -> 10 -> 25 -> 50 -> 75 -> 100.
Each scheduled run of the `cutover` flow reads health from CloudWatch (and the dead-letter queue)
for the current stage and calls `evaluate`:

- rollback (to 0 %, status rolled_back, SNS alert, waiting Batch messages returned to the ECS
  queue) as soon as any gate is breached, soak or not: Batch job failure rate, p95 processing
  time per image against the ECS baseline, new dead letters, age of the oldest message, Spot
  interruptions;
- hold while the stage's soak time has not elapsed, while a gate is in its warning band, or when
  there is no evidence yet (no Batch job ran in the stage);
- promote to the next stage after the soak with every gate green;
- complete once 100 % has held for the final soak: only then may ECS be scaled down (the flow
  scales the named ECS service to 0 if given one; it never does so earlier).

A rolled-back or paused cutover stays where it is until `resume`; a resumed rollback starts again
at 10 %. Manual flows: `cutover-rollback`, `cutover-pause`, `cutover-resume`
(`facefleet.flows.cutover`); health reads are `health`, side effects `effects`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

STAGES: tuple[int, ...] = (0, 10, 25, 50, 75, 100)
RUNNING, PAUSED, ROLLED_BACK, COMPLETE = "running", "paused", "rolled_back", "complete"
Action = Literal["start", "promote", "hold", "rollback", "complete"]
HOUR = 3600.0


@dataclass(frozen=True)
class CutoverState:
    weight: int = 0
    status: str = RUNNING
    entered_at_s: float = 0.0
    dead_letters_at_entry: int = 0
    reason: str = ""

    @property
    def stage(self) -> int:
        return STAGES.index(self.weight)


@dataclass(frozen=True)
class Health:
    """What the gates look at, for the current stage's window; None: no data."""

    finished_jobs: int = 0
    failed_jobs: int = 0
    p95_ms: float | None = None
    baseline_p95_ms: float | None = None
    dead_letters: int = 0  # new since the stage began
    oldest_age_s: float | None = None
    spot_interruptions: int = 0

    @property
    def failure_rate(self) -> float | None:
        return self.failed_jobs / self.finished_jobs if self.finished_jobs else None


@dataclass(frozen=True)
class Gates:
    soak_s: Mapping[int, float] = field(
        default_factory=lambda: {10: HOUR, 25: HOUR, 50: 2 * HOUR, 75: 2 * HOUR, 100: 24 * HOUR}
    )
    # (hold above, roll back above)
    failure_rate: tuple[float, float] = (0.02, 0.05)
    p95_ratio: tuple[float, float] = (1.2, 1.5)
    dead_letters: tuple[int, int] = (0, 0)
    oldest_age_s: tuple[float, float] = (600.0, 1800.0)
    spot_interruptions: tuple[int, int] = (5, 20)

    def soak(self, weight: int) -> float:
        return float(self.soak_s.get(weight, HOUR))


@dataclass(frozen=True)
class CutoverDecision:
    action: Action
    state: CutoverState
    reasons: tuple[str, ...]
    alert: bool = False
    release_ecs: bool = False


def _next(weight: int) -> int:
    return STAGES[min(STAGES.index(weight) + 1, len(STAGES) - 1)]


@dataclass(frozen=True)
class GateStatus:
    """One gate: the measured value against its hold and rollback limits."""

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

    def finding(self, limit: float) -> str:
        return f"{self.name} {self.value:g}{self.unit} above {limit:g}{self.unit}"


def gates_of(health: Health, gates: Gates) -> tuple[GateStatus, ...]:
    """Every gate with its reading: the machine's decisions and the status report both read it."""
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


def gate_findings(health: Health, gates: Gates) -> tuple[list[str], list[str]]:
    """(hold reasons, rollback reasons) for the measured health."""
    hold: list[str] = []
    rollback: list[str] = []
    for gate in gates_of(health, gates):
        if gate.verdict == "ROLLBACK":
            rollback.append(
                f"{gate.name} {gate.value:g}{gate.unit} above {gate.rollback_above:g}{gate.unit}"
            )
        elif gate.verdict == "hold":
            hold.append(
                f"{gate.name} {gate.value:g}{gate.unit} above {gate.hold_above:g}{gate.unit}"
            )
    return hold, rollback


def evaluate(
    state: CutoverState, health: Health, now_s: float, gates: Gates = Gates()
) -> CutoverDecision:
    """The pure cutover step: what to do at `now_s` given the current stage's health."""
    if state.status == PAUSED:
        return CutoverDecision("hold", state, (f"paused at {state.weight} %: {state.reason}",))
    if state.status == ROLLED_BACK:
        return CutoverDecision("hold", state, (f"rolled back: {state.reason}; resume to restart",))
    if state.status == COMPLETE:
        return CutoverDecision("hold", state, ("cutover complete",), release_ecs=True)
    if state.weight == 0:
        started = replace(state, weight=_next(0), entered_at_s=now_s, reason="started")
        return CutoverDecision("start", started, ("starting the cutover at 10 %",))
    hold, rollback = gate_findings(health, gates)
    if rollback:
        rolled = CutoverState(0, ROLLED_BACK, now_s, 0, "; ".join(rollback))
        return CutoverDecision("rollback", rolled, tuple(rollback), alert=True)
    soaked = now_s - state.entered_at_s
    soak = gates.soak(state.weight)
    if soaked < soak:
        return CutoverDecision(
            "hold", state, (f"soaking {state.weight} %: {soaked:.0f} of {soak:.0f} s", *hold)
        )
    if hold:
        return CutoverDecision("hold", state, tuple(hold))
    if health.failure_rate is None:
        return CutoverDecision("hold", state, ("no Batch job finished in this stage yet",))
    if state.weight == 100:
        done = replace(state, status=COMPLETE, reason="100 % held for the final soak")
        return CutoverDecision(
            "complete",
            done,
            ("100 % held for the final soak: ECS may be scaled down",),
            release_ecs=True,
        )
    promoted = replace(state, weight=_next(state.weight), entered_at_s=now_s, reason="promoted")
    return CutoverDecision("promote", promoted, (f"{state.weight} % healthy for {soaked:.0f} s",))


def pause(state: CutoverState, reason: str = "paused by operator") -> CutoverState:
    return replace(state, status=PAUSED, reason=reason)


def resume(state: CutoverState, now_s: float) -> CutoverState:
    """Continue a paused stage (its soak starts over); a rolled-back cutover restarts from 0."""
    if state.status == ROLLED_BACK:
        return CutoverState(0, RUNNING, now_s, 0, "resumed after rollback")
    return replace(state, status=RUNNING, entered_at_s=now_s, reason="resumed")


def rollback(reason: str, now_s: float) -> CutoverState:
    return CutoverState(0, ROLLED_BACK, now_s, 0, reason)


def gates_from(values: Mapping[str, Any] | None) -> Gates:
    values = dict(values or {})
    if "soak_s" in values:
        values["soak_s"] = {int(k): float(v) for k, v in values["soak_s"].items()}
    for key in ("failure_rate", "p95_ratio", "dead_letters", "oldest_age_s", "spot_interruptions"):
        if key in values:
            values[key] = tuple(values[key])
    return Gates(**values)
