"""What Spot saved: instance-hours of the hour priced at Spot against on-demand, and $/1000 images.

The arithmetic is pure over plain records (`Usage`, `SpotPrice`): Spot prices are a step function
per instance type and availability zone (each price holds from its timestamp until the next), so
an hour that spans a price change is priced piecewise. Where a usage's zone is unknown, the
highest zone price at each moment is used, so the saving is never overstated.

The adapters around it read the hour's Batch jobs (start/stop times, and the instance type each
ran on, from its ECS container instance; a job's share of its instance is the larger of its vCPU
and GPU shares by the instance facts table) and, through `facefleet.control.pricing` (the one
pricing module), EC2 DescribeSpotPriceHistory and the Pricing API (with the configured on-demand
table as fallback: the moto server does not serve Pricing, and Pricing lives in few regions).
Job time is a lower bound on instance time (it misses boot and scale-down idle), so the
published saving is conservative in the same direction as the cost.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from facefleet.common.aws import AwsTarget
from facefleet.common.instances import INSTANCES
from facefleet.common.metrics import Metric, MetricsEmitter
from facefleet.common.names import Names
from facefleet.control import pricing
from facefleet.control.pricing import SpotPrice
from facefleet.dashboards.widgets import DETECTION, SAVINGS, emitter_dimensions

log = logging.getLogger(__name__)

HOUR = timedelta(hours=1)

# The configured on-demand table and the price errors are the pricing module's.
ON_DEMAND_FALLBACK_USD: Mapping[str, float] = pricing.ON_DEMAND_PER_H
SavingsError = pricing.PricingError


@dataclass(frozen=True)
class Usage:
    """`instances` instances (fractions allowed) of `instance_type` ran from `start` to `end`."""

    instance_type: str
    start: datetime
    end: datetime
    instances: float = 1.0
    availability_zone: str | None = None

    def __post_init__(self) -> None:
        if self.end < self.start:
            raise SavingsError(f"usage of {self.instance_type} ends before it starts: {self}")
        if self.instances < 0:
            raise SavingsError(f"usage of {self.instance_type} has negative instances: {self}")


@dataclass(frozen=True)
class HourlySavings:
    hour_start: datetime
    instance_hours: Mapping[str, float]
    spot_cost_usd: float
    on_demand_cost_usd: float
    images: float
    on_demand_source: str = "fallback"

    @property
    def savings_usd(self) -> float:
        return self.on_demand_cost_usd - self.spot_cost_usd

    @property
    def cost_per_1000_images_usd(self) -> float | None:
        return self.spot_cost_usd * 1000 / self.images if self.images > 0 else None

    def metrics(self) -> dict[Metric, float]:
        values = {
            Metric.SPOT_SAVINGS: self.savings_usd,
            Metric.SPOT_COST: self.spot_cost_usd,
            Metric.ON_DEMAND_COST: self.on_demand_cost_usd,
        }
        per_1000 = self.cost_per_1000_images_usd
        if per_1000 is not None:
            values[Metric.COST_PER_1000_IMAGES] = per_1000
        return values


# ---- pure arithmetic -------------------------------------------------------------------------


def _hours(start: datetime, end: datetime) -> float:
    return max((end - start).total_seconds(), 0.0) / 3600


def _clip(usage: Usage, start: datetime, end: datetime) -> tuple[datetime, datetime] | None:
    a, b = max(usage.start, start), min(usage.end, end)
    return (a, b) if a < b else None


def instance_hours(usages: Iterable[Usage], start: datetime, end: datetime) -> dict[str, float]:
    """Instance-hours per instance type within [start, end)."""
    hours: dict[str, float] = {}
    for usage in usages:
        span = _clip(usage, start, end)
        if span is not None:
            hours[usage.instance_type] = hours.get(
                usage.instance_type, 0.0
            ) + usage.instances * _hours(*span)
    return hours


def _price_at(records: Sequence[SpotPrice], moment: datetime) -> float:
    """The price in effect at `moment`: the latest record at or before it (records sorted).
    Before the first record, the first price (DescribeSpotPriceHistory always returns the
    record in effect at its StartTime, so this only covers a truncated history)."""
    price = records[0].usd_per_hour
    for record in records:
        if record.timestamp > moment:
            break
        price = record.usd_per_hour
    return price


def spot_price_segments(
    history: Iterable[SpotPrice],
    instance_type: str,
    zone: str | None,
    start: datetime,
    end: datetime,
) -> list[tuple[datetime, datetime, float]]:
    """[start, end) cut at every price change: (from, to, USD/hour) pieces."""
    by_zone: dict[str, list[SpotPrice]] = {}
    for record in history:
        if record.instance_type == instance_type and (
            zone is None or record.availability_zone == zone
        ):
            by_zone.setdefault(record.availability_zone, []).append(record)
    if not by_zone:
        where = f" in {zone}" if zone else ""
        raise SavingsError(f"no Spot price history for {instance_type}{where}")
    for records in by_zone.values():
        records.sort(key=lambda r: r.timestamp)
    cuts = sorted({r.timestamp for rs in by_zone.values() for r in rs if start < r.timestamp < end})
    bounds = [start, *cuts, end]
    return [
        (a, b, max(_price_at(rs, a) for rs in by_zone.values()))
        for a, b in itertools.pairwise(bounds)
        if a < b
    ]


def spot_cost(
    usages: Iterable[Usage], history: Sequence[SpotPrice], start: datetime, end: datetime
) -> float:
    """USD the usages cost at Spot within [start, end), priced piecewise over price changes."""
    total = 0.0
    for usage in usages:
        span = _clip(usage, start, end)
        if span is None or usage.instances == 0:
            continue
        for a, b, price in spot_price_segments(
            history, usage.instance_type, usage.availability_zone, *span
        ):
            total += usage.instances * price * _hours(a, b)
    return total


def on_demand_cost(hours: Mapping[str, float], prices: Mapping[str, float]) -> float:
    missing = sorted(t for t, h in hours.items() if h > 0 and t not in prices)
    if missing:
        raise SavingsError(f"no on-demand price for instance types {missing}")
    return sum(h * prices[t] for t, h in hours.items() if h > 0)


def hourly_savings(
    usages: Sequence[Usage],
    history: Sequence[SpotPrice],
    on_demand_prices: Mapping[str, float],
    hour_start: datetime,
    images: float = 0.0,
    on_demand_source: str = "fallback",
) -> HourlySavings:
    """The saving of one hour [hour_start, hour_start + 1h)."""
    end = hour_start + HOUR
    hours = instance_hours(usages, hour_start, end)
    return HourlySavings(
        hour_start=hour_start,
        instance_hours=hours,
        spot_cost_usd=spot_cost(usages, history, hour_start, end),
        on_demand_cost_usd=on_demand_cost(hours, on_demand_prices),
        images=images,
        on_demand_source=on_demand_source,
    )


# ---- adapters ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class SavingsConfig:
    on_demand_fallback_usd: Mapping[str, float] = field(
        default_factory=lambda: dict(ON_DEMAND_FALLBACK_USD)
    )
    product_description: str = pricing.LINUX
    # The Pricing API is served from us-east-1 (and a few others), whatever the stack's region.
    pricing_region: str = pricing.PRICING_REGION
    use_pricing_api: bool = True


def _ms(value: int | None) -> datetime | None:
    return datetime.fromtimestamp(value / 1000, UTC) if value else None


def instance_share(instance_type: str, vcpus: float, gpus: float) -> float:
    """How much of one `instance_type` instance a job holds: the larger of its vCPU and GPU
    shares (instance facts table), so a one-GPU job on a one-GPU, eight-vCPU type holds the
    whole instance, not half of it. An unknown type counts as a whole instance (never less)."""
    facts = INSTANCES.get(instance_type)
    if facts is None:
        return 1.0
    shares = [vcpus / facts.vcpus]
    if gpus and facts.gpus:
        shares.append(gpus / facts.gpus)
    return max(shares)


def container_instance_types(aws: AwsTarget, arns: Iterable[str]) -> dict[str, str]:
    """Container instance ARN -> EC2 instance type (the ECS `ecs.instance-type` attribute).
    Deregistered instances stay readable for a while after they stop; an ARN not found is
    left out. The cluster is read from the ARN (container-instance/<cluster>/<id>)."""
    ecs = aws.client("ecs")
    by_cluster: dict[str, list[str]] = {}
    for arn in arns:
        parts = arn.split(":", 5)[-1].split("/")
        if len(parts) == 3:
            by_cluster.setdefault(parts[1], []).append(arn)
    found: dict[str, str] = {}
    for cluster, cluster_arns in by_cluster.items():
        for i in range(0, len(cluster_arns), 100):
            response = ecs.describe_container_instances(
                cluster=cluster, containerInstances=cluster_arns[i : i + 100]
            )
            for instance in response.get("containerInstances", []):
                for attribute in instance.get("attributes", []):
                    if attribute.get("name") == "ecs.instance-type" and attribute.get("value"):
                        found[instance["containerInstanceArn"]] = attribute["value"]
    return found


def batch_usage(
    names: Names,
    aws: AwsTarget,
    start: datetime,
    end: datetime,
    now: datetime | None = None,
) -> list[Usage]:
    """Instance usage of the job queues' jobs overlapping [start, end), from Batch's job times
    and the instance type each job ran on (its container instance; the environment's first
    type when that is no longer known)."""
    batch = aws.client("batch")
    environments = {env.name: env for env in names.compute_environments}
    now = now or datetime.now(UTC)
    jobs: list[tuple[str, Mapping[str, Any]]] = []  # (fallback instance type, job)
    for queue in names.job_queues:
        fallback = environments[queue.compute_environment].instance_types[0]
        job_ids: list[str] = []
        try:
            for status in ("RUNNING", "SUCCEEDED", "FAILED"):
                pages = batch.get_paginator("list_jobs").paginate(
                    jobQueue=queue.name, jobStatus=status
                )
                for page in pages:
                    job_ids += [j["jobId"] for j in page["jobSummaryList"]]
        except batch.exceptions.ClientException as error:
            # A stack being deployed or torn down may lack a queue; its usage is then zero.
            log.warning("job queue %s not readable, counted as unused: %s", queue.name, error)
            continue
        for i in range(0, len(job_ids), 100):
            for detail in batch.describe_jobs(jobs=job_ids[i : i + 100])["jobs"]:
                started = _ms(detail.get("startedAt"))
                stopped = _ms(detail.get("stoppedAt")) or now
                if started is not None and stopped > start and started < end:
                    jobs.append((fallback, detail))
    arns = {_container(job).get("containerInstanceArn") for _, job in jobs} - {None}
    types = container_instance_types(aws, sorted(str(a) for a in arns)) if arns else {}
    usages = []
    for fallback, job in jobs:
        instance_type = types.get(str(_container(job).get("containerInstanceArn")), fallback)
        share = instance_share(instance_type, _job_resource(job, "VCPU"), _job_resource(job, "GPU"))
        started, stopped = _ms(job.get("startedAt")), _ms(job.get("stoppedAt")) or now
        assert started is not None  # kept above only with a start
        usages.append(Usage(instance_type, started, stopped, share))
    return usages


def _container(job: Mapping[str, Any]) -> Mapping[str, Any]:
    return job.get("container") or {}


def _job_resource(job: Mapping[str, Any], kind: str) -> float:
    container = _container(job)
    for requirement in container.get("resourceRequirements") or []:
        if requirement.get("type") == kind:
            return float(requirement["value"])
    return float(container.get("vcpus") or 1) if kind == "VCPU" else 0.0


def spot_price_history(
    aws: AwsTarget,
    instance_types: Sequence[str],
    start: datetime,
    end: datetime,
    product_description: str = pricing.LINUX,
) -> list[SpotPrice]:
    return pricing.read_spot_prices(
        aws.client("ec2"), instance_types, start, end, product_description
    )


def on_demand_prices(
    aws: AwsTarget,
    instance_types: Sequence[str],
    config: SavingsConfig | None = None,
) -> tuple[dict[str, float], str]:
    """On-demand USD/hour per instance type, and where they came from ("pricing-api"/"fallback")."""
    config = config or SavingsConfig()
    return pricing.on_demand_prices(
        aws,
        instance_types,
        fallback=config.on_demand_fallback_usd,
        use_pricing_api=config.use_pricing_api,
        pricing_region=config.pricing_region,
    )


def images_processed(names: Names, aws: AwsTarget, start: datetime, end: datetime) -> float:
    cloudwatch = aws.client("cloudwatch")
    response = cloudwatch.get_metric_statistics(
        Namespace=names.metrics_namespace,
        MetricName=str(Metric.IMAGES_PROCESSED),
        Dimensions=[{"Name": k, "Value": v} for k, v in emitter_dimensions(DETECTION).items()],
        StartTime=start,
        EndTime=end,
        Period=3600,
        Statistics=["Sum"],
    )
    return float(sum(point["Sum"] for point in response["Datapoints"]))


def previous_hour(now: datetime | None = None) -> datetime:
    now = now or datetime.now(UTC)
    return now.replace(minute=0, second=0, microsecond=0) - HOUR


def run_savings_job(
    names: Names,
    aws: AwsTarget,
    hour_start: datetime | None = None,
    config: SavingsConfig | None = None,
    *,
    publish: bool = True,
    usages: Sequence[Usage] | None = None,
) -> HourlySavings:
    """Compute one hour's saving (default: the previous full hour) and publish it as metrics.

    `usages` overrides the Batch job reading (for the local demo and the simulator)."""
    config = config or SavingsConfig()
    start = hour_start or previous_hour()
    end = start + HOUR
    if usages is None:
        usages = batch_usage(names, aws, start, end)
    types = sorted({u.instance_type for u in usages})
    history: list[SpotPrice] = []
    prices: dict[str, float] = {}
    source = "none"  # an idle hour needs no prices
    if types:
        # A day back, so the price in effect at the hour's start is in the history.
        history = spot_price_history(
            aws, types, start - timedelta(days=1), end, config.product_description
        )
        prices, source = on_demand_prices(aws, types, config)
    images = images_processed(names, aws, start, end)
    result = hourly_savings(usages, history, prices, start, images, source)
    log.info(
        "hour %s: %s instance-hours, Spot $%.4f vs on-demand $%.4f (%s): saving $%.4f",
        start.isoformat(),
        dict(result.instance_hours),
        result.spot_cost_usd,
        result.on_demand_cost_usd,
        source,
        result.savings_usd,
    )
    if publish:
        emitter = MetricsEmitter(
            names.metrics_namespace,
            emitter_dimensions(SAVINGS),
            cloudwatch=aws,
        )
        emitter.emit(result.metrics(), hour=start.isoformat(), on_demand_source=source)
    return result
