"""Traces (CSV, generator) and prices (the table, a Spot series, EC2 Spot history)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from facefleet.control.pricing import PriceTable, SpotSeries, spot_history
from facefleet.tools.simulate.cli import history_window
from facefleet.tools.simulate.trace import (
    DAY_S,
    HOUR_S,
    Trace,
    TraceShape,
    generate,
    load_csv,
    write_csv,
)


def test_load_csv_reads_iso_and_epoch_timestamps(tmp_path: Path):
    path = tmp_path / "uploads.csv"
    path.write_text(
        "timestamp,images\n2024-05-01T10:00:00Z,5\n2024-05-01T10:00:30,0\n1714557720,7\n"
    )
    trace = load_csv(path)
    assert trace.offsets_s.tolist() == [0.0, 30.0, 120.0]
    assert trace.counts.tolist() == [5, 0, 7]
    assert trace.images == 12
    assert trace.duration_s == HOUR_S
    assert trace.start_epoch_s == datetime(2024, 5, 1, 10, tzinfo=UTC).timestamp()


def test_load_csv_names_the_bad_row(tmp_path: Path):
    path = tmp_path / "bad.csv"
    path.write_text("timestamp,images\n1,2\nnot-a-time,3\n")
    with pytest.raises(ValueError, match=r"bad\.csv:3"):
        load_csv(path)
    (tmp_path / "nohead.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="'timestamp' and 'images'"):
        load_csv(tmp_path / "nohead.csv")


def test_csv_round_trip(tmp_path: Path):
    trace = generate(0.5, seed=1)
    write_csv(trace, tmp_path / "t.csv")
    again = load_csv(tmp_path / "t.csv")
    assert again.counts.tolist() == trace.counts.tolist()
    assert np.allclose(again.offsets_s, trace.offsets_s - trace.offsets_s[0])


def test_generator_is_seeded():
    a, b, c = generate(2, seed=7), generate(2, seed=7), generate(2, seed=8)
    assert np.array_equal(a.counts, b.counts) and np.array_equal(a.offsets_s, b.offsets_s)
    assert not (len(a.counts) == len(c.counts) and np.array_equal(a.counts, c.counts))
    assert a.duration_s == 2 * DAY_S


def test_generator_daily_cycle_volume_and_quiet_spell():
    shape = TraceShape(bursts_per_day=0.0)
    trace = generate(20, seed=3, shape=shape)
    assert trace.images == pytest.approx(20 * shape.daily_images, rel=0.02)
    hours = (trace.offsets_s / HOUR_S) % 24
    # 1 + 1.5 cos(...) is below zero within about 5.6 h of the 08:00 trough.
    assert not np.any((hours > 5.5) & (hours < 10.5))
    evening = trace.counts[(hours >= 19) & (hours < 21)].sum()
    morning = trace.counts[(hours >= 2) & (hours < 4)].sum()
    assert evening > 3 * morning


def test_generator_bursts_add_bulk_uploads():
    quiet = generate(3, seed=5, shape=TraceShape(bursts_per_day=0.0))
    busy = generate(3, seed=5, shape=TraceShape(bursts_per_day=10.0))
    assert busy.images > quiet.images + 10 * 3 * 500 * 0.5
    assert busy.counts.max() > 100


def test_spot_series_integrates_steps():
    series = SpotSeries((0.0, 3600.0), (0.36, 0.72))
    assert series.cost(0, 3600) == pytest.approx(0.36)
    assert series.cost(1800, 5400) == pytest.approx(0.18 + 0.36)
    assert series.integral(np.array([0.0, 7200.0])).tolist() == pytest.approx([0.0, 1.08])
    assert series.mean_per_h(0, 7200) == pytest.approx(0.54)
    with pytest.raises(ValueError, match="sorted"):
        SpotSeries((10.0, 0.0), (1.0, 1.0))


def test_price_table_names_an_unknown_instance_type():
    assert PriceTable.for_instance("g4dn.xlarge").on_demand_per_h == 0.526
    with pytest.raises(ValueError, match=r"p5\.48xlarge"):
        PriceTable.for_instance("p5.48xlarge")


class _Pages:
    def __init__(self, pages):
        self.pages = pages
        self.kwargs: dict = {}

    def get_paginator(self, name):
        assert name == "describe_spot_price_history"
        return self

    def paginate(self, **kwargs):
        self.kwargs = kwargs
        return iter(self.pages)


def test_spot_history_averages_zones_step_by_step():
    start = datetime(2024, 5, 1, tzinfo=UTC)

    def at(hours, zone, price):
        return {
            "Timestamp": datetime(2024, 5, 1, hours, tzinfo=UTC),
            "AvailabilityZone": zone,
            "SpotPrice": str(price),
        }

    ec2 = _Pages(
        [
            {"SpotPriceHistory": [at(2, "a", 0.30), at(0, "a", 0.20)]},
            {"SpotPriceHistory": [at(0, "b", 0.40), at(5, "b", 0.10)]},
        ]
    )
    series = spot_history(ec2, "g4dn.xlarge", start, datetime(2024, 5, 2, tzinfo=UTC))
    assert ec2.kwargs["InstanceTypes"] == ["g4dn.xlarge"]
    assert series.times_s == (0.0, 7200.0, 18000.0)
    assert series.prices == pytest.approx((0.30, 0.35, 0.20))


def test_spot_history_through_the_ec2_api(env):
    ec2 = env.aws.client("ec2")
    start = datetime(2024, 5, 1, tzinfo=UTC)
    series = spot_history(ec2, "g4dn.xlarge", start, datetime(2024, 5, 8, tzinfo=UTC))
    # moto answers with canned prices: the path works end to end and yields a usable series.
    assert series.prices and all(p >= 0 for p in series.prices)
    assert series.cost(0, 3600) >= 0


def test_history_window_uses_the_traces_own_period_when_ec2_has_it():
    now = datetime(2024, 6, 1, tzinfo=UTC)
    recent = Trace.from_rows([(0.0, 1)], duration_s=DAY_S)
    recent = Trace(
        recent.offsets_s, recent.counts, DAY_S, datetime(2024, 5, 20, tzinfo=UTC).timestamp()
    )
    assert history_window(recent, 7, now) == (
        datetime(2024, 5, 20, tzinfo=UTC),
        datetime(2024, 5, 21, tzinfo=UTC),
    )
    generated = generate(1, seed=1)  # no real start: the last 7 days
    assert history_window(generated, 7, now) == (datetime(2024, 5, 25, tzinfo=UTC), now)


def test_cli_reads_spot_history_from_ec2(env, capsys):
    from facefleet.tools.cli import main

    assert main(["simulate", "--days", "0.25", "--spot-history-days", "2"]) == 0
    assert "Batch Spot saves" in capsys.readouterr().out
