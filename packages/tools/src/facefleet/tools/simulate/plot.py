"""A PNG of the backlog, the instances and the cumulative cost over the trace, both setups."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
from numpy.typing import NDArray

from facefleet.control.pricing import HOUR_S
from facefleet.tools.simulate.compare import Comparison, batch_instance_costs
from facefleet.tools.simulate.results import RunResult

_GRID_POINTS = 4000


def _cumulative_cost(
    run: RunResult, grid: NDArray[np.float64], per_instance: NDArray[np.float64]
) -> NDArray[np.float64]:
    """Dollars spent by each moment of `grid`, spreading each instance's cost over its life."""
    total = np.zeros_like(grid)
    starts, ends = run.instance_start_s, run.instance_end_s
    for start, end, cost in zip(starts, ends, per_instance, strict=True):
        life = max(end - start, 1e-9)
        total += cost * np.clip((grid - start) / life, 0.0, 1.0)
    return total


def _steps(run: RunResult, grid: NDArray[np.float64], values: NDArray[np.int64]) -> NDArray:
    index = np.searchsorted(run.timeline_s, grid, side="right") - 1
    return np.where(index >= 0, values[np.clip(index, 0, None)], 0)


def _cell_peaks(run: RunResult, grid: NDArray[np.float64]) -> NDArray[np.int64]:
    """The highest backlog within each grid cell, so a short burst still shows."""
    values = run.timeline_backlog
    at_start = _steps(run, grid[:-1], values)
    if len(values) == 0:
        return np.asarray(at_start, dtype=np.int64)
    first = np.searchsorted(run.timeline_s, grid[:-1], side="left")
    after = np.searchsorted(run.timeline_s, grid[1:], side="left")
    inside = np.maximum.reduceat(values, np.clip(first, 0, len(values) - 1))
    inside = np.where(after > first, inside, 0)
    return np.asarray(np.maximum(at_start, inside), dtype=np.int64)


def plot(comparison: Comparison, path: Path) -> Path:
    ecs, batch = comparison.ecs_run, comparison.batch_run
    end = max(comparison.batch.horizon_s, comparison.ecs.horizon_s)
    grid = np.linspace(0.0, end, _GRID_POINTS)
    days = grid / (24 * HOUR_S)
    ecs_costs = (
        (ecs.instance_end_s - ecs.instance_start_s) / HOUR_S * comparison.prices.on_demand_per_h
    )
    fig, axes = plt.subplots(3, 1, figsize=(12, 8), sharex=True)
    backlog, instances, cost = axes
    for run, colour in ((ecs, "tab:grey"), (batch, "tab:blue")):
        backlog.step(
            days[:-1], _cell_peaks(run, grid), where="post", color=colour, label=run.setup, lw=0.8
        )
    backlog.set_ylabel("backlog (images)")
    backlog.legend(loc="upper left")
    instances.step(
        days,
        _steps(batch, grid, batch.timeline_instances),
        where="post",
        color="tab:blue",
        lw=0.8,
        label=batch.setup,
    )
    instances.step(
        days,
        _steps(ecs, grid, ecs.timeline_instances),
        where="post",
        color="tab:grey",
        lw=0.8,
        label=ecs.setup,
    )
    instances.set_ylabel("instances")
    instances.legend(loc="upper left")
    cost.plot(days, _cumulative_cost(ecs, grid, ecs_costs), color="tab:grey", label=ecs.setup)
    cost.plot(
        days,
        _cumulative_cost(batch, grid, batch_instance_costs(batch, comparison.prices)),
        color="tab:blue",
        label=batch.setup,
    )
    cost.set_ylabel("cumulative cost ($)")
    cost.set_xlabel("days")
    cost.legend(loc="upper left")
    fig.suptitle(
        f"{batch.trace.label}: \\${comparison.batch.cost_per_1000:.3f} vs "
        f"\\${comparison.ecs.cost_per_1000:.3f} per 1,000 images ({comparison.savings:.0%} saved)"
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
