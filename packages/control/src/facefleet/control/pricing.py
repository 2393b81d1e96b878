"""Prices, in one place: the configured tables, the Spot price history and on-demand prices.

- `ON_DEMAND_PER_H` / `SPOT_PER_H`: the configured tables (us-east-1 list prices; the Spot figure
  an assumption), used by the simulator and as the savings job's fallback;
- `read_spot_prices`: the one Spot-price-history reader (EC2 `describe_spot_price_history`), as
  records per instance type and zone; `spot_history` turns them into the simulator's series;
- `on_demand_prices`: on-demand $/h from the Pricing API, or the configured table.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
from numpy.typing import NDArray

from facefleet.common.aws import AwsTarget
from facefleet.common.instances import INSTANCES, SECONDARY_INSTANCE_TYPES

log = logging.getLogger(__name__)

HOUR_S = 3_600.0

# us-east-1 Linux on-demand list prices, $/hour (g4dn.xlarge: 4 vCPU, 1 T4). The savings job
# prefers the Pricing API's figure and falls back to these.
ON_DEMAND_PER_H: Mapping[str, float] = {
    **{facts.instance_type: facts.on_demand_per_h for facts in INSTANCES.values()},
    "g4dn.4xlarge": 1.204,
    "g4dn.8xlarge": 2.176,
    "g4dn.12xlarge": 3.912,
    "g5.2xlarge": 1.212,
}
# Assumed Spot discount: 60 % below on-demand, within the range g4dn.xlarge Spot has traded at in
# us-east-1. An assumption; read the real series with `spot_history`.
ASSUMED_SPOT_DISCOUNT = 0.6
# Assumed Spot price, $/hour, for every type the compute environments may launch (the instance
# facts table's list, so a type added there is priced here).
SPOT_PER_H: dict[str, float] = {
    instance_type: round(ON_DEMAND_PER_H[instance_type] * (1 - ASSUMED_SPOT_DISCOUNT), 4)
    for instance_type in SECONDARY_INSTANCE_TYPES
}
# EC2 bills Linux instances per second with a one-minute minimum.
MINIMUM_BILLED_S = 60.0
# The Pricing API is served from us-east-1 (and a few others), whatever the stack's region.
PRICING_REGION = "us-east-1"
LINUX = "Linux/UNIX"


class PricingError(ValueError):
    """Pricing input is missing or malformed; the message names the instance type or record."""


@dataclass(frozen=True)
class SpotPrice:
    """A Spot price that holds from `timestamp` until the next record of its type and zone."""

    instance_type: str
    availability_zone: str
    timestamp: datetime
    usd_per_hour: float

    def __post_init__(self) -> None:
        if self.usd_per_hour < 0:
            raise PricingError(f"negative Spot price for {self.instance_type}: {self}")


def read_spot_prices(
    ec2: Any,
    instance_types: Sequence[str],
    start: datetime,
    end: datetime,
    product: str = LINUX,
) -> list[SpotPrice]:
    """Every Spot price record for `instance_types` between `start` and `end` (all zones)."""
    log.info("reading %s Spot price history for %s, %s to %s", product, instance_types, start, end)
    pages = ec2.get_paginator("describe_spot_price_history").paginate(
        InstanceTypes=list(instance_types),
        ProductDescriptions=[product],
        StartTime=start,
        EndTime=end,
    )
    records = []
    for page in pages:
        for item in page.get("SpotPriceHistory", []):
            stamp = item["Timestamp"]
            if stamp.tzinfo is None:
                stamp = stamp.replace(tzinfo=UTC)
            records.append(
                SpotPrice(
                    item["InstanceType"] if "InstanceType" in item else instance_types[0],
                    str(item.get("AvailabilityZone", "")),
                    stamp,
                    float(item["SpotPrice"]),
                )
            )
    return records


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
        if instance_type not in ON_DEMAND_PER_H or (
            spot_per_h is None and instance_type not in SPOT_PER_H
        ):
            raise PricingError(
                f"no on-demand and Spot price configured for {instance_type!r}; "
                f"known: {', '.join(t for t in ON_DEMAND_PER_H if t in SPOT_PER_H)}"
            )
        spot = SPOT_PER_H[instance_type] if spot_per_h is None else spot_per_h
        return cls(instance_type, ON_DEMAND_PER_H[instance_type], SpotSeries.constant(spot))


def diversified_spot_per_h(instance_types: Sequence[str]) -> float:
    """Assumed Spot $/hour of one job across a diversified environment. One GPU per job, so a
    job costs its instance's price; price-capacity-optimized may pick any pool, so the figure is
    the pools' mean (an upper bound on what the allocation strategy pays)."""
    unknown = [t for t in instance_types if t not in SPOT_PER_H]
    if unknown or not instance_types:
        raise PricingError(f"no Spot price configured for {unknown or 'an empty list'}")
    return round(sum(SPOT_PER_H[t] for t in instance_types) / len(instance_types), 4)


