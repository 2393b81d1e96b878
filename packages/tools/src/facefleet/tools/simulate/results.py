"""What a simulated run produced, and the weighted percentile its reports are read with."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from facefleet.tools.simulate.trace import Trace


@dataclass(frozen=True)
class RunResult:
    """What happened: completions per lot, instance lifetimes, and the backlog over time."""

    setup: str
    trace: Trace
    done_lot: NDArray[np.int64]  # trace row each completion belongs to
    done_count: NDArray[np.int64]  # images in that completion
    done_s: NDArray[np.float64]  # when the faces were stored
    instance_start_s: NDArray[np.float64]
    instance_end_s: NDArray[np.float64]
    end_s: float
    peak_backlog: int
    timeline_s: NDArray[np.float64] = field(default_factory=lambda: np.zeros(0))
    timeline_backlog: NDArray[np.int64] = field(default_factory=lambda: np.zeros(0, np.int64))
    timeline_instances: NDArray[np.int64] = field(default_factory=lambda: np.zeros(0, np.int64))
    jobs_submitted: int = 0
    submissions: int = 0
    interruptions: int = 0
    retries: int = 0
    failed_jobs: int = 0

    @property
    def images(self) -> int:
        return int(self.done_count.sum())

    @property
    def latencies_s(self) -> NDArray[np.float64]:
        """Upload to faces stored, one entry per completion (weight with `done_count`)."""
        return np.asarray(self.done_s - self.trace.offsets_s[self.done_lot], dtype=np.float64)

    @property
    def instance_seconds(self) -> float:
        return float(np.sum(self.instance_end_s - self.instance_start_s))


def weighted_percentile(values: NDArray[np.float64], weights: NDArray[np.int64], q: float) -> float:
    """The smallest value with at least `q` percent of the weight at or below it."""
    if len(values) == 0 or weights.sum() == 0:
        return math.nan
    order = np.argsort(values, kind="stable")
    cum = np.cumsum(weights[order])
    index = int(np.searchsorted(cum, q / 100.0 * cum[-1], side="left"))
    return float(values[order][min(index, len(order) - 1)])
