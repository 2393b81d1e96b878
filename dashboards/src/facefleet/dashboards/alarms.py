"""The pipeline's alarms as data: what each watches, its threshold, and what to do when it fires.

Every alarm notifies the alerts SNS topic on ALARM and on OK, carries its runbook in the
AlarmDescription (so the page a responder receives says what to do), and the same runbooks render
to RUNBOOK.md (`runbook_markdown`). Thresholds come from one `AlarmThresholds` value.

The stuck-pipeline alarms are metric math: a queue with visible messages while the workers that
drain it report no progress. Progress is the *SampleCount* of the worker's metric, so a worker that
emits `ImagesProcessed = 0` for an all-failures batch still counts as alive (the failure alarms and
the dead-letter alarm cover that case).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from facefleet.common.aws import queue_name
from facefleet.common.metrics import Metric
from facefleet.common.names import Names
from facefleet.dashboards.widgets import (
    DETECTION,
    EVENTS_NAMESPACE,
    GROUPING,
    SQS_NAMESPACE,
    MathSeries,
    MetricSeries,
)

MAX_DESCRIPTION = 1024  # PutMetricAlarm's AlarmDescription limit


@dataclass(frozen=True)
class AlarmThresholds:
    """Alarm thresholds; the defaults encode the service's SLOs."""

    period_s: int = 300
    # Batch FAILED events in one period: a job only fails after its retry attempts are spent.
    job_failures: int = 1
    # Visible messages in a work queue, sustained for `queue_depth_periods` periods.
    queue_depth: int = 10_000
    queue_depth_periods: int = 3
    # Latency SLO: an uploaded image is indexed (and grouped) within this many seconds.
    oldest_message_age_s: int = 3600
    # Messages in a dead-letter queue.
    dead_letters: int = 1
    # FaceFleet jobs put back by Spot per hour before the fleet is considered to be thrashing
    # (the stack's own interruptions only: template/alerts.py).
    spot_interruptions_per_hour: int = 10
    # Minutes with a non-empty queue and no worker progress.
    stuck_minutes: int = 30

    def __post_init__(self) -> None:
        if self.period_s % 60 or self.period_s <= 0:
            raise ValueError(f"period_s must be a positive multiple of 60, got {self.period_s}")
        if self.stuck_minutes * 60 < self.period_s:
            raise ValueError("stuck_minutes must cover at least one period")
        for name in (
            "job_failures",
            "queue_depth",
            "queue_depth_periods",
            "oldest_message_age_s",
            "dead_letters",
            "spot_interruptions_per_hour",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"alarm threshold {name} must be at least 1")


@dataclass(frozen=True)
class Alarm:
    """One CloudWatch alarm: a single metric, or metric math whose last series returns data."""

    name: str
    summary: str
    runbook: str
    threshold: float
    comparison: str
    evaluation_periods: int
    series: tuple[MetricSeries | MathSeries, ...]
    treat_missing_data: str = "notBreaching"

    def __post_init__(self) -> None:
        if len(self.description) > MAX_DESCRIPTION:
            raise ValueError(f"alarm {self.name}: description over {MAX_DESCRIPTION} characters")
        for s in self.series:
            if isinstance(s, MetricSeries) and s.period is None:
                raise ValueError(f"alarm {self.name}: series {s.id} needs a period")

    @property
    def description(self) -> str:
        return f"{self.summary}\nRunbook: {self.runbook}"

    def metric_series(self) -> list[MetricSeries]:
        return [s for s in self.series if isinstance(s, MetricSeries)]

    def put_metric_alarm_input(self, topic_arn: str, tags: dict[str, str]) -> dict[str, Any]:
        """The PutMetricAlarm request (also the `--cli-input-json` document)."""
        request: dict[str, Any] = {
            "AlarmName": self.name,
            "AlarmDescription": self.description,
            "ActionsEnabled": True,
            "AlarmActions": [topic_arn],
            "OKActions": [topic_arn],
            "EvaluationPeriods": self.evaluation_periods,
            "DatapointsToAlarm": self.evaluation_periods,
            "Threshold": float(self.threshold),
            "ComparisonOperator": self.comparison,
            "TreatMissingData": self.treat_missing_data,
            "Tags": [{"Key": k, "Value": v} for k, v in sorted(tags.items())],
        }
        if len(self.series) == 1:
            (metric,) = self.metric_series()
            request.update(
                Namespace=metric.namespace,
                MetricName=metric.name,
                Dimensions=[{"Name": k, "Value": v} for k, v in metric.dimensions],
                Period=metric.period,
            )
            stat_key = "ExtendedStatistic" if metric.stat.startswith("p") else "Statistic"
            request[stat_key] = metric.stat
            return request
        request["Metrics"] = [_query(s, last=s is self.series[-1]) for s in self.series]
        return request


