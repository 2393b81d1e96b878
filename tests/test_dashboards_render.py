"""The dashboard drawn as a PNG from metrics in the moto server."""

from __future__ import annotations

import dataclasses
import json
import struct
import zlib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from facefleet.common.metrics import Metric
from facefleet.common.names import Names
from facefleet.dashboards.dashboard import build_dashboard
from facefleet.tools.cli import main
from facefleet.tools.dashboard_render import fetch_widget, render_dashboard

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_text(path: Path) -> tuple[tuple[int, int], dict[str, str]]:
    """(width, height) and the tEXt/zTXt chunks of a PNG."""
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE)
    offset, size, text = 8, (0, 0), {}
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        kind = data[offset + 4 : offset + 8]
        body = data[offset + 8 : offset + 8 + length]
        if kind == b"IHDR":
            size = struct.unpack(">II", body[:8])
        elif kind == b"tEXt":
            key, value = body.split(b"\0", 1)
            text[key.decode()] = value.decode("latin-1")
        elif kind == b"zTXt":
            key, rest = body.split(b"\0", 1)
            text[key.decode()] = zlib.decompress(rest[1:]).decode("latin-1")
        offset += 12 + length
    return size, text


@pytest.fixture
def names(env) -> Names:
    # A namespace of its own: metrics cannot be deleted, and other tests put the same names.
    return dataclasses.replace(env.names, metrics_namespace=f"FaceFleet-{env.namespace}")


def _put(env, names: Names, metric: Metric, service: str, values: list[float]) -> None:
    cloudwatch = env.aws.client("cloudwatch")
    cloudwatch.put_metric_data(
        Namespace=names.metrics_namespace,
        MetricData=[
            {
                "MetricName": str(metric),
                "Dimensions": [{"Name": "Service", "Value": service}],
                "Value": v,
            }
            for v in values
        ],
    )


def test_render_writes_a_png_with_one_panel_per_metric_widget(env, names, tmp_path):
    _put(env, names, Metric.IMAGES_PROCESSED, "detection", [1.0] * 20)
    _put(env, names, Metric.IMAGES_FAILED, "detection", [1.0] * 5)
    _put(env, names, Metric.PROCESSING_TIME, "detection", [float(v) for v in range(100, 300, 10)])
    _put(env, names, Metric.CUTOVER_WEIGHT, "cutover", [25.0])
    dashboard = build_dashboard(names, env.region)
    result = render_dashboard(dashboard, tmp_path / "dash.png", env.aws)
    (width, height), text = png_text(result.path)
    assert result.path.stat().st_size > 10_000
    assert width > 1000 and height > 500
    assert result.panels == len(dashboard.graphs()) == 15
    assert json.loads(text["Description"])["panels"] == [g.title for g in dashboard.graphs()]


def test_widget_series_come_from_the_server_and_math_is_evaluated(env, names):
    _put(env, names, Metric.IMAGES_PROCESSED, "detection", [1.0] * 6)
    _put(env, names, Metric.IMAGES_FAILED, "detection", [1.0, 1.0])
    graphs = {g.title: g for g in build_dashboard(names, env.region).graphs()}
    cloudwatch = env.aws.client("cloudwatch")
    end = datetime.now(UTC) + timedelta(minutes=1)
    _, values, _ = fetch_widget(
        cloudwatch,
        graphs["Images: processed, failed, success rate"],
        end - timedelta(hours=1),
        end,
        exact_percentiles=False,
    )
    assert np.nansum(values["ok"]) == 6 and np.nansum(values["failed"]) == 2
    assert np.nanmax(values["rate"]) == 75
    _, latency, _ = fetch_widget(
        cloudwatch,
        graphs["Processing time per image"],
        end - timedelta(hours=1),
        end,
        exact_percentiles=False,
    )
    assert all(np.isnan(latency[p]).all() for p in ("p50", "p95", "p99"))  # none emitted yet


def test_cli_render(env, names, tmp_path, capsys):
    out = tmp_path / "cli.png"
    code = main(
        [
            "dashboards",
            "render",
            "--prefix",
            names.prefix,
            "--namespace",
            names.metrics_namespace,
            "--out",
            str(out),
            "--hours",
            "1",
        ]
    )
    assert code == 0
    assert "(15 panels)" in capsys.readouterr().out
    assert out.read_bytes().startswith(PNG_SIGNATURE)
