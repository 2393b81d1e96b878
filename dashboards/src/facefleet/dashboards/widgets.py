"""CloudWatch dashboard widgets as typed Python values that render to the dashboard-body JSON.

A widget is data: its series (metrics and metric-math expressions) and how to draw them. The same
values feed three consumers, so they can never drift apart: the dashboard JSON for PutDashboard,
the metric-name audit in the tests, and the local PNG renderer (`facefleet.tools.dashboard_render`),
which fetches each `MetricSeries` and evaluates each `MathSeries` itself because the moto server
does no metric math.

Every FaceFleet custom metric carries exactly one dimension, `Service` (see `SERVICE_DIMENSION`):
the workers emit with `{"Service": "detection"}` / `{"Service": "grouping"}`, the dispatch flow
with `"dispatch"`, the cutover flow with `"cutover"` and the savings job with `"savings"`. A
widget that names another dimension set would chart nothing, so `emitter_dimensions` is the one
place that builds it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from facefleet.common.metrics import Metric

SERVICE_DIMENSION = "Service"
# The values of the Service dimension, one per emitting process.
DETECTION = "detection"
GROUPING = "grouping"
DISPATCH = "dispatch"
CUTOVER = "cutover"
SAVINGS = "savings"
ROUTER = "router"  # facefleet.control.router.METRICS_SERVICE
SERVICES = (DETECTION, GROUPING, DISPATCH, CUTOVER, SAVINGS, ROUTER)

SQS_NAMESPACE = "AWS/SQS"
EVENTS_NAMESPACE = "AWS/Events"

YAxis = Literal["left", "right"]


def emitter_dimensions(service: str) -> dict[str, str]:
    """The dimensions a `MetricsEmitter` for `service` must use for the dashboard to see it."""
    if service not in SERVICES:
        raise ValueError(f"unknown metrics service {service!r}: expected one of {SERVICES}")
    return {SERVICE_DIMENSION: service}


@dataclass(frozen=True)
class MetricSeries:
    """One metric statistic: namespace, name, dimensions, stat (Sum, Maximum, p95, ...)."""

    id: str
    namespace: str
    name: str
    dimensions: tuple[tuple[str, str], ...]
    stat: str
    label: str
    period: int | None = None  # None: the widget's period
    visible: bool = True
    y_axis: YAxis = "left"

    @classmethod
    def custom(
        cls,
        id: str,
        namespace: str,
        metric: Metric,
        service: str,
        stat: str,
        label: str,
        **options: Any,
    ) -> MetricSeries:
        dimensions = tuple(sorted(emitter_dimensions(service).items()))
        return cls(id, namespace, str(metric), dimensions, stat, label, **options)

    def to_json(self) -> list[Any]:
        row: list[Any] = [self.namespace, self.name]
        for key, value in self.dimensions:
            row += [key, value]
        options: dict[str, Any] = {"id": self.id, "stat": self.stat, "label": self.label}
        if self.period is not None:
            options["period"] = self.period
        if not self.visible:
            options["visible"] = False
        if self.y_axis != "left":
            options["yAxis"] = self.y_axis
        return [*row, options]


@dataclass(frozen=True)
class MathSeries:
    """A metric-math expression over other series' ids (e.g. `100 * ok / (ok + failed)`)."""

    id: str
    expression: str
    label: str
    y_axis: YAxis = "left"

    def to_json(self) -> list[Any]:
        options: dict[str, Any] = {
            "id": self.id,
            "expression": self.expression,
            "label": self.label,
        }
        if self.y_axis != "left":
            options["yAxis"] = self.y_axis
        return [options]


Series = MetricSeries | MathSeries


@dataclass(frozen=True)
class HorizontalLine:
    """A threshold drawn across a graph (an SLO, an alarm threshold)."""

    label: str
    value: float


