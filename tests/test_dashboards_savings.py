"""Spot savings: the arithmetic on known price histories, its properties, and the job against the
moto server (canned Spot prices, no Pricing API: the fallback table is used)."""

from __future__ import annotations

import dataclasses
import json
import time
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from facefleet.common.metrics import Metric
from facefleet.dashboards.savings import (
    HOUR,
    ON_DEMAND_FALLBACK_USD,
    SavingsConfig,
    SavingsError,
    SpotPrice,
    Usage,
    batch_usage,
    container_instance_types,
    hourly_savings,
    instance_hours,
    instance_share,
    on_demand_prices,
    run_savings_job,
    spot_cost,
    spot_price_segments,
)
from facefleet.dashboards.widgets import SAVINGS, emitter_dimensions

T0 = datetime(2025, 3, 1, 10, tzinfo=UTC)
G4 = "g4dn.xlarge"
OD = {G4: 0.526, "g5.xlarge": 1.006}


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def price(minutes: float, usd: float, zone: str = "us-east-1a", kind: str = G4) -> SpotPrice:
    return SpotPrice(kind, zone, at(minutes), usd)


def test_full_hour_at_one_price():
    result = hourly_savings([Usage(G4, at(-30), at(90))], [price(-600, 0.2)], OD, T0, images=400)
    assert result.instance_hours == {G4: pytest.approx(1.0)}
    assert result.spot_cost_usd == pytest.approx(0.2)
    assert result.on_demand_cost_usd == pytest.approx(0.526)
    assert result.savings_usd == pytest.approx(0.326)
    assert result.cost_per_1000_images_usd == pytest.approx(0.5)
    assert set(result.metrics()) == {
        Metric.SPOT_SAVINGS,
        Metric.SPOT_COST,
        Metric.ON_DEMAND_COST,
        Metric.COST_PER_1000_IMAGES,
    }


def test_price_change_within_the_hour_is_priced_piecewise():
    history = [price(-5, 0.2), price(30, 0.3), price(70, 9.9)]
    assert spot_cost([Usage(G4, at(0), at(60))], history, T0, T0 + HOUR) == pytest.approx(0.25)
    # 10:15-10:45 spans the change at 10:30: a quarter hour at each price
    assert spot_cost([Usage(G4, at(15), at(45))], history, T0, T0 + HOUR) == pytest.approx(0.125)
    assert spot_price_segments(history, G4, None, at(0), at(60)) == [
        (at(0), at(30), 0.2),
        (at(30), at(60), 0.3),
    ]


def test_zones_and_fractions():
    history = [price(-5, 0.2, "us-east-1a"), price(-5, 0.4, "us-east-1b")]
    # zone known: that zone's price; unknown: the highest, so the saving is never overstated
    assert spot_cost(
        [Usage(G4, at(0), at(60), availability_zone="us-east-1a")], history, T0, T0 + HOUR
    ) == pytest.approx(0.2)
    assert spot_cost([Usage(G4, at(0), at(60))], history, T0, T0 + HOUR) == pytest.approx(0.4)
    # a job holding half an instance's vCPUs for the hour is half an instance-hour
    two = [Usage(G4, at(0), at(60), 0.5), Usage("g5.xlarge", at(0), at(30), 2)]
    assert instance_hours(two, T0, T0 + HOUR) == {G4: 0.5, "g5.xlarge": 1.0}


def test_missing_prices_name_the_instance_type():
    with pytest.raises(SavingsError, match=r"g5\.xlarge"):
        spot_cost([Usage("g5.xlarge", at(0), at(60))], [price(0, 0.2)], T0, T0 + HOUR)
    with pytest.raises(SavingsError, match=r"p3\.2xlarge"):
        hourly_savings(
            [Usage("p3.2xlarge", at(0), at(60))], [price(0, 0.2, kind="p3.2xlarge")], OD, T0
        )
    with pytest.raises(SavingsError, match="ends before"):
        Usage(G4, at(10), at(0))


def test_no_usage_costs_nothing():
    result = hourly_savings([], [], OD, T0, images=0)
    assert (result.spot_cost_usd, result.on_demand_cost_usd, result.savings_usd) == (0, 0, 0)
    assert result.cost_per_1000_images_usd is None
    assert Metric.COST_PER_1000_IMAGES not in result.metrics()


minutes = st.floats(min_value=-120, max_value=180, allow_nan=False)
prices = st.floats(min_value=0, max_value=5, allow_nan=False)
usages = st.lists(
    st.tuples(
        minutes,
        st.floats(min_value=0, max_value=240, allow_nan=False),
        st.floats(min_value=0, max_value=8, allow_nan=False),
    ),
    max_size=6,
).map(lambda rows: [Usage(G4, at(s), at(s + d), n) for s, d, n in rows])
histories = st.lists(st.tuples(minutes, prices), min_size=1, max_size=6).map(
    lambda rows: [price(m, p) for m, p in rows]
)


