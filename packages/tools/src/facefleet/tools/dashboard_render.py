"""The dashboard as a PNG, drawn from the metrics in CloudWatch (or the local moto server).

Each metric widget becomes one panel at its place in the dashboard's 24-column grid. The series
are fetched with GetMetricData; metric math is evaluated here (the moto server does none) by a
small evaluator of the subset the dashboard uses: + - * /, comparisons, AND/OR, FILL, IF, PERIOD.
The moto server has no percentiles either: with `exact_percentiles=False` (the default against a
local endpoint) p50/p95/p99 are estimated from per-second averages weighted by their sample
counts, and the panel says so.

It lives with the tools, not in `facefleet.dashboards`: only the CLI (`facefleet dashboards render`)
and the demo draw, and matplotlib stays out of the installs that only apply dashboards (flows).
"""

from __future__ import annotations

import ast
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.dates as mdates
import matplotlib.pyplot as plt
import numpy as np

from facefleet.common.aws import AwsTarget
from facefleet.dashboards.widgets import (
    GRID_WIDTH,
    Dashboard,
    GraphWidget,
    MathSeries,
    MetricSeries,
)

Array = np.ndarray[Any, np.dtype[np.float64]]
ROW_INCHES = 0.55
COLUMN_INCHES = 0.75


@dataclass(frozen=True)
class RenderResult:
    path: Path
    panels: int
    titles: tuple[str, ...]


class ExpressionError(ValueError):
    """A metric-math expression uses something the local evaluator does not support."""


# ---- metric math ----------------------------------------------------------------------------


def evaluate(expression: str, series: Mapping[str, Array], periods: Mapping[str, int]) -> Array:
    """Evaluate a CloudWatch metric-math expression over aligned series (NaN = no datapoint)."""
    source = expression.replace(" AND ", " and ").replace(" OR ", " or ")
    try:
        tree = ast.parse(source, mode="eval")
    except SyntaxError as error:
        raise ExpressionError(f"cannot parse metric math {expression!r}: {error}") from error
    length = len(next(iter(series.values()))) if series else 1
    return np.broadcast_to(_eval(tree.body, series, periods, expression), (length,)).astype(float)


def _nan_where(result: Array, *operands: Array) -> Array:
    out = np.asarray(result, dtype=float).copy()
    for operand in operands:
        out[np.isnan(operand)] = np.nan
    return out


_BINARY: dict[type[ast.operator], Callable[[Array, Array], Array]] = {
    ast.Add: np.add,
    ast.Sub: np.subtract,
    ast.Mult: np.multiply,
    ast.Div: np.divide,
}
_COMPARE: dict[type[ast.cmpop], Callable[[Array, Array], Array]] = {
    ast.Gt: np.greater,
    ast.GtE: np.greater_equal,
    ast.Lt: np.less,
    ast.LtE: np.less_equal,
    ast.Eq: np.equal,
    ast.NotEq: np.not_equal,
}


def _eval(
    node: ast.AST, series: Mapping[str, Array], periods: Mapping[str, int], expression: str
) -> Any:
    def sub(n: ast.AST) -> Any:
        return np.asarray(_eval(n, series, periods, expression), dtype=float)

    if isinstance(node, ast.Constant) and isinstance(node.value, int | float):
        return np.float64(node.value)
    if isinstance(node, ast.Name):
        if node.id not in series:
            raise ExpressionError(f"{expression!r} names unknown series {node.id!r}")
        return series[node.id]
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return -sub(node.operand)
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        with np.errstate(divide="ignore", invalid="ignore"):
            result = _BINARY[type(node.op)](sub(node.left), sub(node.right))
        return np.where(np.isinf(result), np.nan, result)
    if isinstance(node, ast.Compare) and len(node.ops) == 1 and type(node.ops[0]) in _COMPARE:
        left, right = sub(node.left), sub(node.comparators[0])
        return _nan_where(
            _COMPARE[type(node.ops[0])](left, right), *np.broadcast_arrays(left, right)
        )
    if isinstance(node, ast.BoolOp):
        values = [sub(v) for v in node.values]
        combine = np.logical_and if isinstance(node.op, ast.And) else np.logical_or
        result = values[0] != 0
        for value in values[1:]:
            result = combine(result, value != 0)
        return _nan_where(result, *np.broadcast_arrays(*values))
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
        name, args = node.func.id.upper(), node.args
        if name == "FILL" and len(args) == 2:
            value, fill = sub(args[0]), sub(args[1])
            return np.where(np.isnan(value), fill, value)
        if name == "IF" and len(args) == 3:
            condition, yes, no = sub(args[0]), sub(args[1]), sub(args[2])
            return _nan_where(np.where(np.nan_to_num(condition) != 0, yes, no), condition)
        if name == "PERIOD" and len(args) == 1 and isinstance(args[0], ast.Name):
            return np.float64(periods[args[0].id])
    raise ExpressionError(f"metric math {expression!r}: unsupported {ast.dump(node)[:60]}")