def _query(series: MetricSeries | MathSeries, *, last: bool) -> dict[str, Any]:
    if isinstance(series, MathSeries):
        return {
            "Id": series.id,
            "Expression": series.expression,
            "Label": series.label,
            "ReturnData": last,
        }
    return {
        "Id": series.id,
        "MetricStat": {
            "Metric": {
                "Namespace": series.namespace,
                "MetricName": series.name,
                "Dimensions": [{"Name": k, "Value": v} for k, v in series.dimensions],
            },
            "Period": series.period,
            "Stat": series.stat,
        },
        "ReturnData": last,
    }


def _sqs(id: str, metric: str, queue: str, stat: str, period: int) -> MetricSeries:
    return MetricSeries(
        id, SQS_NAMESPACE, metric, (("QueueName", queue),), stat, queue, period=period
    )


def _rule(id: str, rule: str, period: int) -> MetricSeries:
    return MetricSeries(
        id, EVENTS_NAMESPACE, "TriggeredRules", (("RuleName", rule),), "Sum", rule, period=period
    )


RUNBOOK_JOB_FAILURES = (
    "A Batch job failed after all retry attempts. Open the job in the Batch console (or "
    "`aws batch describe-jobs`) for statusReason and exit code, then its log stream in the "
    "log group. Exit 75 exhausting retries means repeated Spot reclaims: check the Spot "
    "interruptions widget and widen instance types. Config errors name the variable: fix the job "
    "definition and redeploy. Messages of a failed job return to the queue after their visibility "
    "timeout; nothing is lost unless they reach the DLQ."
)
RUNBOOK_QUEUE_DEPTH = (
    "The backlog stayed above the threshold. Check the dispatch flow ran (Prefect UI, "
    "JobsSubmitted widget) and that jobs reach RUNNING: RUNNABLE jobs mean no Spot capacity "
    "(add instance types or raise max vCPUs of the secondary compute environment). If jobs run but "
    "depth still grows, throughput per image regressed: compare the processing-time percentiles "
    "with last week. A one-off bulk import may be expected: raise the threshold temporarily."
)
RUNBOOK_OLDEST_MESSAGE = (
    "The latency SLO is at risk: a message has waited longer than the SLO. If depth is also high, "
    "follow the queue-depth runbook. If depth is low, one message is being retried: find it via "
    "the workers' logs (receive count) and check whether it is a poison message that the DLQ "
    "will take after maxReceiveCount. If no jobs are running, trigger dispatch manually "
    "(`prefect deployment run`)."
)
RUNBOOK_DEAD_LETTERS = (
    "Messages failed maxReceiveCount times and were moved to the dead-letter queue. Inspect them "
    "(`aws sqs receive-message` on the DLQ, do not delete), find the image ids in the workers' "
    "logs (ImagesFailed, error reason). Fix the cause (corrupt image, model error, missing "
    "permission), then redrive with `aws sqs start-message-move-task` from the DLQ to the source "
    "queue. Processing is idempotent, so redriving is safe."
)
RUNBOOK_SPOT = (
    "Jobs put back by Spot exceed the rate: the fleet is reclaimed faster than it works. "
    "Workers release their messages on the 2-minute notice, so no data is lost, but throughput "
    "drops. Add instance types/AZs to the compute environments (price-capacity-optimized spreads "
    "over pools), check the savings widget still shows a saving, and hold the cutover stage until "
    "the rate settles."
)
RUNBOOK_STUCK = (
    "Messages wait but workers report no progress. Check Batch jobs for the queue: none RUNNING "
    "means dispatch is not submitting (Prefect flow failing, job queue disabled, compute "
    "environment INVALID); RUNNING jobs without progress means workers hang (model download, "
    "MongoDB or S3 unreachable): read their logs, terminate the jobs, and let dispatch resubmit. "
    "Messages become visible again after the visibility timeout."
)


@dataclass(frozen=True)
class AlarmQueues:
    """The queues the alarms watch, by name (the AWS/SQS QueueName dimension). Production's are
    the existing service's (other names, other accounts): build them from the queue URLs the
    stack outputs or Settings carry (`from_urls`), never from the prefix. A dead-letter queue
    the stack does not own may be unknown (None: no dead-letter alarm for it)."""

    indexing: str
    group_face: str
    indexing_dlq: str | None = None
    group_face_dlq: str | None = None

    @classmethod
    def created_by_stack(cls, names: Names) -> AlarmQueues:
        """The queues a stack creates itself (no existing queues given)."""
        return cls(
            names.indexing_queue,
            names.group_face_queue,
            names.dead_letter_queue(names.indexing_queue),
            names.dead_letter_queue(names.group_face_queue),
        )

    @classmethod
    def from_urls(
        cls,
        indexing_url: str,
        group_face_url: str,
        indexing_dlq_url: str | None = None,
        group_face_dlq_url: str | None = None,
    ) -> AlarmQueues:
        return cls(
            queue_name(indexing_url),
            queue_name(group_face_url),
            queue_name(indexing_dlq_url) if indexing_dlq_url else None,
            queue_name(group_face_dlq_url) if group_face_dlq_url else None,
        )


