"""Upload traces: when images arrive and how many, read from a CSV or generated from a seed.

A trace is plain data (two arrays and a duration), so the simulator, the tests and the plot all see
the same arrivals. Rows with the same timestamp stay separate lots; a lot is the unit the
simulator's conservation checks count against.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

DAY_S = 86_400.0
HOUR_S = 3_600.0


@dataclass(frozen=True)
class Trace:
    """Arrivals as offsets in seconds from `start_epoch_s`, with an image count per row."""

    offsets_s: NDArray[np.float64]
    counts: NDArray[np.int64]
    duration_s: float
    start_epoch_s: float = 0.0
    label: str = ""

    def __post_init__(self) -> None:
        if self.offsets_s.shape != self.counts.shape:
            raise ValueError("trace offsets and counts differ in length")
        if len(self.offsets_s) and (np.any(np.diff(self.offsets_s) < 0) or self.offsets_s[0] < 0):
            raise ValueError("trace offsets must be non-negative and sorted")
        if np.any(self.counts < 0):
            raise ValueError("trace image counts must not be negative")
        if len(self.offsets_s) and self.duration_s < self.offsets_s[-1]:
            raise ValueError("trace duration ends before its last arrival")

    @property
    def images(self) -> int:
        return int(self.counts.sum())

    @classmethod
    def from_rows(
        cls, rows: list[tuple[float, int]], duration_s: float | None = None, label: str = ""
    ) -> Trace:
        """A trace from (offset seconds, image count) pairs; handy in tests."""
        ordered = sorted(rows)
        offsets = np.array([r[0] for r in ordered], dtype=np.float64)
        counts = np.array([r[1] for r in ordered], dtype=np.int64)
        end = float(offsets[-1]) if len(offsets) else 0.0
        return cls(offsets, counts, end if duration_s is None else duration_s, label=label)


def _parse_time(text: str) -> float:
    """Epoch seconds, or an ISO 8601 timestamp (naive ones read as UTC)."""
    text = text.strip()
    try:
        return float(text)
    except ValueError:
        pass
    stamp = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=UTC)
    return stamp.timestamp()


def load_csv(path: Path) -> Trace:
    """Read `timestamp,images` rows (header required; epoch seconds or ISO 8601).

    The trace starts at the first timestamp and lasts until the last one, rounded up to a whole
    hour, so the always-on setup is billed for the period the trace covers.
    """
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        fields = {name.strip().lower(): name for name in reader.fieldnames or []}
        time_key = fields.get("timestamp") or fields.get("time")
        count_key = fields.get("images") or fields.get("count")
        if time_key is None or count_key is None:
            raise ValueError(f"{path}: expected a header with 'timestamp' and 'images' columns")
        rows: list[tuple[float, int]] = []
        for line, row in enumerate(reader, start=2):
            try:
                rows.append((_parse_time(row[time_key]), int(row[count_key])))
            except (TypeError, ValueError) as error:
                raise ValueError(f"{path}:{line}: bad row {row!r}: {error}") from error
    if not rows:
        raise ValueError(f"{path}: no rows")
    rows.sort()
    start = rows[0][0]
    offsets = np.array([t - start for t, _ in rows], dtype=np.float64)
    counts = np.array([c for _, c in rows], dtype=np.int64)
    duration = max(HOUR_S, math.ceil(float(offsets[-1]) / HOUR_S) * HOUR_S)
    if duration == offsets[-1]:
        duration += HOUR_S
    return Trace(offsets, counts, duration, start_epoch_s=start, label=path.name)


def write_csv(trace: Trace, path: Path) -> None:
    """Write a trace as `timestamp,images` with epoch-second timestamps."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["timestamp", "images"])
        for offset, count in zip(trace.offsets_s, trace.counts, strict=True):
            writer.writerow([f"{trace.start_epoch_s + offset:.3f}", int(count)])


@dataclass(frozen=True)
class TraceShape:
    """A daily cycle of single uploads plus bursts of bulk uploads (a gallery at a time).

    Defaults describe a mid-sized tenant in one time zone: about 10,000 single uploads a day,
    peaking at 20:00 and none for about 6 hours around 08:00 (the cycle is 1 + amplitude * cos,
    cut at zero, scaled to the daily total), and on average 4 bulk uploads a day, at any hour, of
    500 to 20,000 images (log-uniform, mean about 5,300) spread over 2 to 15 minutes: about 31,000
    images a day in all.
    """

    daily_images: float = 10_000.0
    peak_hour: float = 20.0
    amplitude: float = 1.5  # 0: flat; above 1: a quiet spell with no single uploads at all
    bursts_per_day: float = 4.0
    burst_min_images: int = 500
    burst_max_images: int = 20_000
    burst_min_s: float = 120.0
    burst_max_s: float = 900.0
    bin_s: float = 60.0


def daily_cycle(hours: NDArray[np.float64], shape: TraceShape) -> NDArray[np.float64]:
    """Relative upload rate at each hour of day, with a daily mean of 1."""

    def raw(h: NDArray[np.float64]) -> NDArray[np.float64]:
        return np.maximum(
            0.0, 1.0 + shape.amplitude * np.cos(2 * math.pi * (h - shape.peak_hour) / 24)
        )

    mean = float(raw(np.linspace(0.0, 24.0, 1440, endpoint=False)).mean())
    return raw(hours) / mean


def generate(days: float, seed: int, shape: TraceShape = TraceShape()) -> Trace:
    """A seeded trace: Poisson single uploads per `bin_s` bin plus Poisson-timed bulk uploads."""
    if days <= 0:
        raise ValueError("days must be positive")
    rng = np.random.default_rng(seed)
    duration = days * DAY_S
    bins = math.ceil(duration / shape.bin_s)
    starts = np.arange(bins, dtype=np.float64) * shape.bin_s
    hours = (starts / HOUR_S) % 24.0
    rate = shape.daily_images / DAY_S * shape.bin_s * daily_cycle(hours, shape)
    per_bin = rng.poisson(rate)

    totals = per_bin.astype(np.int64)
    n_bursts = rng.poisson(shape.bursts_per_day * days)
    low, high = math.log(shape.burst_min_images), math.log(shape.burst_max_images)
    for _ in range(n_bursts):
        begin = rng.uniform(0.0, duration)
        size = round(math.exp(rng.uniform(low, high)))
        span = rng.uniform(shape.burst_min_s, shape.burst_max_s)
        first = int(begin // shape.bin_s)
        last = min(bins - 1, int((begin + span) // shape.bin_s))
        width = last - first + 1
        totals[first : last + 1] += rng.multinomial(size, np.full(width, 1.0 / width))

    keep = totals > 0
    return Trace(
        starts[keep], totals[keep], duration, label=f"generated: {days:g} days, seed {seed}"
    )