# ---- fetching ---------------------------------------------------------------------------------


def _grid(start: datetime, end: datetime, period: int) -> list[datetime]:
    first = int(start.timestamp()) // period * period
    last = int(end.timestamp())
    return [datetime.fromtimestamp(t, UTC) for t in range(first, last, period)]


def _is_percentile(stat: str) -> bool:
    return stat.startswith("p") and stat[1:].replace(".", "", 1).isdigit()


def fetch_widget(
    cloudwatch: Any,
    widget: GraphWidget,
    start: datetime,
    end: datetime,
    exact_percentiles: bool,
) -> tuple[list[datetime], dict[str, Array], dict[str, int]]:
    """Every series of `widget` on its period grid (NaN where there is no datapoint).

    GetMetricStatistics, one call per series: the moto server's GetMetricData ignores the
    namespace of a query that has dimensions, which would mix two stacks' metrics."""
    period = widget.period
    grid = _grid(start, end, period)
    values: dict[str, Array] = {}
    periods: dict[str, int] = {}
    for s in widget.metric_series():
        periods[s.id] = period
        if _is_percentile(s.stat) and not exact_percentiles:
            values[s.id] = _approximate_percentile(cloudwatch, s, grid, period, end)
            continue
        key = "ExtendedStatistics" if _is_percentile(s.stat) else "Statistics"
        response = cloudwatch.get_metric_statistics(
            Namespace=s.namespace,
            MetricName=s.name,
            Dimensions=[{"Name": k, "Value": v} for k, v in s.dimensions],
            StartTime=grid[0],
            EndTime=end,
            Period=period,
            **{key: [s.stat]},
        )
        values[s.id] = np.full(len(grid), np.nan)
        for point in response["Datapoints"]:
            value = (point.get("ExtendedStatistics") or point).get(s.stat)
            index = int((point["Timestamp"] - grid[0]).total_seconds()) // period
            if value is not None and 0 <= index < len(grid):
                previous = values[s.id][index]
                values[s.id][index] = (
                    value if np.isnan(previous) else _merge(s.stat, previous, value)
                )
    for math_series in widget.series:
        if isinstance(math_series, MathSeries):
            values[math_series.id] = evaluate(math_series.expression, values, periods)
            periods[math_series.id] = period
    return grid, values, periods


def _merge(stat: str, a: float, b: float) -> float:
    """Two datapoints that fall in one grid cell (moto's buckets are not aligned to the grid)."""
    if stat in ("Sum", "SampleCount"):
        return a + b
    if stat == "Minimum":
        return min(a, b)
    if stat == "Maximum":
        return max(a, b)
    return (a + b) / 2


def _approximate_percentile(
    cloudwatch: Any, s: MetricSeries, grid: list[datetime], period: int, end: datetime
) -> Array:
    q = float(s.stat[1:])
    response = cloudwatch.get_metric_statistics(
        Namespace=s.namespace,
        MetricName=s.name,
        Dimensions=[{"Name": k, "Value": v} for k, v in s.dimensions],
        StartTime=grid[0],
        EndTime=end,
        Period=1,
        Statistics=["Average", "SampleCount"],
    )
    buckets: dict[int, list[tuple[float, float]]] = {}
    for point in response["Datapoints"]:
        index = int((point["Timestamp"] - grid[0]).total_seconds()) // period
        buckets.setdefault(index, []).append((point["Average"], point["SampleCount"]))
    out = np.full(len(grid), np.nan)
    for index, points in buckets.items():
        if 0 <= index < len(grid):
            out[index] = weighted_percentile(points, q)
    return out


def weighted_percentile(points: list[tuple[float, float]], q: float) -> float:
    """The q-th percentile of values with weights: the smallest value covering q% of weight."""
    ordered = sorted(points)
    total = sum(w for _, w in ordered)
    target = total * q / 100
    seen = 0.0
    for value, weight in ordered:
        seen += weight
        if seen >= target:
            return value
    return ordered[-1][0]


# ---- drawing ----------------------------------------------------------------------------------


