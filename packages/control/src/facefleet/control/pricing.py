"""Prices: a configured table (on-demand $/h, a Spot price series), or Spot history from EC2.

The table's figures are assumptions stated in one place; `spot_history` replaces the Spot series
with the real one through the EC2 API (`describe_spot_price_history`) for a region.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
from numpy.typing import NDArray

log = logging.getLogger(__name__)

HOUR_S = 3_600.0

# us-east-1 Linux on-demand list price of a g4dn.xlarge (4 vCPU, 1 T4), $/hour.
ON_DEMAND_PER_H: dict[str, float] = {"g4dn.xlarge": 0.526}
# Assumed Spot price, $/hour: 60 % below on-demand, within the range g4dn.xlarge Spot has traded
# at in us-east-1. An assumption; read the real series with `spot_history`.
SPOT_PER_H: dict[str, float] = {"g4dn.xlarge": 0.2104}
# EC2 bills Linux instances per second with a one-minute minimum.
MINIMUM_BILLED_S = 60.0


@dataclass(frozen=True)
class SpotSeries:
    """A step function of $/hour: `prices[i]` holds from `times_s[i]` (offset from trace start)."""

    times_s: tuple[float, ...] = (0.0,)
    prices: tuple[float, ...] = (SPOT_PER_H["g4dn.xlarge"],)

    def __post_init__(self) -> None:
        if not self.times_s or len(self.times_s) != len(self.prices):
            raise ValueError("a Spot series needs as many prices as times, at least one")
        if list(self.times_s) != sorted(self.times_s):
            raise ValueError("Spot series times must be sorted")
        if any(p < 0 for p in self.prices):
            raise ValueError("Spot prices must not be negative")

    @classmethod
    def constant(cls, per_h: float) -> SpotSeries:
        return cls((0.0,), (per_h,))

    def _cumulative(self) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
        times = np.array(self.times_s, dtype=np.float64)
        # Before the first change the first price holds.
        times[0] = min(times[0], 0.0)
        prices = np.array(self.prices, dtype=np.float64) / HOUR_S
        cum = np.concatenate(([0.0], np.cumsum(np.diff(times) * prices[:-1])))
        return times, prices, cum

    def integral(self, t: NDArray[np.float64] | float) -> NDArray[np.float64]:
        """Dollars one instance costs from the series start to offset `t` (vectorised)."""
        times, prices, cum = self._cumulative()
        tt = np.asarray(t, dtype=np.float64)
        i = np.clip(np.searchsorted(times, tt, side="right") - 1, 0, len(times) - 1)
        return np.asarray(cum[i] + (tt - times[i]) * prices[i], dtype=np.float64)

    def cost(self, start_s: float, end_s: float) -> float:
        """Dollars for one instance running from `start_s` to `end_s`."""
        return float(self.integral(end_s) - self.integral(start_s))

    def mean_per_h(self, start_s: float, end_s: float) -> float:
        if end_s <= start_s:
            return self.prices[0]
        return self.cost(start_s, end_s) / (end_s - start_s) * HOUR_S


@dataclass(frozen=True)
class PriceTable:
    instance_type: str = "g4dn.xlarge"
    on_demand_per_h: float = ON_DEMAND_PER_H["g4dn.xlarge"]
    spot: SpotSeries = field(default_factory=SpotSeries)

    @classmethod
    def for_instance(cls, instance_type: str, spot_per_h: float | None = None) -> PriceTable:
        if instance_type not in ON_DEMAND_PER_H:
            raise ValueError(
                f"no on-demand price configured for {instance_type!r}; "
                f"known: {', '.join(ON_DEMAND_PER_H)}"
            )
        spot = SPOT_PER_H[instance_type] if spot_per_h is None else spot_per_h
        return cls(instance_type, ON_DEMAND_PER_H[instance_type], SpotSeries.constant(spot))


def spot_history(
    ec2: Any,
    instance_type: str,
    start: datetime,
    end: datetime,
    product: str = "Linux/UNIX",
) -> SpotSeries:
    """The Spot price series for `instance_type` between `start` and `end`, offsets from `start`.

    Prices differ per availability zone and the capacity-optimized allocation may use any of them,
    so each step is the mean over the zones' latest prices at that moment.

    >>> from facefleet.common.aws import client
    >>> series = spot_history(client("ec2", "us-east-1"), "g4dn.xlarge",
    ...                       datetime(2024, 5, 1, tzinfo=UTC), datetime(2024, 5, 8, tzinfo=UTC))
    """
    log.info("reading %s Spot price history for %s, %s to %s", product, instance_type, start, end)
    paginator = ec2.get_paginator("describe_spot_price_history")
    points: list[tuple[float, str, float]] = []
    for page in paginator.paginate(
        InstanceTypes=[instance_type],
        ProductDescriptions=[product],
        StartTime=start,
        EndTime=end,
    ):
        for item in page.get("SpotPriceHistory", []):
            stamp = item["Timestamp"]
            if stamp.tzinfo is None:
                stamp = stamp.replace(tzinfo=UTC)
            offset = (stamp - start).total_seconds()
            points.append((offset, str(item.get("AvailabilityZone", "")), float(item["SpotPrice"])))
    if not points:
        raise ValueError(f"no {product} Spot price history for {instance_type} in that period")
    points.sort()
    latest: dict[str, float] = {}
    times: list[float] = []
    prices: list[float] = []
    for offset, zone, price in points:
        latest[zone] = price
        mean = sum(latest.values()) / len(latest)
        step = max(0.0, offset)
        if times and times[-1] == step:
            prices[-1] = mean
        else:
            times.append(step)
            prices.append(mean)
    return SpotSeries(tuple(times), tuple(prices))


DEFAULT_PRICES = PriceTable()
