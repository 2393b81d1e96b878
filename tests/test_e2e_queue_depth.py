"""End to end, queue depth to Batch submissions with the production policy (DEFAULT
PolicyParams): real backlogs of 0, 10, 1,000 and 20,000 messages on the indexing queue get exactly
the jobs `policy.decide` defines (job queue, job definition, array size, as moto records them),
and later ticks do not over-submit while those jobs run (as local processes that sleep).

The backlogs are created through redrive fan-in (`e2e_support.fill_backlog`): moto's
SendMessage costs O(queue length), so sending 20,000 messages to one queue would take an hour or
more; its dead-letter move is O(1). Measured here (two cores shared with other work): 1,000 messages
in ~12 s; 20,000 in ~5 min (the whole case ~6 min), so that case is `slow`; 0, 10 and 1,000 run in
CI.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import pytest

from facefleet.common.names import Names
from facefleet.control.policy import PolicyParams
from facefleet.embedded.batch import LocalExecutor
from facefleet.flows.dispatch import dispatch
from tests.e2e_support import fill_backlog, queue_counts
from tests.flows_support import (
    batch_jobs,
    create_batch,
    create_queues,
    prefect_harness,
    use_queues,
)

# Stand-in for the workers: the job stays active (covers its share of the backlog) and does nothing.
SLEEP = ("sleep", "300")
DEFAULT = PolicyParams()


@pytest.fixture(scope="module", autouse=True)
def harness() -> None:
    prefect_harness()


@pytest.fixture
def executor(tmp_path: Path) -> Iterator[LocalExecutor]:
    local = LocalExecutor(tmp_path / "batch")
    yield local
    local.terminate(grace=3)


def expected_first(names: Names, backlog: int) -> list[tuple[str, str, int | None]]:
    """What the policy's rules say for a first tick, spelled out from its docstring."""
    if backlog == 0:
        return []
    if backlog <= DEFAULT.small_backlog:  # one job on the primary queue
        return [(names.detection_job.name, names.primary_queue.name, None)]
    size = min(
        max(2, min(backlog // DEFAULT.array_divisor, DEFAULT.max_array_size)),
        -(-backlog // DEFAULT.job_capacity),
    )
    return [(names.detection_job.name, names.secondary_queue.name, size)]


def tick(env, executor: LocalExecutor, **policy: float):
    return dispatch(
        names=asdict(env.names),
        mode="local",
        policy=policy,
        region=env.region,
        endpoint_url=env.endpoint_url,
        local_batch_dir=str(executor.state_dir),
    )


def recorded(env) -> list[tuple[str, str, int | None]]:
    jobs = batch_jobs(env.names, env.aws)
    return sorted((j["definition"], j["queue"], j["array_size"]) for j in jobs)


@pytest.mark.parametrize(
    "backlog",
    [
        0,
        10,
        1000,
        pytest.param(20_000, marks=[pytest.mark.slow, pytest.mark.timeout(1800)], id="20000"),
    ],
)
def test_backlog_gets_exactly_the_policys_jobs(env, executor, monkeypatch, backlog: int) -> None:
    names = env.names
    create_batch(names, env.aws, command=SLEEP)
    urls = use_queues(monkeypatch, names, create_queues(names, env.aws))
    sqs = env.aws.client("sqs")
    indexing = urls[names.indexing_queue]
    arn = sqs.get_queue_attributes(QueueUrl=indexing, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    try:
        if backlog:
            seconds = fill_backlog(lambda: env.aws.client("sqs"), arn, backlog)
            print(f"{backlog} messages on the indexing queue in {seconds:.1f} s")
        assert queue_counts(sqs, indexing) == (backlog, 0)

        first = tick(env, executor)
        expected = expected_first(names, backlog)
        assert recorded(env) == sorted(expected), first["reasons"]
        assert first["jobs"] == sum(size or 1 for *_, size in expected)
        assert sum(job.size for job in executor.active_jobs()) == first["jobs"]

        # Within the cool-down: nothing more, whatever the backlog.
        second = tick(env, executor)
        assert second["submissions"] == []
        assert recorded(env) == sorted(expected)

        # Past the cool-down, with the jobs still running: only the uncovered part, if any.
        covered = first["jobs"] * DEFAULT.job_capacity
        third = tick(env, executor, cooldown_s=0)
        if backlog <= covered:
            assert third["submissions"] == [], third["reasons"]
        else:
            uncovered = backlog - covered
            top_up = min(
                max(2, min(uncovered // DEFAULT.array_divisor, DEFAULT.max_array_size)),
                -(-uncovered // DEFAULT.job_capacity),
            )
            assert [s["array_size"] for s in third["submissions"]] == [top_up]
            assert [s["job_queue"] for s in third["submissions"]] == [names.secondary_queue.name]
            # Now the running children cover the whole backlog: the next tick adds nothing.
            fourth = tick(env, executor, cooldown_s=0)
            assert fourth["submissions"] == [], fourth["reasons"]
            assert "covered" in fourth["reasons"][0]
        active = sum(job.size for job in executor.active_jobs())
        assert active * DEFAULT.job_capacity < backlog + DEFAULT.job_capacity
        assert queue_counts(sqs, indexing) == (backlog, 0)  # nothing consumed by the stand-ins
    finally:
        executor.terminate(grace=3)
        for url in urls.values():
            sqs.delete_queue(QueueUrl=url)