@dataclass(frozen=True)
class GraphWidget:
    """A `metric` widget: a time series graph, or a single number with view='singleValue'."""

    title: str
    series: tuple[Series, ...]
    period: int = 60
    view: Literal["timeSeries", "singleValue"] = "timeSeries"
    stacked: bool = False
    y_label: str = ""
    right_label: str = ""
    lines: tuple[HorizontalLine, ...] = ()
    width: int = 12
    height: int = 6

    def __post_init__(self) -> None:
        ids = [s.id for s in self.series]
        if len(set(ids)) != len(ids):
            raise ValueError(f"widget {self.title!r}: duplicate series ids {ids}")
        for s in self.series:
            if not s.id[:1].islower():
                raise ValueError(f"widget {self.title!r}: series id {s.id!r} must start lowercase")

    def metric_series(self) -> Iterator[MetricSeries]:
        return (s for s in self.series if isinstance(s, MetricSeries))

    def properties(self, region: str) -> dict[str, Any]:
        props: dict[str, Any] = {
            "title": self.title,
            "region": region,
            "view": self.view,
            "stacked": self.stacked,
            "period": self.period,
            "metrics": [s.to_json() for s in self.series],
        }
        if self.view == "timeSeries":
            y_axis: dict[str, Any] = {"left": {"label": self.y_label, "showUnits": False}}
            if any(s.y_axis == "right" for s in self.series):
                y_axis["right"] = {"label": self.right_label, "showUnits": False}
            props["yAxis"] = y_axis
        if self.lines:
            props["annotations"] = {
                "horizontal": [{"label": line.label, "value": line.value} for line in self.lines]
            }
        return props

    def to_json(self, x: int, y: int, region: str) -> dict[str, Any]:
        return {
            "type": "metric",
            "x": x,
            "y": y,
            "width": self.width,
            "height": self.height,
            "properties": self.properties(region),
        }


@dataclass(frozen=True)
class TextWidget:
    markdown: str
    width: int = 24
    height: int = 2

    def to_json(self, x: int, y: int, region: str) -> dict[str, Any]:
        return {
            "type": "text",
            "x": x,
            "y": y,
            "width": self.width,
            "height": self.height,
            "properties": {"markdown": self.markdown},
        }


@dataclass(frozen=True)
class AlarmStatusWidget:
    """The state of each alarm, by ARN (needs the account id, so only after the alarms exist)."""

    title: str
    alarm_arns: tuple[str, ...]
    width: int = 24
    height: int = 3

    def to_json(self, x: int, y: int, region: str) -> dict[str, Any]:
        return {
            "type": "alarm",
            "x": x,
            "y": y,
            "width": self.width,
            "height": self.height,
            "properties": {"title": self.title, "alarms": list(self.alarm_arns)},
        }


Widget = GraphWidget | TextWidget | AlarmStatusWidget

GRID_WIDTH = 24


@dataclass(frozen=True)
class Dashboard:
    name: str
    widgets: tuple[Widget, ...]
    region: str
    start: str = "-PT3H"
    period_override: str = "auto"
    extra: Mapping[str, Any] = field(default_factory=dict)

    def graphs(self) -> list[GraphWidget]:
        return [w for w in self.widgets if isinstance(w, GraphWidget)]

    def body(self) -> dict[str, Any]:
        """The dashboard body: widgets flowed left to right into CloudWatch's 24-column grid."""
        return {
            "start": self.start,
            "periodOverride": self.period_override,
            "widgets": list(_layout(self.widgets, self.region)),
            **self.extra,
        }


def _layout(widgets: Sequence[Widget], region: str) -> Iterator[dict[str, Any]]:
    x = y = row_height = 0
    for widget in widgets:
        if widget.width > GRID_WIDTH:
            raise ValueError(f"widget wider than the grid: {widget}")
        if x + widget.width > GRID_WIDTH:
            x, y, row_height = 0, y + row_height, 0
        yield widget.to_json(x, y, region)
        x += widget.width
        row_height = max(row_height, widget.height)
