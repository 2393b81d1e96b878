"""The sweep's frontier and recommendation, the PNG and the `facefleet simulate` command."""

from __future__ import annotations

from pathlib import Path

from facefleet.control.policy import PolicyParams
from facefleet.tools.cli import main
from facefleet.tools.simulate.compare import Metrics, compare
from facefleet.tools.simulate.params import ModelParams
from facefleet.tools.simulate.plot import plot
from facefleet.tools.simulate.sweep import SweepPoint, format_sweep, frontier, recommend, sweep
from facefleet.tools.simulate.trace import generate

FAST = ModelParams(images_per_s=4.0, batch_size=10, seed=1)


def point(cost_per_1000: float, p95: float, name: str) -> SweepPoint:
    metrics = Metrics(name, 1000, cost_per_1000, 1.0, p95 / 2, p95, p95 * 2, p95 * 3, 0, 0.5, 1.0)
    return SweepPoint(PolicyParams(), metrics, (("label", float(len(name))),))


def test_frontier_and_recommendation():
    points = [
        point(1.0, 100, "a"),
        point(0.5, 300, "b"),
        point(0.7, 400, "c"),
        point(0.3, 900, "d"),
    ]
    best = frontier(points)
    assert [p.metrics.setup for p in best] == ["d", "b", "a"]  # c is beaten by b on both
    near, far = recommend(points, target_s=350), recommend(points, target_s=1000)
    assert near is not None and near.metrics.setup == "b"
    assert far is not None and far.metrics.setup == "d"
    assert recommend(points, target_s=50) is None
    assert "no setting meets" in format_sweep(points, target_s=50)


def test_sweep_varies_the_policy_and_finds_a_setting():
    trace = generate(0.5, seed=2)
    grid = {"job_minutes": (5.0, 20.0), "max_array_size": (2, 10)}
    points = sweep(trace, FAST, PolicyParams(images_per_job_minute=120.0), grid=grid)
    assert len(points) == 4
    assert {p.policy.max_array_size for p in points} == {2, 10}
    assert {p.policy.job_capacity for p in points} == {600, 2400}
    assert all(p.metrics.images == trace.images for p in points)
    text = format_sweep(points, target_s=1e9)
    assert "recommended for p95" in text


def test_plot_writes_a_png(tmp_path: Path):
    comparison = compare(generate(0.5, seed=4), ecs_tasks=1, model=FAST)
    out = plot(comparison, tmp_path / "sub" / "sim.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert out.stat().st_size > 10_000


def test_cli_generated_trace_with_sweep_and_plot(tmp_path: Path, capsys):
    png = tmp_path / "out.png"
    saved = tmp_path / "trace.csv"
    code = main(
        [
            "simulate",
            "--days",
            "0.5",
            "--seed",
            "3",
            "--plot",
            str(png),
            "--save-trace",
            str(saved),
            "--sweep",
            "--sweep-job-minutes",
            "5,10",
            "--sweep-array-divisor",
            "1000",
            "--sweep-max-array-size",
            "10",
            "--sweep-cooldown-s",
            "60",
            "--latency-target-s",
            "1e9",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "cost per 1,000 images" in out and "Batch Spot saves" in out
    assert "recommended for p95" in out
    assert png.exists() and saved.exists()
    # The saved trace replays to the same images.
    assert main(["simulate", "--trace", str(saved), "--ecs-tasks", "1"]) == 0
    again = capsys.readouterr().out
    assert (
        again.split("images processed")[1].split()[0] == out.split("images processed")[1].split()[0]
    )