def spot_history(
    ec2: Any,
    instance_type: str | Sequence[str],
    start: datetime,
    end: datetime,
    product: str = LINUX,
) -> SpotSeries:
    """The Spot price series for `instance_type` (one type, or a diversified environment's list)
    between `start` and `end`, offsets from `start`.

    Prices differ per type and availability zone and the allocation may use any pool, so each
    step is the mean over the pools' latest prices at that moment.

    >>> from facefleet.common.aws import AwsTarget
    >>> series = spot_history(AwsTarget("us-east-1").client("ec2"), "g4dn.xlarge",
    ...                       datetime(2024, 5, 1, tzinfo=UTC), datetime(2024, 5, 8, tzinfo=UTC))
    """
    types = [instance_type] if isinstance(instance_type, str) else list(instance_type)
    points = sorted(
        (
            (r.timestamp - start).total_seconds(),
            f"{r.instance_type}/{r.availability_zone}",
            r.usd_per_hour,
        )
        for r in read_spot_prices(ec2, types, start, end, product)
    )
    if not points:
        raise PricingError(f"no {product} Spot price history for {instance_type} in that period")
    latest: dict[str, float] = {}  # pool (type/zone) -> its latest price
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


def _pricing_api_price(pricing: Any, region: str, instance_type: str) -> float:
    filters = {
        "instanceType": instance_type,
        "regionCode": region,
        "operatingSystem": "Linux",
        "tenancy": "Shared",
        "preInstalledSw": "NA",
        "capacitystatus": "Used",
    }
    response = pricing.get_products(
        ServiceCode="AmazonEC2",
        MaxResults=1,
        Filters=[{"Type": "TERM_MATCH", "Field": k, "Value": v} for k, v in filters.items()],
    )
    for product in response["PriceList"]:
        document = json.loads(product) if isinstance(product, str) else product
        for term in document["terms"]["OnDemand"].values():
            for dimension in term["priceDimensions"].values():
                return float(dimension["pricePerUnit"]["USD"])
    raise PricingError(f"the Pricing API has no on-demand Linux price for {instance_type}")


def on_demand_prices(
    aws: AwsTarget,
    instance_types: Iterable[str],
    *,
    fallback: Mapping[str, float] = ON_DEMAND_PER_H,
    use_pricing_api: bool = True,
    pricing_region: str = PRICING_REGION,
) -> tuple[dict[str, float], str]:
    """On-demand USD/hour per instance type in `aws.region`, and where they came from
    ("pricing-api" or "fallback": the configured table)."""
    types = list(instance_types)
    if use_pricing_api:
        try:
            # Few attempts: the moto server answers Pricing with 500s, and the table is good
            # enough; the default 8 adaptive retries would spend a minute finding that out.
            pricing = aws.in_region(pricing_region).client("pricing", retries="quick")
            prices = {t: _pricing_api_price(pricing, aws.region, t) for t in types}
            return prices, "pricing-api"
        except Exception as error:
            log.warning("Pricing API unavailable (%s); using the configured on-demand table", error)
    missing = [t for t in types if t not in fallback]
    if missing:
        raise PricingError(f"no fallback on-demand price for instance types {missing}")
    return {t: float(fallback[t]) for t in types}, "fallback"


# -- The whole bill -----------------------------------------------------------------------------
# Instance-hours are not the whole bill. Every other line a setup pays, with its us-east-1 list
# price and where the price is published (checked 2026-12; the pages name the region).


