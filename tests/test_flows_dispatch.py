"""The dispatch flow and the fallback Lambda on the moto server: queue-depth cases submit exactly
what the policy says, the local executor's running jobs count as active, and the Lambda decides
the same as the flow for the same state."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import asdict, replace
from pathlib import Path

import pytest

from facefleet.common.names import Names
from facefleet.control import observe
from facefleet.control.lambda_dispatch import handler
from facefleet.control.policy import PolicyParams, decide
from facefleet.embedded.batch import LocalExecutor
from facefleet.flows.dispatch import artifact_key, dispatch
from tests.flows_support import (
    SLEEP,
    batch_jobs,
    create_batch,
    create_queues,
    fill,
    prefect_harness,
    use_queues,
)


@pytest.fixture(scope="module", autouse=True)
def harness() -> None:
    prefect_harness()


@pytest.fixture
def stack(env, monkeypatch):  # type: ignore[no-untyped-def]
    create_batch(env.names, env.aws)
    return use_queues(monkeypatch, env.names, create_queues(env.names, env.aws))


def names_param(names: Names) -> dict[str, object]:
    return asdict(names)


# The policy scaled down 100x (a job drains 10 messages, an array child per 10 waiting): moto's
# SQS slows down with every message a queue holds, so real 1,000-message backlogs take minutes
# to create; the decision logic is the same at any scale (the policy tests cover the defaults).
SCALED = {
    "images_per_job_minute": 1.0,
    "job_minutes": 10.0,
    "small_backlog": 10,
    "array_divisor": 10,
    "max_array_size": 10,
}
SCALED_PARAMS = PolicyParams(**SCALED)  # type: ignore[arg-type]


def run(env, names: Names | None = None, **kwargs):  # type: ignore[no-untyped-def]
    policy = {**SCALED, **kwargs.pop("policy", {})}
    return dispatch(
        names=names_param(names or env.names),
        mode=kwargs.pop("mode", "aws"),
        policy=policy,
        region=env.region,
        endpoint_url=env.endpoint_url,
        **kwargs,
    )


def test_empty_queues_submit_nothing(env, stack) -> None:
    result = run(env)
    assert result["submissions"] == []
    assert batch_jobs(env.names, env.aws) == []


def test_small_backlog_one_job_on_primary_and_grouping(env, stack, monkeypatch) -> None:
    names = env.names
    fill(stack[names.indexing_queue], 5, env.aws)
    fill(stack[names.group_face_queue], 3, env.aws)
    monkeypatch.setenv("METRICS_TO_CLOUDWATCH", "true")
    result = run(env)
    jobs = sorted(batch_jobs(names, env.aws), key=lambda j: j["definition"])
    assert [(j["definition"], j["queue"], j["array_size"]) for j in jobs] == [
        (names.grouping_job.name, names.primary_queue.name, None),
        (names.detection_job.name, names.primary_queue.name, None),
    ]
    assert result["jobs"] == 2 and len(result["job_ids"]) == 2
    # The metric reached CloudWatch with the dashboards' dimension.
    cloudwatch = env.aws.client("cloudwatch")
    end = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=1)
    points = cloudwatch.get_metric_statistics(
        Namespace=names.metrics_namespace,
        MetricName="JobsSubmitted",
        Dimensions=[{"Name": "Service", "Value": "dispatch"}],
        StartTime=end - dt.timedelta(minutes=10),
        EndTime=end,
        Period=600,
        Statistics=["Sum"],
    )["Datapoints"]
    assert sum(p["Sum"] for p in points) >= 2
    # A second tick inside the cool-down submits nothing more.
    assert run(env)["submissions"] == []
    assert len(batch_jobs(names, env.aws)) == 2


def test_large_backlog_array_on_secondary(env, stack) -> None:
    names = env.names
    fill(stack[names.indexing_queue], 50, env.aws)
    result = run(env)
    jobs = batch_jobs(names, env.aws)
    # min(50 // 10, 10) = 5 children, and ceil(50 / 10) = 5 are needed.
    assert [(j["queue"], j["array_size"]) for j in jobs] == [(names.secondary_queue.name, 5)]
    assert result["jobs"] == 5
    _assert_artifact(names)


def _assert_artifact(names: Names) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as prefect_client:
        artifacts = prefect_client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[artifact_key(names)]))
        )
    assert artifacts and "array size" in str(artifacts[0].data)


@pytest.fixture
def executor(tmp_path: Path) -> Iterator[LocalExecutor]:
    local = LocalExecutor(tmp_path / "batch")
    yield local
    local.terminate(grace=3)


def test_backlog_already_covered_by_running_local_jobs(env, executor, monkeypatch) -> None:
    names = env.names
    create_batch(names, env.aws, command=SLEEP)
    urls = use_queues(monkeypatch, names, create_queues(names, env.aws))
    fill(urls[names.indexing_queue], 8, env.aws)
    no_cooldown = {"cooldown_s": 0}
    first = run(env, mode="local", policy=no_cooldown, local_batch_dir=str(executor.state_dir))
    assert first["jobs"] == 1
    assert [j.size for j in executor.active_jobs()] == [1]
    # moto already says SUCCEEDED; the running local process is what covers the backlog.
    second = run(env, mode="local", policy=no_cooldown, local_batch_dir=str(executor.state_dir))
    assert second["submissions"] == []
    assert "covered" in second["reasons"][0]
    assert len(batch_jobs(names, env.aws)) == 1


def test_vcpu_cap_is_never_exceeded(env, executor, monkeypatch) -> None:
    # One job fits the primary environment, two the secondary.
    names = replace(
        env.names,
        primary_max_vcpus=4,
        secondary_max_vcpus=8,
    )
    create_batch(names, env.aws, command=SLEEP)
    urls = use_queues(monkeypatch, names, create_queues(names, env.aws))
    fill(urls[names.indexing_queue], 50, env.aws)
    ticks = [
        run(
            env,
            names,
            mode="local",
            policy={"cooldown_s": 0},
            local_batch_dir=str(executor.state_dir),
        )
        for _ in range(3)
    ]
    assert [t["jobs"] for t in ticks] == [2, 1, 0]
    assert "vCPU limit" in ticks[2]["reasons"][0]
    jobs = batch_jobs(names, env.aws)
    assert sorted((j["queue"], j["array_size"] or 1) for j in jobs) == [
        (names.primary_queue.name, 1),
        (names.secondary_queue.name, 2),
    ]
    assert sum(j.size for j in executor.active_jobs()) == 3


def test_lambda_decides_like_the_flow(env, stack, monkeypatch) -> None:
    names = env.names
    fill(stack[names.indexing_queue], 25, env.aws)
    fill(stack[names.group_face_queue], 1, env.aws)
    urls = observe.QueueUrls(stack[names.indexing_queue], stack[names.group_face_queue])
    expected = decide(observe.observe(names, env.aws, now_s=0.0, urls=urls), SCALED_PARAMS, names)
    assert expected.jobs == 3  # an array of 2 and one grouping job
    monkeypatch.setenv("FACEFLEET_PREFIX", names.prefix)
    for key, value in SCALED.items():
        monkeypatch.setenv(f"POLICY_{key.upper()}", str(value))
    monkeypatch.setenv("FACEFLEET_GROUPING_PREFIX", names.grouping_prefix)
    from_lambda = handler({}, None)
    # Forget the Lambda's cool-down; its jobs are SUCCEEDED in moto, so the state is the same.
    env.aws.client("ssm").delete_parameter(Name=observe.state_parameter(names))
    from_flow = run(env)
    assert from_lambda["submissions"] == from_flow["submissions"]
    assert from_lambda["submissions"] == [asdict(s) for s in expected.submissions]
    assert len(batch_jobs(names, env.aws)) == 2 * len(expected.submissions)


def test_the_served_production_dispatch_runs_a_tick_in_the_serving_process(env, stack) -> None:
    """The stack's dispatch service runs `python -m facefleet.flows.deployments serve-production`
    (template/flows_runtime.py): `prefect deployment run dispatch/production` is executed by that
    process (no work pool, no task per tick) and submits what `policy.decide` says. A
    registration left on the ECS pool by an older stack is taken off it (no race for runs)."""
    import os
    import subprocess
    import sys

    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL

    from facefleet.flows.production import (
        ProductionRuntime,
        ensure_production_pool,
        serve_production_command,
    )
    from tests.e2e_support import wait_until

    names = env.names
    fill(stack[names.indexing_queue], 5, env.aws)
    fill(stack[names.group_face_queue], 2, env.aws)
    urls = observe.QueueUrls(stack[names.indexing_queue], stack[names.group_face_queue])
    expected = decide(observe.observe(names, env.aws, now_s=0.0, urls=urls), PolicyParams(), names)
    assert expected.submissions
    # An older stack's registration: dispatch/production on the ECS pool, a task per tick.
    pool = f"{names.prefix}-ecs"
    ensure_production_pool(pool)
    old = dispatch.to_deployment(
        name="production",
        work_pool_name=pool,
        job_variables=ProductionRuntime(image="img", task_role_arn="arn").job_variables(),
    )
    old.apply()  # type: ignore[union-attr]
    the_names = {"prefix": names.prefix, "grouping_prefix": names.grouping_prefix}
    # A day-long interval: only the manual run below executes while the test looks.
    command = [sys.executable, *serve_production_command(the_names)[1:]]
    server = subprocess.Popen(
        [*command, "--dispatch-interval", "86400"],
        env={**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value())},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        with get_client(sync_client=True) as client:

            def served() -> bool:
                try:
                    found = client.read_deployment_by_name("dispatch/production")
                except Exception:
                    return False
                return found.work_pool_name is None

            wait_until(served, 120, "the serving process to register dispatch/production")
        run = run_deployment("dispatch/production", timeout=180)
        assert run.state is not None and run.state.is_completed(), run.state  # type: ignore[union-attr]
        with get_client(sync_client=True) as client:
            done = client.read_flow_run(run.id)
        assert done.created and done.start_time and done.end_time
        # docs/infra.md, "What the flows runtime costs": the served tick's latency.
        pickup = (done.start_time - done.created).total_seconds()
        running = (done.end_time - done.start_time).total_seconds()
        print(f"served tick: requested -> running {pickup:.1f} s, running -> done {running:.1f} s")
        jobs = [(j["definition"], j["queue"], j["array_size"]) for j in batch_jobs(names, env.aws)]
        assert sorted(jobs, key=str) == sorted(
            ((s.job_definition, s.job_queue, s.array_size) for s in expected.submissions), key=str
        )
    finally:
        server.terminate()
        output, _ = server.communicate(timeout=60)
    # Stopped as ECS stops a task (SIGTERM), its schedule is left running for the next task.
    with get_client(sync_client=True) as client:
        assert not client.read_deployment_by_name("dispatch/production").paused
    # The serving process took the old registration off the pool and ran this very flow run.
    assert "removed dispatch/production from its work pool" in output, output[-2000:]
    assert str(run.id) in output, output[-2000:]