def render_dashboard(
    dashboard: Dashboard,
    path: Path,
    aws: AwsTarget,
    *,
    start: datetime | None = None,
    end: datetime | None = None,
    exact_percentiles: bool | None = None,
) -> RenderResult:
    """Draw every metric widget of `dashboard` from the metrics of the last 3 hours (default)."""
    end = end or datetime.now(UTC) + timedelta(minutes=1)
    start = start or end - timedelta(hours=3)
    exact = aws.endpoint_url is None if exact_percentiles is None else exact_percentiles
    cloudwatch = aws.client("cloudwatch")
    placed = [w for w in dashboard.body()["widgets"] if w["type"] == "metric"]
    graphs = dashboard.graphs()
    top = min(w["y"] for w in placed)
    rows = max(w["y"] + w["height"] for w in placed) - top
    figure = plt.figure(figsize=(GRID_WIDTH * COLUMN_INCHES, rows * ROW_INCHES + 0.8), dpi=80)
    figure.suptitle(
        f"{dashboard.name}   {start:%Y-%m-%d %H:%M} – {end:%H:%M} UTC",
        fontsize=14,
        fontweight="bold",
    )
    height_in = rows * ROW_INCHES + 0.8
    for graph, box in zip(graphs, placed, strict=True):
        twin = any(
            isinstance(s, MetricSeries | MathSeries) and s.y_axis == "right" for s in graph.series
        )
        left = box["x"] / GRID_WIDTH + 0.035
        width = box["width"] / GRID_WIDTH - (0.085 if twin else 0.06)
        bottom_in = (rows - (box["y"] - top) - box["height"]) * ROW_INCHES + 0.55
        axes = figure.add_axes(
            (left, bottom_in / height_in, width, (box["height"] * ROW_INCHES - 0.85) / height_in)
        )
        grid, values, _ = fetch_widget(cloudwatch, graph, start, end, exact)
        approximate = not exact and any(_is_percentile(s.stat) for s in graph.metric_series())
        _draw(axes, graph, grid, values, approximate)
    path.parent.mkdir(parents=True, exist_ok=True)
    titles = tuple(g.title for g in graphs)
    figure.savefig(
        path,
        format="png",
        metadata={
            "Title": dashboard.name,
            "Description": json.dumps({"panels": list(titles)}),
        },
    )
    plt.close(figure)
    return RenderResult(path, len(graphs), titles)


def _draw(
    axes: Any,
    graph: GraphWidget,
    grid: list[datetime],
    values: Mapping[str, Array],
    approximate: bool,
) -> None:
    title = graph.title + (" (estimated percentiles)" if approximate else "")
    axes.set_title(title, fontsize=10, loc="left")
    shown = [s for s in graph.series if not isinstance(s, MetricSeries) or s.visible]
    if graph.view == "singleValue":
        axes.axis("off")
        for i, s in enumerate(shown):
            finite = values[s.id][~np.isnan(values[s.id])]
            text = f"{finite[-1]:,.2f}" if finite.size else "–"
            axes.text(
                0.5,
                0.62 - 0.3 * i,
                text,
                ha="center",
                va="center",
                fontsize=26,
                transform=axes.transAxes,
            )
            axes.text(
                0.5,
                0.3 - 0.3 * i,
                s.label,
                ha="center",
                fontsize=9,
                color="gray",
                transform=axes.transAxes,
            )
        return
    right = axes.twinx() if any(s.y_axis == "right" for s in shown) else None
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    times = np.array(grid, dtype=object)
    for i, s in enumerate(shown):
        target = right if (s.y_axis == "right" and right is not None) else axes
        # Draw through missing periods, as the console does: sparse metrics stay visible.
        present = ~np.isnan(values[s.id])
        target.plot(
            times[present],
            values[s.id][present],
            color=colors[i % len(colors)],
            marker="." if present.sum() < 30 else None,
            label=s.label,
            linestyle="--" if target is right else "-",
        )
    if grid[-1] > grid[0]:  # a window shorter than the period holds one point: autoscale
        axes.set_xlim(grid[0], grid[-1])
    for line in graph.lines:
        axes.axhline(line.value, color="red", linewidth=0.8, linestyle=":")
        axes.annotate(
            line.label,
            (0, line.value),
            xycoords=("axes fraction", "data"),
            fontsize=7,
            color="red",
            va="bottom",
        )
    axes.set_ylabel(graph.y_label, fontsize=8)
    if right is not None:
        right.set_ylabel(graph.right_label, fontsize=8)
    axes.tick_params(labelsize=7)
    axes.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M"))
    handles, labels = axes.get_legend_handles_labels()
    if right is not None:
        more = right.get_legend_handles_labels()
        handles, labels = handles + more[0], labels + more[1]
    if handles:
        axes.legend(handles, labels, fontsize=7, loc="upper left")
    if all(np.isnan(values[s.id]).all() for s in shown):
        axes.text(
            0.5, 0.5, "no data", ha="center", va="center", color="gray", transform=axes.transAxes
        )
    axes.margins(y=0.15)
