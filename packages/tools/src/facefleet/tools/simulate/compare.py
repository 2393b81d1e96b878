"""The comparison on one trace: the current ECS service (N on-demand g4dn.xlarge, 24/7) against
Batch Spot under the dispatch policy, as cost per 1,000 images, instance-hours, time from upload to
faces stored (p50/p95/p99), peak backlog and the share of time at zero instances; and the whole
bill per 1,000 images, every line `facefleet.control.pricing.bill` knows, beside the instances."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from facefleet.common.names import NAMES, Names
from facefleet.control.policy import PolicyParams
from facefleet.control.pricing import (
    BATCH,
    DEFAULT_BILL,
    DEFAULT_PRICES,
    ECS,
    HOUR_S,
    MINIMUM_BILLED_S,
    BillParams,
    PriceTable,
    bill,
    per_1000,
)
from facefleet.tools.simulate.model import simulate_batch, simulate_ecs
from facefleet.tools.simulate.params import DEFAULT_MODEL, DEFAULT_POLICY, ModelParams
from facefleet.tools.simulate.results import RunResult, weighted_percentile
from facefleet.tools.simulate.trace import Trace

DEFAULT_ECS_TASKS = 2


@dataclass(frozen=True)
class Metrics:
    setup: str
    images: int
    cost: float
    instance_hours: float
    p50_s: float
    p95_s: float
    p99_s: float
    max_s: float
    peak_backlog: int
    zero_share: float
    horizon_s: float
    jobs: int = 0
    interruptions: int = 0
    retries: int = 0

    @property
    def cost_per_1000(self) -> float:
        return self.cost / self.images * 1000.0 if self.images else math.nan

    def latency(self, percentile: float) -> float:
        return {50.0: self.p50_s, 95.0: self.p95_s, 99.0: self.p99_s}[percentile]


def zero_share(result: RunResult, horizon_s: float) -> float:
    """Share of [0, horizon] with no instance alive."""
    if horizon_s <= 0:
        return 1.0
    starts, ends = result.instance_start_s, np.minimum(result.instance_end_s, horizon_s)
    if len(starts) == 0:
        return 1.0
    times = np.concatenate((starts, ends))
    steps = np.concatenate((np.ones(len(starts)), -np.ones(len(ends))))
    order = np.lexsort((-steps, times))  # at a tie count the start first: no zero-length gap
    times, alive = times[order], np.cumsum(steps[order])
    edges = np.concatenate(([0.0], times, [horizon_s]))
    counts = np.concatenate(([0.0], alive))
    gaps = np.diff(edges)
    return float(np.sum(gaps[counts == 0]) / horizon_s)


def batch_instance_costs(result: RunResult, prices: PriceTable) -> np.ndarray:
    """Dollars per instance: the Spot series over its life, at least the one-minute minimum."""
    ends = np.maximum(result.instance_end_s, result.instance_start_s + MINIMUM_BILLED_S)
    return np.asarray(
        prices.spot.integral(ends) - prices.spot.integral(result.instance_start_s), dtype=float
    )


def metrics(result: RunResult, cost: float, horizon_s: float) -> Metrics:
    latencies, weights = result.latencies_s, result.done_count
    return Metrics(
        setup=result.setup,
        images=result.images,
        cost=cost,
        instance_hours=result.instance_seconds / HOUR_S,
        p50_s=weighted_percentile(latencies, weights, 50),
        p95_s=weighted_percentile(latencies, weights, 95),
        p99_s=weighted_percentile(latencies, weights, 99),
        max_s=float(latencies.max()) if len(latencies) else math.nan,
        peak_backlog=result.peak_backlog,
        zero_share=zero_share(result, horizon_s),
        horizon_s=horizon_s,
        jobs=result.jobs_submitted,
        interruptions=result.interruptions,
        retries=result.retries,
    )


def batch_metrics(result: RunResult, prices: PriceTable) -> Metrics:
    horizon = max(result.trace.duration_s, result.end_s)
    return metrics(result, float(batch_instance_costs(result, prices).sum()), horizon)


def ecs_metrics(result: RunResult, prices: PriceTable) -> Metrics:
    # Every ECS instance lives the whole horizon (trace plus any drain after it).
    return metrics(result, result.instance_seconds / HOUR_S * prices.on_demand_per_h, result.end_s)


@dataclass(frozen=True)
class Comparison:
    ecs: Metrics
    batch: Metrics
    ecs_run: RunResult
    batch_run: RunResult
    prices: PriceTable

    bill_params: BillParams = DEFAULT_BILL

    @property
    def savings(self) -> float:
        """Fractional saving of Batch Spot over ECS, per image processed (instances only)."""
        return 1.0 - self.batch.cost_per_1000 / self.ecs.cost_per_1000

    def bill_per_1000(self, setup: str) -> dict[str, float]:
        """Every line of the setup's bill per 1,000 images over its horizon."""
        metrics = self.batch if setup == BATCH else self.ecs
        lines = bill(
            setup,
            metrics.images,
            metrics.horizon_s / HOUR_S,
            metrics.cost,
            metrics.instance_hours,
            self.bill_params,
        )
        return per_1000(lines, metrics.images)

    @property
    def bill_savings(self) -> float:
        """Fractional saving of Batch Spot over ECS on the whole bill, per image."""
        batch = sum(self.bill_per_1000(BATCH).values())
        return 1.0 - batch / sum(self.bill_per_1000(ECS).values())