@settings(max_examples=150, deadline=None)
@given(usages, histories, st.floats(min_value=0, max_value=1e6))
def test_savings_is_on_demand_minus_spot_and_costs_are_never_negative(usage, history, images):
    result = hourly_savings(usage, history, OD, T0, images)
    assert result.spot_cost_usd >= 0
    assert result.on_demand_cost_usd >= 0
    assert result.savings_usd == result.on_demand_cost_usd - result.spot_cost_usd
    hours = sum(result.instance_hours.values())
    low = min(p.usd_per_hour for p in history)
    high = max(p.usd_per_hour for p in history)
    assert low * hours - 1e-9 <= result.spot_cost_usd <= high * hours + 1e-9
    assert result.on_demand_cost_usd == pytest.approx(hours * OD[G4])


@settings(max_examples=150, deadline=None)
@given(
    st.floats(min_value=1, max_value=59),
    prices,
    prices,
    st.floats(min_value=0, max_value=60),
    st.floats(min_value=0, max_value=60),
)
def test_piecewise_pricing_across_a_price_change(change, before, after, a, b):
    start, end = sorted((a, b))
    history = [price(-60, before), price(change, after)]
    expected = (
        before * max(0.0, min(end, change) - start) + after * max(0.0, end - max(start, change))
    ) / 60
    cost = spot_cost([Usage(G4, at(start), at(end))], history, T0, T0 + HOUR)
    assert cost == pytest.approx(expected, rel=1e-6, abs=1e-8)  # datetimes round to 1 µs
    # splitting a usage at any moment does not change what it costs
    middle = (start + end) / 2
    split = [Usage(G4, at(start), at(middle)), Usage(G4, at(middle), at(end))]
    assert spot_cost(split, history, T0, T0 + HOUR) == pytest.approx(cost, rel=1e-6, abs=1e-8)


@settings(max_examples=50, deadline=None)
@given(histories, minutes, st.floats(min_value=0, max_value=8))
def test_zero_hours_cost_zero(history, moment, instances):
    usage = [Usage(G4, at(moment), at(moment), instances), Usage(G4, at(-200), at(-100), 3)]
    result = hourly_savings(usage, history, OD, T0)
    assert result.spot_cost_usd == 0 and result.on_demand_cost_usd == 0


def test_on_demand_falls_back_to_the_configured_table(env):
    prices_, source = on_demand_prices(env.aws, [G4])
    assert (prices_, source) == ({G4: ON_DEMAND_FALLBACK_USD[G4]}, "fallback")
    table = SavingsConfig(on_demand_fallback_usd={G4: 1.0}, use_pricing_api=False)
    assert on_demand_prices(env.aws, [G4], table)[0] == {G4: 1.0}
    with pytest.raises(SavingsError, match=r"x9\.huge"):
        on_demand_prices(env.aws, ["x9.huge"], table)


def test_savings_job_publishes_the_metrics(env):
    # A namespace of its own: metrics cannot be deleted, and other tests put ImagesProcessed.
    names = dataclasses.replace(env.names, metrics_namespace=f"FaceFleet-{env.namespace}")
    cloudwatch = env.aws.client("cloudwatch")
    dimensions = [{"Name": "Service", "Value": "detection"}]
    cloudwatch.put_metric_data(
        Namespace=names.metrics_namespace,
        MetricData=[{"MetricName": "ImagesProcessed", "Dimensions": dimensions, "Value": 250.0}],
    )
    hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    usage = [Usage(G4, hour - HOUR, hour + 2 * HOUR, 2)]  # two instances all hour
    result = run_savings_job(names, env.aws, hour, usages=usage)
    assert result.instance_hours == {G4: pytest.approx(2.0)}
    assert result.on_demand_source == "fallback"
    assert result.on_demand_cost_usd == pytest.approx(2 * ON_DEMAND_FALLBACK_USD[G4])
    assert 0 <= result.spot_cost_usd < result.on_demand_cost_usd  # moto's canned Spot price
    assert result.images == 250
    published = {}
    for metric in (
        Metric.SPOT_SAVINGS,
        Metric.SPOT_COST,
        Metric.ON_DEMAND_COST,
        Metric.COST_PER_1000_IMAGES,
    ):
        points = cloudwatch.get_metric_statistics(
            Namespace=names.metrics_namespace,
            MetricName=str(metric),
            Dimensions=[{"Name": k, "Value": v} for k, v in emitter_dimensions(SAVINGS).items()],
            StartTime=hour - HOUR,
            EndTime=datetime.now(UTC) + HOUR,
            Period=3600,
            Statistics=["Sum"],
        )["Datapoints"]
        published[metric] = sum(p["Sum"] for p in points)
    assert published[Metric.SPOT_SAVINGS] == pytest.approx(result.savings_usd)
    assert published[Metric.ON_DEMAND_COST] == pytest.approx(result.on_demand_cost_usd)
    assert published[Metric.COST_PER_1000_IMAGES] == pytest.approx(
        result.spot_cost_usd * 1000 / 250
    )


