"""Sweep the dispatch policy's thresholds on one trace; print the cost/latency frontier and the
cheapest setting that meets a latency target.

Every run uses the same trace, seed and model, so the settings differ only in what the policy
decides (common random numbers: Spot interruptions and cold starts are drawn from the same seed).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from facefleet.common.names import NAMES, Names
from facefleet.control.policy import PolicyParams
from facefleet.control.pricing import DEFAULT_PRICES, PriceTable
from facefleet.tools.simulate.compare import Metrics, batch_metrics, duration
from facefleet.tools.simulate.model import simulate_batch
from facefleet.tools.simulate.params import DEFAULT_MODEL, DEFAULT_POLICY, ModelParams
from facefleet.tools.simulate.trace import Trace

# The thresholds swept, as PolicyParams field -> values. job_minutes sets the job capacity
# (images_per_job_minute * job_minutes messages credited to each active job).
DEFAULT_GRID: dict[str, tuple[float, ...]] = {
    "job_minutes": (2.5, 5.0, 10.0, 20.0),
    "array_divisor": (250, 1000),
    "max_array_size": (5, 10, 20),
    "cooldown_s": (60.0, 300.0),
}
DEFAULT_LATENCY_TARGET_S = 600.0
DEFAULT_PERCENTILE = 95.0
_INTEGER_FIELDS = {"array_divisor", "max_array_size", "small_backlog"}


@dataclass(frozen=True)
class SweepPoint:
    policy: PolicyParams
    metrics: Metrics
    changed: tuple[tuple[str, float], ...]

    def latency(self, percentile: float) -> float:
        return self.metrics.latency(percentile)

    def label(self) -> str:
        return " ".join(f"{k}={_number(v)}" for k, v in self.changed)


def _number(value: float) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def settings(
    base: PolicyParams, grid: Mapping[str, Sequence[float]]
) -> Iterable[tuple[PolicyParams, tuple[tuple[str, float], ...]]]:
    keys = list(grid)
    for key in keys:
        if not hasattr(base, key) or key == "job_capacity":
            raise ValueError(f"{key!r} is not a PolicyParams field")
    for values in itertools.product(*(grid[k] for k in keys)):
        typed = tuple(
            (k, int(v) if k in _INTEGER_FIELDS else float(v))
            for k, v in zip(keys, values, strict=True)
        )
        changes: dict[str, Any] = dict(typed)
        yield replace(base, **changes), typed


def sweep(
    trace: Trace,
    model: ModelParams = DEFAULT_MODEL,
    base: PolicyParams = DEFAULT_POLICY,
    grid: Mapping[str, Sequence[float]] | None = None,
    prices: PriceTable = DEFAULT_PRICES,
    names: Names = NAMES,
    progress: Callable[[int, int], None] | None = None,
) -> list[SweepPoint]:
    chosen: Mapping[str, Sequence[float]] = DEFAULT_GRID if grid is None else grid
    model = replace(model, record_timeline=False)
    candidates = list(settings(base, chosen))
    points: list[SweepPoint] = []
    for index, (policy, changed) in enumerate(candidates):
        run = simulate_batch(trace, model, policy, names)
        points.append(SweepPoint(policy, batch_metrics(run, prices), changed))
        if progress is not None:
            progress(index + 1, len(candidates))
    return points


def frontier(
    points: Sequence[SweepPoint], percentile: float = DEFAULT_PERCENTILE
) -> list[SweepPoint]:
    """The settings no other setting beats on both cost per image and latency, cheapest first."""
    ordered = sorted(points, key=lambda p: (p.metrics.cost_per_1000, p.latency(percentile)))
    best: list[SweepPoint] = []
    fastest = math.inf
    for point in ordered:
        if point.latency(percentile) < fastest:
            best.append(point)
            fastest = point.latency(percentile)
    return best


def recommend(
    points: Sequence[SweepPoint],
    target_s: float = DEFAULT_LATENCY_TARGET_S,
    percentile: float = DEFAULT_PERCENTILE,
) -> SweepPoint | None:
    """The cheapest setting whose latency percentile meets the target (None when none does)."""
    meeting = [p for p in points if p.latency(percentile) <= target_s]
    if not meeting:
        return None
    return min(meeting, key=lambda p: (p.metrics.cost_per_1000, p.latency(percentile)))


def format_sweep(
    points: Sequence[SweepPoint],
    target_s: float = DEFAULT_LATENCY_TARGET_S,
    percentile: float = DEFAULT_PERCENTILE,
    current: Metrics | None = None,
) -> str:
    p = f"p{percentile:g}"
    lines = [f"cost/latency frontier over {len(points)} settings ({p}, cheapest first):"]
    lines.append(f"  {'$/1000':>8}  {p:>9}  {'p99':>9}  {'inst-h':>7}  {'zero':>6}  setting")
    for point in frontier(points, percentile):
        m = point.metrics
        # Settings the trace cannot tell apart (a threshold that never binds) give equal runs.
        same = sum(
            1
            for q in points
            if q.metrics.cost == m.cost and q.latency(percentile) == point.latency(percentile)
        )
        also = f" (+{same - 1} equal)" if same > 1 else ""
        lines.append(
            f"  {m.cost_per_1000:8.4f}  {duration(point.latency(percentile)):>9}  "
            f"{duration(m.p99_s):>9}  {m.instance_hours:7.1f}  {m.zero_share:6.1%}  "
            f"{point.label()}{also}"
        )
    if current is not None:
        lines.append(
            f"  current policy: ${current.cost_per_1000:.4f}/1000, {p} "
            f"{duration(current.latency(percentile))}"
        )
    best = recommend(points, target_s, percentile)
    if best is None:
        fastest = min(points, key=lambda q: q.latency(percentile))
        lines.append(
            f"no setting meets {p} <= {duration(target_s)}; the fastest reaches "
            f"{duration(fastest.latency(percentile))} with {fastest.label()}"
        )
    else:
        m = best.metrics
        capacity = best.policy.job_capacity
        lines.append(
            f"recommended for {p} <= {duration(target_s)}: {best.label()} (job capacity "
            f"{capacity} messages): ${m.cost_per_1000:.4f} per 1,000 images, {p} "
            f"{duration(best.latency(percentile))}, p99 {duration(m.p99_s)}"
        )
    return "\n".join(lines)
