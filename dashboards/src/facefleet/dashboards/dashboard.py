"""The FaceFleet pipeline dashboard: queues, jobs, per-image latency, throughput, Spot, cutover.

`build_dashboard` is pure: names, region and thresholds in, a `Dashboard` value out. `body_json`
is what PutDashboard takes; `put_dashboard_input` is the `aws cloudwatch put-dashboard
--cli-input-json` document.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from facefleet.common.metrics import Metric
from facefleet.common.names import Names
from facefleet.dashboards.alarms import AlarmThresholds
from facefleet.dashboards.widgets import (
    CUTOVER,
    DETECTION,
    DISPATCH,
    EVENTS_NAMESPACE,
    GROUPING,
    ROUTER,
    SAVINGS,
    SQS_NAMESPACE,
    AlarmStatusWidget,
    Dashboard,
    GraphWidget,
    HorizontalLine,
    MathSeries,
    MetricSeries,
    TextWidget,
    Widget,
)

if TYPE_CHECKING:
    from mypy_boto3_cloudwatch.type_defs import PutDashboardInputTypeDef

CUTOVER_STAGES = (10, 25, 50, 75, 100)


def _sqs(id: str, metric: str, queue: str, stat: str = "Maximum") -> MetricSeries:
    return MetricSeries(id, SQS_NAMESPACE, metric, (("QueueName", queue),), stat, queue)


def _rule(id: str, rule: str, label: str, **options: Any) -> MetricSeries:
    return MetricSeries(
        id, EVENTS_NAMESPACE, "TriggeredRules", (("RuleName", rule),), "Sum", label, **options
    )


def build_dashboard(
    names: Names,
    region: str,
    thresholds: AlarmThresholds | None = None,
    alarm_arns: Sequence[str] = (),
) -> Dashboard:
    """The pipeline dashboard; with `alarm_arns`, a row of alarm states on top."""
    t = thresholds or AlarmThresholds()
    ns = names.metrics_namespace
    queues = (names.indexing_queue, names.group_face_queue)
    dlqs = tuple(names.dead_letter_queue(q) for q in queues)

    def custom(
        id: str, metric: Metric, service: str, stat: str, label: str, **options: Any
    ) -> MetricSeries:
        return MetricSeries.custom(id, ns, metric, service, stat, label, **options)

    widgets: list[Widget] = [
        TextWidget(
            f"# FaceFleet pipeline ({names.prefix})\n"
            f"Indexing queue `{names.indexing_queue}` → detection on Batch Spot → "
            f"`{names.group_face_queue}` → grouping. Alarms notify SNS `{names.alerts_topic}`; "
            "what to do for each is in RUNBOOK.md (`facefleet dashboards runbook`)."
        ),
    ]
    if alarm_arns:
        widgets.append(AlarmStatusWidget("Alarms", tuple(alarm_arns)))
    widgets += [
        GraphWidget(
            "Queue depth (visible messages)",
            tuple(
                _sqs(f"depth{i}", "ApproximateNumberOfMessagesVisible", q)
                for i, q in enumerate(queues)
            ),
            y_label="messages",
            width=8,
        ),
        GraphWidget(
            "Dead-letter queues (visible messages)",
            tuple(
                _sqs(f"dead{i}", "ApproximateNumberOfMessagesVisible", q)
                for i, q in enumerate(dlqs)
            ),
            y_label="messages",
            width=8,
            lines=(HorizontalLine("alarm", t.dead_letters),),
        ),
        GraphWidget(
            "Age of oldest message",
            tuple(
                _sqs(f"age{i}", "ApproximateAgeOfOldestMessage", q)
                for i, q in enumerate(queues + dlqs)
            ),
            y_label="seconds",
            width=8,
            lines=(HorizontalLine("latency SLO", t.oldest_message_age_s),),
        ),
        GraphWidget(
            "Batch jobs: submitted and failed",
            (
                custom("submitted", Metric.JOBS_SUBMITTED, DISPATCH, "Sum", "jobs submitted"),
                _rule("failed", names.job_failed_rule, "jobs FAILED"),
            ),
            period=300,
            y_label="jobs",
            width=8,
        ),
        GraphWidget(
            "Images: processed, failed, success rate",
            (
                custom("ok", Metric.IMAGES_PROCESSED, DETECTION, "Sum", "processed"),
                custom("failed", Metric.IMAGES_FAILED, DETECTION, "Sum", "failed"),
                MathSeries(
                    "rate",
                    "100 * FILL(ok, 0) / (FILL(ok, 0) + FILL(failed, 0))",
                    "success %",
                    y_axis="right",
                ),
            ),
            period=300,
            y_label="images",
            right_label="%",
            width=8,
        ),
        GraphWidget(
            "Processing time per image",
            tuple(
                custom(p, Metric.PROCESSING_TIME, DETECTION, p, p) for p in ("p50", "p95", "p99")
            ),
            y_label="ms",
            width=8,
        ),
        GraphWidget(
            "Throughput per minute",
            (
                custom(
                    "images", Metric.IMAGES_PROCESSED, DETECTION, "Sum", "images", visible=False
                ),
                custom("faces", Metric.FACES_DETECTED, DETECTION, "Sum", "faces", visible=False),
                custom("grouped", Metric.FACES_GROUPED, GROUPING, "Sum", "grouped", visible=False),
                MathSeries("imagesmin", "images / (PERIOD(images) / 60)", "images/min"),
                MathSeries("facesmin", "faces / (PERIOD(faces) / 60)", "faces/min"),
                MathSeries("groupedmin", "grouped / (PERIOD(grouped) / 60)", "faces grouped/min"),
            ),
            y_label="per minute",
            width=8,
        ),
        GraphWidget(
            "Spot interruptions",
            (
                _rule("warnings", names.spot_interruption_rule, "jobs put back by Spot"),
                custom(
                    "released0",
                    Metric.MESSAGES_RELEASED,
                    DETECTION,
                    "Sum",
                    "messages released (detection)",
                    y_axis="right",
                ),
                custom(
                    "released1",
                    Metric.MESSAGES_RELEASED,
                    GROUPING,
                    "Sum",
                    "messages released (grouping)",
                    y_axis="right",
                ),
            ),
            period=300,
            y_label="warnings",
            right_label="messages",
            width=8,
        ),
        GraphWidget(
            "Spot savings per hour",
            (
                custom("spot", Metric.SPOT_COST, SAVINGS, "Sum", "Spot cost $"),
                custom("ondemand", Metric.ON_DEMAND_COST, SAVINGS, "Sum", "on-demand cost $"),
                custom("saving", Metric.SPOT_SAVINGS, SAVINGS, "Sum", "saving $"),
                custom(
                    "per1000",
                    Metric.COST_PER_1000_IMAGES,
                    SAVINGS,
                    "Average",
                    "$ per 1000 images",
                    y_axis="right",
                ),
            ),
            period=3600,
            y_label="USD",
            right_label="USD / 1000 images",
            width=8,
        ),
        GraphWidget(
            "Cutover: share of traffic on Batch",
            (custom("weight", Metric.CUTOVER_WEIGHT, CUTOVER, "Maximum", "weight %"),),
            period=300,
            y_label="%",
            width=12,
            lines=tuple(HorizontalLine(f"stage {s}%", s) for s in CUTOVER_STAGES),
        ),
        GraphWidget(
            "Cutover stage (%)",
            (custom("stage", Metric.CUTOVER_WEIGHT, CUTOVER, "Maximum", "current stage"),),
            period=300,
            view="singleValue",
            width=6,
        ),
        # The cutover as `facefleet cutover status` shows it: routed per side, and each gate.
        GraphWidget(
            "Cutover: routed per side per minute",
            (
                custom("tobatch", Metric.ROUTED_TO_BATCH, ROUTER, "Sum", "to Batch"),
                custom("toecs", Metric.ROUTED_TO_ECS, ROUTER, "Sum", "to ECS"),
                custom("routererr", Metric.ROUTER_ERRORS, ROUTER, "Sum", "router errors"),
            ),
            period=60,
            y_label="messages / min",
            width=12,
        ),
        GraphWidget(
            "Cutover gates: failed jobs, new dead letters, Spot interruptions",
            (
                _rule("gatefailed", names.job_failed_rule, "failed Batch jobs"),
                _rule("gatespot", names.spot_interruption_rule, "Spot interruptions"),
                _sqs(
                    "gatedlq",
                    "ApproximateNumberOfMessagesVisible",
                    names.dead_letter_queue(names.indexing_queue),
                    "Maximum",
                ),
            ),
            period=300,
            y_label="count",
            width=12,
        ),
        GraphWidget(
            "Cutover gates: oldest message age (s)",
            (
                _sqs("gateage", "ApproximateAgeOfOldestMessage", names.indexing_queue),
                _sqs("ingressage", "ApproximateAgeOfOldestMessage", names.ingress_queue),
                _sqs("ecsage", "ApproximateAgeOfOldestMessage", names.ecs_indexing_queue),
            ),
            period=60,
            y_label="s",
            width=12,
            lines=(HorizontalLine("hold", 600), HorizontalLine("roll back", 1800)),
        ),
        GraphWidget(
            "Spot saving, last hour ($)",
            (custom("lastsaving", Metric.SPOT_SAVINGS, SAVINGS, "Sum", "saving $"),),
            period=3600,
            view="singleValue",
            width=6,
        ),
    ]
    return Dashboard(names.dashboard, tuple(widgets), region)


def body_json(dashboard: Dashboard) -> str:
    return json.dumps(dashboard.body(), separators=(",", ":"))


def put_dashboard_input(dashboard: Dashboard) -> PutDashboardInputTypeDef:
    """The PutDashboard request (also the `aws cloudwatch put-dashboard --cli-input-json` file)."""
    return {"DashboardName": dashboard.name, "DashboardBody": body_json(dashboard)}
