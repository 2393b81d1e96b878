"""What the cutover gates look at: CloudWatch job outcomes and p95, dead letters, queue age."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

from facefleet.common.aws import AwsTarget
from facefleet.common.metrics import Metric
from facefleet.common.names import Names
from facefleet.control import observe, parameters, router
from facefleet.control.cutover.machine import CutoverState, Health


def _sum(
    cloudwatch: Any,
    namespace: str,
    metric: str,
    dimensions: Mapping[str, str],
    start: dt.datetime,
    end: dt.datetime,
) -> float:
    points = cloudwatch.get_metric_statistics(
        Namespace=namespace,
        MetricName=metric,
        Dimensions=[{"Name": k, "Value": v} for k, v in dimensions.items()],
        StartTime=start,
        EndTime=end,
        Period=60,
        Statistics=["Sum"],
    )["Datapoints"]
    return float(sum(p.get("Sum", 0.0) for p in points))


metric_sum = _sum


def _p95(
    cloudwatch: Any,
    namespace: str,
    metric: str,
    dimensions: Mapping[str, str],
    start: dt.datetime,
    end: dt.datetime,
) -> float | None:
    """p95 over the window. The moto server returns no percentiles: then the Maximum, an upper
    bound (stricter than the real gate), so a local run can only err towards holding."""
    window = max(60, int((end - start).total_seconds()) // 60 * 60 + 60)
    points = cloudwatch.get_metric_statistics(
        Namespace=namespace,
        MetricName=metric,
        Dimensions=[{"Name": k, "Value": v} for k, v in dimensions.items()],
        StartTime=start,
        EndTime=end,
        Period=window,
        ExtendedStatistics=["p95"],
        Statistics=["Maximum"],
    )["Datapoints"]
    values = [p["ExtendedStatistics"]["p95"] for p in points if p.get("ExtendedStatistics")]
    if values:
        return float(max(values))
    maxima = [p["Maximum"] for p in points if "Maximum" in p]
    return float(max(maxima)) if maxima else None


def dead_letter_count(names: Names, aws: AwsTarget) -> int:
    """Messages in the Batch indexing queue's dead-letter queue (found from its RedrivePolicy)."""
    indexing = observe.stack_queue_url(names, aws, "IndexingQueueUrl", names.indexing_queue)
    url = observe.dead_letter_url(indexing, aws)
    return observe.queue_depth(url, aws).visible if url else 0


def read_health(
    names: Names,
    state: CutoverState,
    aws: AwsTarget,
    *,
    now_s: float,
    baseline_p95_ms: float | None = None,
) -> Health:
    """The gates' inputs for the window since the stage began (at most the last 24 hours).

    Job outcomes: failures are the AWS/Events TriggeredRules count of the job-failed rule,
    finished jobs the dispatch flow's JobsSubmitted. New dead letters: the DLQ's depth now minus
    at stage entry (read from SQS directly; exact, and moto publishes no AWS/SQS metrics).
    """
    cloudwatch = aws.client("cloudwatch")
    end = dt.datetime.fromtimestamp(now_s, dt.UTC) + dt.timedelta(minutes=1)
    start = max(
        dt.datetime.fromtimestamp(state.entered_at_s, dt.UTC),
        end - dt.timedelta(hours=24),
    ) - dt.timedelta(minutes=1)
    namespace = names.metrics_namespace
    submitted = _sum(
        cloudwatch, namespace, str(Metric.JOBS_SUBMITTED), {"Service": "dispatch"}, start, end
    )
    failed = _sum(
        cloudwatch, "AWS/Events", "TriggeredRules", {"RuleName": names.job_failed_rule}, start, end
    )
    spot = _sum(
        cloudwatch,
        "AWS/Events",
        "TriggeredRules",
        {"RuleName": names.spot_interruption_rule},
        start,
        end,
    )
    p95 = _p95(
        cloudwatch, namespace, str(Metric.PROCESSING_TIME), {"Service": "detection"}, start, end
    )
    return Health(
        finished_jobs=int(submitted),
        failed_jobs=int(failed),
        p95_ms=p95,
        baseline_p95_ms=baseline_p95_ms or read_baseline(names, aws),
        dead_letters=max(0, dead_letter_count(names, aws) - state.dead_letters_at_entry),
        oldest_age_s=observe.oldest_message_age(names.indexing_queue, aws),
        spot_interruptions=int(spot),
    )


def baseline_parameter(names: Names) -> str:
    return router.parameter(names, "ecs-baseline-p95-ms")


def read_baseline(names: Names, aws: AwsTarget) -> float | None:
    """The ECS service's measured p95 per image (ms), which an operator records in SSM."""
    value = parameters.read(aws, baseline_parameter(names))
    return None if value is None else float(value)