def test_batch_usage_reads_job_times_and_vcpus(env):
    names = env.names
    iam = env.aws.client("iam")
    batch = env.aws.client("batch")
    role = iam.create_role(RoleName=f"{names.prefix}-batch", AssumeRolePolicyDocument="{}")
    environment, queue = names.primary_environment.name, names.primary_queue.name
    batch.create_compute_environment(
        computeEnvironmentName=environment,
        type="UNMANAGED",
        state="ENABLED",
        serviceRole=role["Role"]["Arn"],
    )
    batch.create_job_queue(
        jobQueueName=queue,
        state="ENABLED",
        priority=1,
        computeEnvironmentOrder=[{"order": 1, "computeEnvironment": environment}],
    )
    batch.register_job_definition(
        jobDefinitionName=names.detection_job.name,
        type="container",
        containerProperties={
            "image": "x",
            "command": ["true"],
            "resourceRequirements": [
                {"type": "VCPU", "value": "2"},
                {"type": "MEMORY", "value": "1024"},
            ],
        },
    )
    job = batch.submit_job(jobName="j", jobQueue=queue, jobDefinition=names.detection_job.name)
    deadline = time.monotonic() + 20
    while batch.describe_jobs(jobs=[job["jobId"]])["jobs"][0]["status"] != "SUCCEEDED":
        assert time.monotonic() < deadline, "moto Batch job did not finish"
        time.sleep(0.2)
    now = datetime.now(UTC)
    found = batch_usage(names, env.aws, now - HOUR, now + HOUR)
    assert len(found) == 1
    assert found[0].instance_type == names.primary_environment.instance_types[0]
    assert found[0].instances == 2 / names.instance_vcpus
    assert batch_usage(names, env.aws, now - 3 * HOUR, now - 2 * HOUR) == []


def test_cli_savings_and_runbook(env, capsys, tmp_path):
    from facefleet.tools.cli import main

    # No job queues in this namespace yet: zero usage, zero cost, nothing overstated.
    assert main(["dashboards", "savings", "--prefix", env.names.prefix, "--no-publish"]) == 0
    assert "saving $0.0000" in capsys.readouterr().out
    out = tmp_path / "RUNBOOK.md"
    assert main(["dashboards", "runbook", "--out", str(out)]) == 0
    assert "## face-recognition-spot-interruptions" in out.read_text()


def test_a_jobs_share_of_its_instance_comes_from_the_instance_facts():
    """Not a flat vCPUs / 4: a one-GPU job on a one-GPU, eight-vCPU g4dn.2xlarge holds the whole
    instance; a CPU-only 2-vCPU job holds a quarter of it and half of a g4dn.xlarge."""
    assert instance_share("g4dn.2xlarge", 4, 1) == 1.0
    assert instance_share("g4dn.2xlarge", 2, 0) == 0.25
    assert instance_share("g4dn.xlarge", 2, 0) == 0.5
    assert instance_share("p9.unknown", 1, 0) == 1.0  # never understated


def _container_instance(env, instance_type: str) -> str:
    ec2 = env.aws.client("ec2")
    image = ec2.describe_images()["Images"][0]["ImageId"]
    instance = ec2.run_instances(ImageId=image, InstanceType=instance_type, MinCount=1, MaxCount=1)[
        "Instances"
    ][0]["InstanceId"]
    ecs = env.aws.client("ecs")
    cluster = ecs.create_cluster(clusterName=f"{env.names.prefix}-batch-ce")["cluster"]
    registered = ecs.register_container_instance(
        cluster=cluster["clusterName"],
        instanceIdentityDocument=json.dumps({"instanceId": instance}),
    )
    return str(registered["containerInstance"]["containerInstanceArn"])


def test_the_flows_task_role_may_make_every_savings_call(env, monkeypatch):
    """The savings flow runs as FlowsTaskRole: every call it makes, recorded against the moto
    server, is judged against that role's policy (Service Authorization Reference: EC2
    DescribeSpotPriceHistory and Pricing GetProducts take no resource-level permission, ECS
    DescribeContainerInstances is scoped to container instances)."""
    from facefleet.infra import template
    from facefleet.infra.stack_config import StackConfig
    from tests.contract.iam_support import (
        Recorder,
        allowed,
        permissive_context,
        requests_for_any,
        role_policy,
    )

    arn = _container_instance(env, "g5.xlarge")
    recorder = Recorder()
    recorder.install(monkeypatch)
    recorder.principal = "savings"
    assert container_instance_types(env.aws, [arn]) == {arn: "g5.xlarge"}
    now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    batch_usage(env.names, env.aws, now - HOUR, now)
    share = instance_share(G4, 4, 1)
    usage = Usage(G4, now - HOUR, now - HOUR / 2, share)
    run_savings_job(env.names, env.aws, now - HOUR, usages=[usage])
    calls = recorder.of("savings")
    assert {c.operation for c in calls} >= {
        "DescribeSpotPriceHistory",
        "DescribeContainerInstances",
        "PutMetricData",
    }

    rendered = template.render(StackConfig(names=env.names, router_lambda=False))
    account = env.aws.client("sts").get_caller_identity()["Account"]
    context = permissive_context(rendered, env.region, account)
    policy = role_policy(rendered, "FlowsTaskRole", context)
    denied = [
        request
        for call in calls
        for request in requests_for_any(call, account)
        if not allowed(policy, request)
    ]
    assert not denied, denied
