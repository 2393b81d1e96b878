"""Worker metrics in CloudWatch embedded metric format (EMF), plus a direct path for local runs.

On Batch, EMF lines on stdout reach CloudWatch Logs through the awslogs driver and become metrics
with no API call. The local stack has no log-to-metric extraction, so with METRICS_TO_CLOUDWATCH
set the same values also go through PutMetricData (to the moto server), where dashboards and
alarms can read them.

`Metric` lists every metric name the project emits; dashboards and alarms may only use these.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Mapping
from enum import StrEnum
from typing import IO, TYPE_CHECKING, Any

from facefleet.common.aws import AwsTarget

if TYPE_CHECKING:
    from mypy_boto3_cloudwatch.literals import StandardUnitType
    from mypy_boto3_cloudwatch.type_defs import DimensionTypeDef, MetricDatumTypeDef

log = logging.getLogger(__name__)


class Metric(StrEnum):
    IMAGES_PROCESSED = "ImagesProcessed"
    IMAGES_FAILED = "ImagesFailed"
    FACES_DETECTED = "FacesDetected"
    PROCESSING_TIME = "ProcessingTimeMs"
    FACES_GROUPED = "FacesGrouped"
    PEOPLE_CREATED = "PeopleCreated"
    GROUPING_TIME = "GroupingTimeMs"
    MESSAGES_RELEASED = "MessagesReleased"
    JOBS_SUBMITTED = "JobsSubmitted"
    DISPATCH_BACKLOG = "DispatchBacklog"
    CUTOVER_WEIGHT = "CutoverWeightPercent"
    ROUTED_TO_BATCH = "RoutedToBatch"
    ROUTED_TO_ECS = "RoutedToEcs"
    ROUTER_ERRORS = "RouterErrors"
    SPOT_SAVINGS = "SpotSavingsUSD"
    SPOT_COST = "SpotCostUSD"
    ON_DEMAND_COST = "OnDemandCostUSD"
    COST_PER_1000_IMAGES = "CostPer1000ImagesUSD"


UNITS: dict[Metric, StandardUnitType] = {
    Metric.PROCESSING_TIME: "Milliseconds",
    Metric.GROUPING_TIME: "Milliseconds",
    Metric.CUTOVER_WEIGHT: "Percent",
    Metric.SPOT_SAVINGS: "None",
    Metric.SPOT_COST: "None",
    Metric.ON_DEMAND_COST: "None",
    Metric.COST_PER_1000_IMAGES: "None",
}


def unit_of(metric: Metric) -> StandardUnitType:
    return UNITS.get(metric, "Count")


class MetricsEmitter:
    """Emit metrics as EMF on a stream, and optionally via PutMetricData."""

    def __init__(
        self,
        namespace: str,
        dimensions: Mapping[str, str],
        *,
        stream: IO[str] | None = None,
        cloudwatch: AwsTarget | None = None,
    ) -> None:
        self.namespace = namespace
        self.dimensions = dict(dimensions)
        self.stream = stream
        # PutMetricData too when a target is given; EMF on the stream alone otherwise.
        self.cloudwatch = cloudwatch.client("cloudwatch") if cloudwatch else None

    def emit(self, values: Mapping[Metric, float], **properties: Any) -> None:
        """Record one observation of each metric, with free-form properties for log search."""
        document: dict[str, Any] = {
            "_aws": {
                "Timestamp": int(time.time() * 1000),
                "CloudWatchMetrics": [
                    {
                        "Namespace": self.namespace,
                        "Dimensions": [sorted(self.dimensions)],
                        "Metrics": [{"Name": str(m), "Unit": unit_of(m)} for m in values],
                    }
                ],
            },
            **self.dimensions,
            **properties,
            **{str(m): float(v) for m, v in values.items()},
        }
        stream = self.stream or sys.stdout
        stream.write(json.dumps(document, default=str) + "\n")
        stream.flush()
        if self.cloudwatch is not None:
            self._put(values)

    def _put(self, values: Mapping[Metric, float]) -> None:
        assert self.cloudwatch is not None
        dimensions: list[DimensionTypeDef] = [
            {"Name": k, "Value": v} for k, v in sorted(self.dimensions.items())
        ]
        data: list[MetricDatumTypeDef] = [
            {"MetricName": str(m), "Dimensions": dimensions, "Value": float(v), "Unit": unit_of(m)}
            for m, v in values.items()
        ]
        try:
            self.cloudwatch.put_metric_data(Namespace=self.namespace, MetricData=data)
        except Exception:  # metrics must never fail the work they describe
            log.warning("PutMetricData failed", exc_info=True)
