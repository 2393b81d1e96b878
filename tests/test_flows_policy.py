"""The dispatch policy: the plan's queue-depth cases, and properties over any backlog and job
state (never past the vCPU caps, never more capacity than the backlog plus one job's worth)."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from facefleet.common.names import Names
from facefleet.control.policy import (
    DETECTION,
    GROUPING,
    ActiveJob,
    DispatchInputs,
    PolicyParams,
    QueueDepth,
    decide,
    job_request,
)

NAMES = Names()
# The capacity the plan's cases were worked with (1,200 images a job); the default now comes from
# the instance throughput table (tests/test_throughput_bill.py checks that sizing).
PARAMS = PolicyParams(images_per_job_minute=120.0)


def inputs(backlog: int, group: int = 0, active: tuple[ActiveJob, ...] = ()) -> DispatchInputs:
    return DispatchInputs(QueueDepth(backlog), QueueDepth(group), active, now_s=1000.0)


def test_plan_cases() -> None:
    assert decide(inputs(0)).submissions == ()
    small = decide(inputs(10)).submissions
    assert [(s.job_queue, s.array_size) for s in small] == [(NAMES.primary_queue.name, None)]
    large = decide(inputs(20_000), PARAMS).submissions
    assert [(s.job_queue, s.array_size) for s in large] == [(NAMES.secondary_queue.name, 10)]
    assert decide(inputs(1000, active=(ActiveJob(DETECTION, NAMES.primary_queue.name),))).jobs == 0
    grouping = decide(inputs(0, group=5)).submissions
    assert [s.kind for s in grouping] == [GROUPING]


def test_cooldown_blocks_a_second_submission() -> None:
    tick = DispatchInputs(QueueDepth(5000), QueueDepth(0), now_s=1030.0, last_submission_s=1000.0)
    assert decide(tick).submissions == ()
    later = DispatchInputs(QueueDepth(5000), QueueDepth(0), now_s=1061.0, last_submission_s=1000.0)
    assert decide(later).jobs > 0


def test_job_request_uses_array_properties_only_for_arrays() -> None:
    single, array = decide(inputs(10)).submissions[0], decide(inputs(20_000), PARAMS).submissions[0]
    assert "arrayProperties" not in job_request(single, 0.0)
    request = job_request(array, 0.0, 3)
    assert request["arrayProperties"] == {"size": 10}
    assert request["jobDefinition"] == NAMES.detection_job.name
    assert len(request["jobName"]) <= 128


queues = st.sampled_from([NAMES.primary_queue.name, NAMES.secondary_queue.name])
active_jobs = st.lists(
    st.builds(ActiveJob, st.sampled_from([DETECTION, GROUPING]), queues, st.integers(1, 40)),
    max_size=6,
)
policy_params = st.builds(
    PolicyParams,
    images_per_job_minute=st.floats(1, 500),
    job_minutes=st.floats(1, 60),
    small_backlog=st.integers(1, 5000),
    array_divisor=st.integers(1, 5000),
    max_array_size=st.integers(2, 100),
    grouping_messages_per_job=st.integers(1, 5000),
    max_grouping_jobs=st.integers(0, 10),
)
names_caps = st.builds(
    Names, primary_max_vcpus=st.integers(0, 64), secondary_max_vcpus=st.integers(0, 512)
)


def _vcpus(names: Names, jobs: list[ActiveJob], queue: str) -> int:
    per = {DETECTION: names.detection_job.vcpus, GROUPING: names.grouping_job.vcpus}
    return sum(j.size * per[j.kind] for j in jobs if j.job_queue == queue)


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 200_000), st.integers(0, 50_000), active_jobs, policy_params, names_caps)
def test_never_over_submits(
    backlog: int, group: int, active: list[ActiveJob], params: PolicyParams, names: Names
) -> None:
    decision = decide(inputs(backlog, group, tuple(active)), params, names)
    after = active + [ActiveJob(s.kind, s.job_queue, s.jobs) for s in decision.submissions]
    # Never past a compute environment's vCPU cap (unless it already was, then nothing more).
    for queue, environment in zip(names.job_queues, names.compute_environments, strict=True):
        before_q, after_q = _vcpus(names, active, queue.name), _vcpus(names, after, queue.name)
        assert after_q <= max(environment.max_vcpus, before_q)
        if before_q >= environment.max_vcpus:
            assert after_q == before_q
    # Never more new capacity than the uncovered backlog plus one job's worth.
    new_detection = sum(s.jobs for s in decision.submissions if s.kind == DETECTION)
    covered = sum(j.size for j in active if j.kind == DETECTION) * params.job_capacity
    uncovered = max(0, backlog - covered)
    assert new_detection * params.job_capacity < uncovered + params.job_capacity or (
        new_detection == 0
    )
    assert new_detection <= max(1, params.max_array_size)
    new_grouping = sum(s.jobs for s in decision.submissions if s.kind == GROUPING)
    running = sum(j.size for j in active if j.kind == GROUPING)
    group_uncovered = max(0, group - running * params.grouping_messages_per_job)
    assert new_grouping <= math.ceil(group_uncovered / params.grouping_messages_per_job)
    assert running + new_grouping <= max(running, params.max_grouping_jobs)
    # Nothing at all when both queues are covered.
    if uncovered == 0 and group_uncovered == 0:
        assert decision.submissions == ()
    # Arrays always go to the secondary queue and have at least two children.
    for submission in decision.submissions:
        if submission.array_size is not None:
            assert submission.array_size >= 2
            assert submission.job_queue == names.secondary_queue.name