@dataclass(frozen=True)
class UnitPrice:
    usd: float
    unit: str
    source: str


PRICES: dict[str, UnitPrice] = {
    "s3_get": UnitPrice(0.0004 / 1000, "GET request", "Amazon S3 pricing: S3 Standard GET"),
    "sqs_request": UnitPrice(
        0.40 / 1e6, "request (64 KB chunk)", "Amazon SQS pricing: standard queue, after 1M free"
    ),
    "nat_gb": UnitPrice(0.045, "GB processed", "Amazon VPC pricing: NAT gateway data processing"),
    "nat_hour": UnitPrice(0.045, "NAT gateway-hour", "Amazon VPC pricing: NAT gateway hourly"),
    "endpoint_hour": UnitPrice(
        0.01, "interface endpoint-hour per AZ", "AWS PrivateLink pricing: interface endpoint"
    ),
    "endpoint_gb": UnitPrice(0.01, "GB processed", "AWS PrivateLink pricing: first 1 PB"),
    "logs_gb": UnitPrice(0.50, "GB ingested", "Amazon CloudWatch pricing: Logs standard ingestion"),
    "metric_month": UnitPrice(
        0.30, "custom metric-month", "Amazon CloudWatch pricing: metrics, first 10,000"
    ),
    "fargate_vcpu_hour": UnitPrice(0.04048, "vCPU-hour", "AWS Fargate pricing: Linux/x86"),
    "fargate_gb_hour": UnitPrice(0.004445, "GB-hour", "AWS Fargate pricing: Linux/x86"),
    "lambda_request": UnitPrice(0.20 / 1e6, "invocation", "AWS Lambda pricing: requests"),
    "lambda_gb_s": UnitPrice(0.0000166667, "GB-second", "AWS Lambda pricing: x86 duration"),
    "dynamodb_write": UnitPrice(
        0.625 / 1e6, "write request unit", "Amazon DynamoDB pricing: on-demand"
    ),
    "ebs_gb_month": UnitPrice(0.08, "GB-month", "Amazon EBS pricing: gp3 storage"),
}
HOURS_PER_MONTH = 730.0
NETWORKS = ("nat", "nat+s3", "endpoints")
BATCH, ECS = "batch", "ecs"


@dataclass(frozen=True)
class BillParams:
    """What the non-instance lines depend on; each default says where it comes from."""

    # Mean upload size, MiB: the `make bench-phone` set's mean file sizes (12-MP HEIC 1.64,
    # 12-MP JPEG 1.90, PNG screenshot 1.56, WebP 0.12) weighted by the iPhone-heavy mix.
    mean_image_mib: float = 1.6
    # SQS requests an image costs: the S3 notification's send, its share of a 10-message
    # receive, delete batch and heartbeat, and the GroupFace queue's send, receive and delete.
    sqs_requests_per_image: float = 1.6
    # CloudWatch Logs bytes an image costs: its log line and its EMF metrics record.
    log_kib_per_image: float = 1.0
    custom_metrics: int = 12  # metric x dimension series the EMF records create
    # "nat": the images cross a NAT gateway; "nat+s3": the S3 gateway endpoint (free) carries the
    # images, the NAT only the API calls (a few KB an image, not counted); "endpoints": the S3
    # gateway endpoint and interface endpoints for the AWS APIs (docs/infra.md lists 8), no NAT.
    network: str = "nat"
    interface_endpoints: int = 8
    availability_zones: int = 2
    root_volume_gib: int = 100  # the launch template's gp3 root volume (stack_config.py)
    # The flows runtime (docs/infra.md, template/flows_runtime.py): two one-task Fargate
    # services of 0.5 vCPU / 1 GB, the Prefect ECS worker and the dispatch service (which runs
    # each minutely tick in-process: no task per tick); and the flow runs the worker starts, each
    # its own Fargate task at prefect-aws's default 1 vCPU / 2 GB billed at least Fargate's
    # one-minute minimum: the cutover flow every 10 minutes and the hourly savings flow.
    flows_worker_vcpu: float = 0.5
    flows_worker_gib: float = 1.0
    dispatch_service_vcpu: float = 0.5
    dispatch_service_gib: float = 1.0
    flow_run_vcpu: float = 1.0
    flow_run_gib: float = 2.0
    flow_runs_per_hour: float = 7.0
    flow_run_billed_s: float = 60.0
    # The fallback dispatcher: one 256-MB Lambda a minute of about 1 s; the lease: two DynamoDB
    # writes a dispatch tick, from each dispatcher.
    lambda_per_hour: float = 60.0
    lambda_gb_s_each: float = 0.25
    lease_writes_per_hour: float = 240.0

    def __post_init__(self) -> None:
        if self.network not in NETWORKS:
            raise PricingError(f"network must be one of {NETWORKS}, not {self.network!r}")
        if self.mean_image_mib < 0 or self.log_kib_per_image < 0:
            raise PricingError("image and log sizes must not be negative")


