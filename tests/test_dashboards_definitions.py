"""The dashboard and alarm definitions, checked without a server: structure, metric names,
request shapes against the botocore model, the generated runbook, and the local metric math."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import botocore.session
import numpy as np
import pytest
from botocore.validate import ParamValidator

from facefleet.common.metrics import Metric
from facefleet.common.names import NAMES, Names
from facefleet.dashboards.alarms import AlarmThresholds, build_alarms, runbook_markdown
from facefleet.dashboards.dashboard import build_dashboard, put_dashboard_input
from facefleet.dashboards.widgets import (
    EVENTS_NAMESPACE,
    SERVICE_DIMENSION,
    SERVICES,
    SQS_NAMESPACE,
    GraphWidget,
    MetricSeries,
    emitter_dimensions,
)
from facefleet.tools.dashboard_render import ExpressionError, evaluate, weighted_percentile

ROOT = Path(__file__).resolve().parents[1]
TOPIC = "arn:aws:sns:us-east-1:123456789012:face-recognition-alerts"

# Metrics AWS itself publishes for the resources the stack creates (queues, EventBridge rules).
AWS_EMITTED = {
    SQS_NAMESPACE: {
        "ApproximateNumberOfMessagesVisible",
        "ApproximateAgeOfOldestMessage",
        "ApproximateNumberOfMessagesNotVisible",
        "NumberOfMessagesSent",
        "NumberOfMessagesReceived",
        "NumberOfMessagesDeleted",
    },
    EVENTS_NAMESPACE: {"TriggeredRules", "Invocations", "FailedInvocations"},
}


def used_metrics(names: Names) -> list[MetricSeries]:
    """Every metric statistic a widget or an alarm reads."""
    dashboard = build_dashboard(names, "us-east-1", alarm_arns=["arn:x"])
    series = [s for g in dashboard.graphs() for s in g.metric_series()]
    series += [s for a in build_alarms(names) for s in a.metric_series()]
    return series


def dashboard_body_metrics(body: dict[str, Any]) -> list[tuple[str, str, dict[str, str]]]:
    """(namespace, name, dimensions) of every metric row in a dashboard body (the JSON)."""
    found = []
    for widget in body["widgets"]:
        for row in widget["properties"].get("metrics", []):
            plain = [x for x in row if not isinstance(x, dict)]
            if plain:
                namespace, name, *pairs = plain
                found.append((namespace, name, dict(zip(pairs[::2], pairs[1::2], strict=True))))
    return found


def test_every_metric_used_is_one_the_project_or_aws_emits():
    names = NAMES
    registry = {str(m) for m in Metric}
    queues = {names.indexing_queue, names.group_face_queue}
    queues |= {names.dead_letter_queue(q) for q in queues}
    queues |= {names.ingress_queue, names.ecs_indexing_queue}  # the stack's router queues
    rules = {names.job_failed_rule, names.spot_interruption_rule}
    unknown = []
    body = build_dashboard(names, "us-east-1").body()
    rows = dashboard_body_metrics(body)
    rows += [(s.namespace, s.name, dict(s.dimensions)) for s in used_metrics(names)]
    assert len(rows) > 30
    for namespace, name, dimensions in rows:
        if namespace == names.metrics_namespace:
            ok = (
                name in registry
                and dimensions == {SERVICE_DIMENSION: dimensions.get(SERVICE_DIMENSION)}
                and dimensions[SERVICE_DIMENSION] in SERVICES
            )
        elif namespace == SQS_NAMESPACE:
            ok = name in AWS_EMITTED[namespace] and dimensions.get("QueueName") in queues
        elif namespace == EVENTS_NAMESPACE:
            ok = name in AWS_EMITTED[namespace] and dimensions.get("RuleName") in rules
        else:
            ok = False
        if not ok:
            unknown.append((namespace, name, dimensions))
    assert not unknown, f"metrics nothing emits: {unknown}"


def test_the_dashboard_covers_every_part_of_the_pipeline():
    names = NAMES
    used = {
        (s.namespace, s.name)
        for g in build_dashboard(names, "us-east-1").graphs()
        for s in g.metric_series()
    }
    ns = names.metrics_namespace
    for metric in (
        Metric.IMAGES_PROCESSED,
        Metric.IMAGES_FAILED,
        Metric.PROCESSING_TIME,
        Metric.FACES_DETECTED,
        Metric.SPOT_SAVINGS,
        Metric.CUTOVER_WEIGHT,
        Metric.JOBS_SUBMITTED,
    ):
        assert (ns, str(metric)) in used
    assert (SQS_NAMESPACE, "ApproximateAgeOfOldestMessage") in used
    assert (EVENTS_NAMESPACE, "TriggeredRules") in used
    stats = {
        s.stat
        for g in build_dashboard(names, "us-east-1").graphs()
        for s in g.metric_series()
        if s.name == str(Metric.PROCESSING_TIME)
    }
    assert stats == {"p50", "p95", "p99"}


def test_dashboard_body_is_well_formed():
    body = build_dashboard(NAMES, "us-east-1", alarm_arns=["arn:aws:cloudwatch:a"]).body()
    boxes = []
    for widget in body["widgets"]:
        assert widget["type"] in {"metric", "text", "alarm"}
        assert widget["x"] >= 0 and widget["x"] + widget["width"] <= 24
        boxes.append((widget["x"], widget["y"], widget["width"], widget["height"]))
        if widget["type"] != "metric":
            continue
        props = widget["properties"]
        ids = [row[-1]["id"] for row in props["metrics"]]
        assert len(ids) == len(set(ids))
        for row in props["metrics"]:
            options = row[-1]
            if "expression" in options:  # every id an expression names is a series of the widget
                referenced = {
                    t
                    for t in options["expression"]
                    .replace("(", " ")
                    .replace(")", " ")
                    .replace(",", " ")
                    .split()
                    if t.islower()
                }
                assert referenced <= set(ids), options
    for i, a in enumerate(boxes):  # no two widgets overlap
        for b in boxes[i + 1 :]:
            assert (
                a[0] + a[2] <= b[0]
                or b[0] + b[2] <= a[0]
                or a[1] + a[3] <= b[1]
                or b[1] + b[3] <= a[1]
            ), (a, b)


def _validate(operation: str, params: dict[str, Any]) -> None:
    model = botocore.session.get_session().get_service_model("cloudwatch")
    shape = model.operation_model(operation).input_shape
    assert shape is not None
    report = ParamValidator().validate(params, shape)
    assert not report.has_errors(), report.generate_report()


def test_requests_match_the_cloudwatch_api_model():
    _validate("PutDashboard", put_dashboard_input(build_dashboard(NAMES, "us-east-1")))
    for alarm in build_alarms(NAMES):
        request = alarm.put_metric_alarm_input(TOPIC, {"facefleet:stack": "facefleet"})
        _validate("PutMetricAlarm", request)
        assert len(request["AlarmDescription"]) <= 1024
        assert request["AlarmActions"] == [TOPIC]
        assert "Runbook:" in request["AlarmDescription"]


def test_alarms_cover_each_failure_mode_with_thresholds_from_config():
    thresholds = AlarmThresholds(
        queue_depth=123, oldest_message_age_s=900, spot_interruptions_per_hour=7, stuck_minutes=20
    )
    alarms = {a.name: a for a in build_alarms(NAMES, thresholds)}
    p = NAMES.prefix
    q, g = NAMES.indexing_queue, NAMES.group_face_queue
    assert set(alarms) == {
        f"{p}-batch-job-failures",
        f"{p}-spot-interruptions",
        f"{q}-queue-depth",
        f"{q}-oldest-message",
        f"{q}-dlq-dead-letters",
        f"{q}-stuck",
        f"{g}-queue-depth",
        f"{g}-oldest-message",
        f"{g}-dlq-dead-letters",
        f"{g}-stuck",
    }
    assert alarms[f"{q}-queue-depth"].threshold == 123
    assert alarms[f"{q}-oldest-message"].threshold == 900
    assert alarms[f"{p}-spot-interruptions"].threshold == 7
    stuck = alarms[f"{q}-stuck"].put_metric_alarm_input(TOPIC, {})
    assert stuck["EvaluationPeriods"] * 300 == 20 * 60
    assert [m["ReturnData"] for m in stuck["Metrics"]] == [False, False, True]
    with pytest.raises(ValueError, match="queue_depth"):
        AlarmThresholds(queue_depth=0)


def test_runbook_doc_is_generated_from_the_alarms():
    committed = (ROOT / "dashboards" / "RUNBOOK.md").read_text()
    assert committed == runbook_markdown(NAMES), (
        "run: facefleet dashboards runbook --out dashboards/RUNBOOK.md"
    )


def test_emitter_dimensions_name_a_known_service():
    assert emitter_dimensions("detection") == {SERVICE_DIMENSION: "detection"}
    with pytest.raises(ValueError, match="unknown metrics service"):
        emitter_dimensions("detector")


def test_metric_math_evaluator():
    nan = np.nan
    series = {"visible": np.array([0.0, 5, 5, nan]), "progress": np.array([nan, nan, 3, 1])}
    stuck = evaluate(
        "IF(visible > 0 AND FILL(progress, 0) == 0, 1, 0)", series, {"visible": 60, "progress": 60}
    )
    np.testing.assert_array_equal(stuck, [0, 1, 0, nan])
    rate = evaluate("100 * FILL(visible, 0) / (FILL(visible, 0) + FILL(progress, 0))", series, {})
    np.testing.assert_array_equal(rate, [nan, 100, 62.5, 0])
    per_minute = evaluate("visible / (PERIOD(visible) / 60)", series, {"visible": 300})
    np.testing.assert_array_equal(per_minute, [0, 1, 1, nan])
    with pytest.raises(ExpressionError, match="unknown series"):
        evaluate("nope + 1", series, {})
    # every expression of the dashboard and the alarms is one the evaluator understands
    for graph in build_dashboard(NAMES, "us-east-1").graphs():
        _evaluate_widget(graph)


def _evaluate_widget(graph: GraphWidget) -> None:
    values = {s.id: np.ones(3) for s in graph.metric_series()}
    periods = dict.fromkeys(values, graph.period)
    for s in graph.series:
        if not isinstance(s, MetricSeries):
            values[s.id] = evaluate(s.expression, values, periods)


def test_weighted_percentile():
    points = [(10.0, 1.0), (20.0, 1.0), (30.0, 2.0)]
    assert weighted_percentile(points, 25) == 10
    assert weighted_percentile(points, 50) == 20
    assert weighted_percentile(points, 99) == 30


def test_dashboard_json_is_json():
    text = put_dashboard_input(build_dashboard(NAMES, "eu-west-1"))["DashboardBody"]
    assert json.loads(text)["widgets"][1]["properties"]["region"] == "eu-west-1"


CHARTING_MODULES = {"dashboard.py", "alarms.py", "widgets.py", "dashboard_render.py"}


def test_every_charted_custom_metric_has_an_emitting_code_path():
    emitted = set()
    for source in [*ROOT.glob("packages/*/src/**/*.py"), *ROOT.glob("dashboards/src/**/*.py")]:
        if source.name in CHARTING_MODULES or source.as_posix().endswith("common/metrics.py"):
            continue
        emitted |= {
            Metric[m]
            for m in re.findall(r"Metric\.([A-Z0-9_]+)", source.read_text())
            if m in Metric.__members__
        }
    ns = NAMES.metrics_namespace
    charted = {Metric(s.name) for s in used_metrics(NAMES) if s.namespace == ns}
    assert not charted - emitted, f"charted but never emitted: {charted - emitted}"
