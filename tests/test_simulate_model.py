"""The simulator against hand-computed cases, and conservation under any trace and settings."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from facefleet.control import policy as dispatch
from facefleet.control.policy import PolicyParams
from facefleet.control.pricing import PriceTable, SpotSeries
from facefleet.tools.simulate.compare import batch_metrics, compare, ecs_metrics
from facefleet.tools.simulate.model import simulate_batch, simulate_ecs
from facefleet.tools.simulate.params import ModelParams
from facefleet.tools.simulate.results import RunResult, weighted_percentile
from facefleet.tools.simulate.trace import Trace

SPOT = 0.2104
ON_DEMAND = 0.526
PRICES = PriceTable(on_demand_per_h=ON_DEMAND, spot=SpotSeries.constant(SPOT))
# Deterministic: fixed cold start, no interruptions, 1 image/s.
EXACT = ModelParams(
    images_per_s=1.0,
    batch_size=1,
    tick_s=60.0,
    cold_start_s=(300.0, 300.0),
    warm_start_s=30.0,
    idle_exit_s=60.0,
    scale_down_s=300.0,
    interruptions_per_hour=0.0,
)


# The policy these worked examples were computed with: 120 images a job-minute, capacity 1,200 a
# job (the default now comes from the instance throughput table and moves with its figures).
POLICY = PolicyParams(images_per_job_minute=120.0)


def nearest_rank(latencies: list[float], percentile: float) -> float:
    ordered = sorted(latencies)
    return ordered[math.ceil(percentile / 100 * len(ordered)) - 1]


def per_image_latencies(run: RunResult) -> list[float]:
    return list(np.repeat(run.latencies_s, run.done_count))


def assert_conserved(run: RunResult) -> None:
    """Every image processed exactly once, never before it arrived."""
    trace = run.trace
    processed = np.bincount(run.done_lot, weights=run.done_count, minlength=len(trace.counts))
    assert np.array_equal(processed.astype(np.int64), trace.counts)
    assert np.all(run.done_count > 0)
    arrivals = trace.offsets_s[run.done_lot]
    assert np.all(run.done_s >= arrivals)
    assert np.all(run.instance_end_s >= run.instance_start_s)


def test_no_traffic_costs_nothing_on_batch_and_full_time_on_ecs():
    day = Trace.from_rows([], duration_s=86_400.0)
    comparison = compare(day, ecs_tasks=2, model=EXACT, prices=PRICES)
    assert comparison.batch.cost == 0.0
    assert comparison.batch.instance_hours == 0.0
    assert comparison.batch.zero_share == 1.0
    assert comparison.batch.jobs == 0
    assert comparison.ecs.cost == pytest.approx(2 * ON_DEMAND * 24)
    assert comparison.ecs.instance_hours == pytest.approx(48.0)
    assert comparison.ecs.zero_share == 0.0


def constant_stream() -> Trace:
    # One image every 10 s for an hour.
    return Trace.from_rows([(10.0 * k, 1) for k in range(360)], duration_s=3600.0)


def test_constant_stream_on_ecs():
    run = simulate_ecs(constant_stream(), tasks=1, model=EXACT)
    assert_conserved(run)
    metrics = ecs_metrics(run, PRICES)
    # The worker is always idle when an image arrives: 1 s each.
    assert set(per_image_latencies(run)) == {1.0}
    assert metrics.cost == pytest.approx(ON_DEMAND)
    assert metrics.cost_per_1000 == pytest.approx(ON_DEMAND / 360 * 1000)
    assert metrics.peak_backlog == 1


def test_constant_stream_on_batch():
    run = simulate_batch(constant_stream(), EXACT, POLICY)
    assert_conserved(run)
    # The tick at 0 sees one image: one job on primary; its instance is ready at 300 with images
    # 0..30 waiting. Image k (k <= 33) is done at 301 + k; from 34 on the job keeps up (1 s).
    expected = [301.0 + k - 10.0 * k if k <= 33 else 1.0 for k in range(360)]
    assert sorted(per_image_latencies(run)) == sorted(expected)
    assert run.jobs_submitted == 1
    # Last image done at 3591, job idles out at 3651, Batch scales the instance in at 3951.
    assert run.instance_start_s.tolist() == [0.0]
    assert run.instance_end_s.tolist() == [3951.0]
    metrics = batch_metrics(run, PRICES)
    assert metrics.cost == pytest.approx(3951 / 3600 * SPOT)
    assert metrics.p50_s == 1.0
    for q in (95.0, 99.0):
        assert metrics.latency(q) == nearest_rank(expected, q)
    assert metrics.p95_s == 4 + 9 * 15
    assert metrics.peak_backlog == 31
    assert metrics.zero_share == 0.0


def single_burst() -> Trace:
    return Trace.from_rows([(0.0, 10_000)], duration_s=3600.0)


def test_single_burst_on_batch():
    model = replace(EXACT, batch_size=10)
    run = simulate_batch(single_burst(), model, POLICY)
    assert_conserved(run)
    # 10,000 waiting, capacity 1,200 a job: 9 needed; array size min(10,000 // 1,000, 10) = 10,
    # capped at the 9 needed. Later ticks see them covered (9 x 1,200 >= 10,000).
    assert run.jobs_submitted == 9 and run.submissions == 1
    # 1,000 batches of 10 s over 9 jobs from t=300: round j done at 310 + 10 j (90 images),
    # the last batch (10 images) at 1420.
    expected = [310.0 + 10 * j for j in range(111) for _ in range(90)] + [1420.0] * 10
    assert sorted(per_image_latencies(run)) == expected
    # Eight jobs idle at 1410, one at 1420; exit after 60 s; instances scaled in 300 s later.
    assert sorted(run.instance_end_s.tolist()) == [1770.0] * 8 + [1780.0]
    metrics = batch_metrics(run, PRICES)
    assert metrics.instance_hours == pytest.approx((8 * 1770 + 1780) / 3600)
    assert metrics.cost == pytest.approx((8 * 1770 + 1780) / 3600 * SPOT)
    assert metrics.p50_s == 310 + 10 * 55
    assert metrics.p99_s == 310 + 10 * 109
    assert metrics.peak_backlog == 10_000
    assert metrics.zero_share == pytest.approx(1 - 1780 / 3600)


def test_single_burst_on_ecs():
    model = replace(EXACT, batch_size=10)
    run = simulate_ecs(single_burst(), tasks=2, model=model)
    assert_conserved(run)
    expected = [10.0 * (j + 1) for j in range(500) for _ in range(20)]
    assert sorted(per_image_latencies(run)) == expected
    metrics = ecs_metrics(run, PRICES)
    # Draining takes 5,000 s, past the hour: the always-on tasks are billed until then.
    assert metrics.cost == pytest.approx(2 * ON_DEMAND * 5000 / 3600)


def test_vcpu_cap_holds_back_jobs():
    # A tiny per-job capacity asks for many jobs; the secondary environment holds 64 instances.
    policy = PolicyParams(
        images_per_job_minute=1,
        job_minutes=1,
        array_divisor=1,
        max_array_size=500,
        small_backlog=0,
        cooldown_s=0,
    )
    run = simulate_batch(single_burst(), EXACT, policy)
    assert_conserved(run)
    assert run.timeline_instances.max() <= 64 + 4


def test_interrupted_work_returns_to_the_queue_and_jobs_retry():
    model = replace(EXACT, batch_size=10, interruptions_per_hour=6.0, seed=3)
    run = simulate_batch(single_burst(), model, POLICY)
    assert_conserved(run)
    assert run.interruptions > 0 and run.retries > 0
    # Interrupted instances are billed up to the interruption, retried jobs get new ones.
    assert len(run.instance_start_s) > run.jobs_submitted


def test_exhausted_attempts_fail_and_the_policy_resubmits():
    model = replace(EXACT, batch_size=10, interruptions_per_hour=30.0, attempts=1, seed=5)
    run = simulate_batch(single_burst(), model, POLICY)
    assert_conserved(run)
    assert run.failed_jobs > 0 and run.submissions > 1


def test_simulator_runs_the_policy_module(monkeypatch):
    calls = []
    real = dispatch.decide

    def spy(inputs, params, names):
        calls.append(inputs)
        return real(inputs, params, names)

    monkeypatch.setattr(dispatch, "decide", spy)
    simulate_batch(constant_stream(), EXACT, POLICY)
    assert calls and calls[0].indexing.visible == 1 and calls[0].now_s == 0.0
    assert calls[1].active[0].job_queue == "face-recognition-primary-queue"


def test_weighted_percentile_is_nearest_rank():
    values = np.array([3.0, 1.0, 2.0])
    weights = np.array([1, 2, 7])
    assert weighted_percentile(values, weights, 20) == 1.0
    assert weighted_percentile(values, weights, 21) == 2.0
    assert weighted_percentile(values, weights, 95) == 3.0
    assert math.isnan(weighted_percentile(np.zeros(0), np.zeros(0, np.int64), 50))


rows = st.lists(
    st.tuples(st.integers(0, 7200).map(float), st.integers(0, 60)), min_size=0, max_size=25
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rows=rows,
    images_per_s=st.sampled_from([0.5, 2.0, 10.0]),
    batch_size=st.integers(1, 10),
    interruptions=st.sampled_from([0.0, 2.0, 10.0]),
    attempts=st.integers(1, 5),
    return_delay=st.sampled_from([0.0, 120.0]),
    cold=st.tuples(st.integers(0, 200), st.integers(0, 200)).map(sorted),
    capacity=st.integers(1, 50),
    divisor=st.integers(1, 40),
    seed=st.integers(0, 2**16),
)
def test_every_image_processed_exactly_once_never_early(
    rows,
    images_per_s,
    batch_size,
    interruptions,
    attempts,
    return_delay,
    cold,
    capacity,
    divisor,
    seed,
):
    trace = Trace.from_rows(rows, duration_s=7200.0)
    model = ModelParams(
        images_per_s=images_per_s,
        batch_size=batch_size,
        interruptions_per_hour=interruptions,
        attempts=attempts,
        return_delay_s=return_delay,
        cold_start_s=(cold[0], cold[1]),
        seed=seed,
        tick_s=60.0,
        idle_exit_s=30.0,
        scale_down_s=60.0,
    )
    policy = PolicyParams(
        images_per_job_minute=capacity,
        job_minutes=1,
        small_backlog=20,
        array_divisor=divisor,
        max_array_size=8,
        cooldown_s=60.0,
    )
    run = simulate_batch(trace, model, policy)
    assert_conserved(run)
    assert run.images == trace.images
    # Completions only come from work done: at least one image's processing time after arrival.
    arrivals = trace.offsets_s[run.done_lot]
    assert np.all(run.done_s >= arrivals + 1.0 / images_per_s - 1e-9)
    ecs = simulate_ecs(trace, 2, model)
    assert_conserved(ecs)