def compare(
    trace: Trace,
    ecs_tasks: int = DEFAULT_ECS_TASKS,
    model: ModelParams = DEFAULT_MODEL,
    policy: PolicyParams = DEFAULT_POLICY,
    prices: PriceTable = DEFAULT_PRICES,
    names: Names = NAMES,
    bill_params: BillParams = DEFAULT_BILL,
) -> Comparison:
    ecs_run = simulate_ecs(trace, ecs_tasks, model)
    batch_run = simulate_batch(trace, model, policy, names)
    return Comparison(
        ecs_metrics(ecs_run, prices),
        batch_metrics(batch_run, prices),
        ecs_run,
        batch_run,
        prices,
        bill_params,
    )


def duration(seconds: float) -> str:
    if math.isnan(seconds):
        return "-"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def format_comparison(comparison: Comparison) -> str:
    ecs, batch = comparison.ecs, comparison.batch
    rows = [
        ("images processed", f"{ecs.images:,}", f"{batch.images:,}"),
        ("cost", f"${ecs.cost:,.2f}", f"${batch.cost:,.2f}"),
        ("cost per 1,000 images", f"${ecs.cost_per_1000:.4f}", f"${batch.cost_per_1000:.4f}"),
        ("instance-hours", f"{ecs.instance_hours:,.1f}", f"{batch.instance_hours:,.1f}"),
        ("p50 upload -> faces stored", duration(ecs.p50_s), duration(batch.p50_s)),
        ("p95 upload -> faces stored", duration(ecs.p95_s), duration(batch.p95_s)),
        ("p99 upload -> faces stored", duration(ecs.p99_s), duration(batch.p99_s)),
        ("max upload -> faces stored", duration(ecs.max_s), duration(batch.max_s)),
        ("peak backlog (images)", f"{ecs.peak_backlog:,}", f"{batch.peak_backlog:,}"),
        ("time at zero instances", f"{ecs.zero_share:.1%}", f"{batch.zero_share:.1%}"),
        (
            "jobs / interruptions / retries",
            "-",
            f"{batch.jobs} / {batch.interruptions} / {batch.retries}",
        ),
    ]
    ecs_bill, batch_bill = comparison.bill_per_1000(ECS), comparison.bill_per_1000(BATCH)
    rows.append(
        (
            "whole bill per 1,000 images",
            f"${sum(ecs_bill.values()):.4f}",
            f"${sum(batch_bill.values()):.4f}",
        )
    )
    rows += [(f"  {k}", f"${ecs_bill[k]:.4f}", f"${batch_bill[k]:.4f}") for k in ecs_bill]
    width = max(len(r[0]) for r in rows)
    head = f"{'':{width}}  {ecs.setup:>20}  {batch.setup:>20}"
    lines = [head] + [f"{a:{width}}  {b:>20}  {c:>20}" for a, b, c in rows]
    lines.append(
        f"Batch Spot saves {comparison.savings:.1%} per image "
        f"(on demand ${comparison.prices.on_demand_per_h:.3f}/h, Spot mean "
        f"${comparison.prices.spot.mean_per_h(0.0, batch.horizon_s):.4f}/h); "
        f"{comparison.bill_savings:.1%} on the whole bill"
    )
    return "\n".join(lines)