DEFAULT_BILL = BillParams()


def bill(
    setup: str,
    images: int,
    hours: float,
    instance_cost: float,
    instance_hours: float,
    params: BillParams = DEFAULT_BILL,
    prices: Mapping[str, UnitPrice] = PRICES,
) -> dict[str, float]:
    """Every line of one setup's bill over a period of `hours` that processed `images`, in USD.

    Both setups pay per image for S3 GETs, SQS requests, the network path and CloudWatch Logs,
    and per hour for metrics, the NAT gateway or the endpoints, and their instances' EBS. Batch
    also pays the flows runtime, the fallback Lambda and the lease table; the ECS service has
    none of them."""
    if setup not in (BATCH, ECS):
        raise PricingError(f"setup must be {BATCH!r} or {ECS!r}, not {setup!r}")
    if images < 0 or hours < 0 or instance_hours < 0:
        raise PricingError("images, hours and instance-hours must not be negative")
    p = {name: price.usd for name, price in prices.items()}
    gb = images * params.mean_image_mib * 2**20 / 1e9
    months = hours / HOURS_PER_MONTH
    if params.network == "nat":
        network = gb * p["nat_gb"] + hours * p["nat_hour"]
    elif params.network == "nat+s3":
        network = hours * p["nat_hour"]
    else:  # S3 through the free gateway endpoint; only the API calls cross interface endpoints
        zones = params.interface_endpoints * params.availability_zones
        network = hours * zones * p["endpoint_hour"]
    lines = {
        "instances": instance_cost,
        "EBS root volumes": instance_hours
        * params.root_volume_gib
        * p["ebs_gb_month"]
        / HOURS_PER_MONTH,
        "S3 GETs": images * p["s3_get"],
        "SQS requests": images * params.sqs_requests_per_image * p["sqs_request"],
        f"network ({params.network})": network,
        "CloudWatch Logs": images * params.log_kib_per_image * 1024 / 1e9 * p["logs_gb"],
        "CloudWatch metrics": months * params.custom_metrics * p["metric_month"],
        "flows runtime (Fargate)": 0.0,
        "Lambda": 0.0,
        "DynamoDB": 0.0,
    }
    if setup == BATCH:
        vcpu_h, gb_h = p["fargate_vcpu_hour"], p["fargate_gb_hour"]
        worker = params.flows_worker_vcpu * vcpu_h + params.flows_worker_gib * gb_h
        worker += params.dispatch_service_vcpu * vcpu_h + params.dispatch_service_gib * gb_h
        run_hours = params.flow_runs_per_hour * params.flow_run_billed_s / HOUR_S
        runs = run_hours * (params.flow_run_vcpu * vcpu_h + params.flow_run_gib * gb_h)
        lines["flows runtime (Fargate)"] = hours * (worker + runs)
        invocations = hours * params.lambda_per_hour
        lines["Lambda"] = invocations * (
            p["lambda_request"] + params.lambda_gb_s_each * p["lambda_gb_s"]
        )
        lines["DynamoDB"] = hours * params.lease_writes_per_hour * p["dynamodb_write"]
    return lines


def per_1000(lines: Mapping[str, float], images: int) -> dict[str, float]:
    """The bill's lines per 1,000 images (NaN when nothing was processed)."""
    return {k: (v / images * 1000.0 if images else float("nan")) for k, v in lines.items()}