def build_alarms(
    names: Names,
    thresholds: AlarmThresholds | None = None,
    queues: AlarmQueues | None = None,
) -> tuple[Alarm, ...]:
    """Every FaceFleet alarm for the stack `names` describes, on `queues` (default: the
    queues the stack creates)."""
    t = thresholds or AlarmThresholds()
    q = queues or AlarmQueues.created_by_stack(names)
    p = t.period_s
    alarms: list[Alarm] = [
        Alarm(
            f"{names.prefix}-batch-job-failures",
            f"At least {t.job_failures} Batch job(s) FAILED in {p // 60} minutes "
            f"(EventBridge rule {names.job_failed_rule}).",
            RUNBOOK_JOB_FAILURES,
            t.job_failures,
            "GreaterThanOrEqualToThreshold",
            1,
            (_rule("failed", names.job_failed_rule, p),),
        ),
        Alarm(
            f"{names.prefix}-spot-interruptions",
            f"More than {t.spot_interruptions_per_hour} FaceFleet jobs put back by Spot in an hour "
            f"(EventBridge rule {names.spot_interruption_rule}).",
            RUNBOOK_SPOT,
            t.spot_interruptions_per_hour,
            "GreaterThanThreshold",
            1,
            (_rule("interruptions", names.spot_interruption_rule, 3600),),
        ),
    ]
    workers = (
        (q.indexing, q.indexing_dlq, DETECTION, Metric.IMAGES_PROCESSED),
        (q.group_face, q.group_face_dlq, GROUPING, Metric.FACES_GROUPED),
    )
    for queue, dlq, service, progress in workers:
        alarms += [
            Alarm(
                f"{queue}-queue-depth",
                f"Queue {queue} held more than {t.queue_depth} visible messages for "
                f"{t.queue_depth_periods * p // 60} minutes.",
                RUNBOOK_QUEUE_DEPTH,
                t.queue_depth,
                "GreaterThanThreshold",
                t.queue_depth_periods,
                (_sqs("depth", "ApproximateNumberOfMessagesVisible", queue, "Maximum", p),),
            ),
            Alarm(
                f"{queue}-oldest-message",
                f"The oldest message in {queue} is older than the "
                f"{t.oldest_message_age_s // 60}-minute latency SLO.",
                RUNBOOK_OLDEST_MESSAGE,
                t.oldest_message_age_s,
                "GreaterThanThreshold",
                1,
                (_sqs("age", "ApproximateAgeOfOldestMessage", queue, "Maximum", p),),
            ),
            *(
                [
                    Alarm(
                        f"{dlq}-dead-letters",
                        f"Dead-letter queue {dlq} holds at least {t.dead_letters} message(s).",
                        RUNBOOK_DEAD_LETTERS,
                        t.dead_letters,
                        "GreaterThanOrEqualToThreshold",
                        1,
                        (_sqs("dead", "ApproximateNumberOfMessagesVisible", dlq, "Maximum", p),),
                    ),
                ]
                if dlq is not None
                else []
            ),
            Alarm(
                f"{queue}-stuck",
                f"Queue {queue} had visible messages for {t.stuck_minutes} minutes while the "
                f"{service} workers reported no {progress} at all.",
                RUNBOOK_STUCK,
                1,
                "GreaterThanOrEqualToThreshold",
                t.stuck_minutes * 60 // p,
                (
                    _sqs("visible", "ApproximateNumberOfMessagesVisible", queue, "Maximum", p),
                    MetricSeries.custom(
                        "progress",
                        names.metrics_namespace,
                        progress,
                        service,
                        "SampleCount",
                        f"{progress} samples",
                        period=p,
                    ),
                    MathSeries(
                        "stuck",
                        "IF(visible > 0 AND FILL(progress, 0) == 0, 1, 0)",
                        "queue non-empty, no progress",
                    ),
                ),
            ),
        ]
    return tuple(alarms)


def runbook_markdown(names: Names, thresholds: AlarmThresholds | None = None) -> str:
    """RUNBOOK.md: one section per alarm, generated so the docs and the alarms cannot drift."""
    lines = [
        "# FaceFleet alarm runbook",
        "",
        "Generated by `facefleet dashboards runbook` from `facefleet/dashboards/alarms.py` for the",
        f"default stack names (prefix `{names.prefix}`); every alarm notifies the SNS topic",
        f"`{names.alerts_topic}` when it fires and when it recovers. Do not edit by hand.",
        "",
    ]
    for alarm in build_alarms(names, thresholds):
        lines += [f"## {alarm.name}", "", alarm.summary, "", f"**What to do:** {alarm.runbook}", ""]
    return "\n".join(lines)
