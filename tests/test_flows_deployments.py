"""Deployments and their schedules; the provisioning flow on the moto server (once the infra
stack's deploy module is there)."""

from __future__ import annotations

import datetime as dt

import pytest

from facefleet.flows.deployments import build
from facefleet.tools.cli import build_parser


def test_deployment_names_and_schedules() -> None:
    deployments = {f"{d.flow_name}/{d.name}": d for d in build({"prefix": "x"})}
    assert set(deployments) == {
        "dispatch/local",
        "cutover/scheduled",
        "cutover-rollback/manual",
        "cutover-pause/manual",
        "cutover-resume/manual",
        "provision/local",
        "spot-savings/hourly",
    }

    def interval(name: str) -> dt.timedelta | None:
        schedules = deployments[name].schedules or []
        return schedules[0].schedule.interval if schedules else None  # type: ignore[union-attr]

    assert interval("dispatch/local") == dt.timedelta(seconds=60)
    assert interval("cutover/scheduled") == dt.timedelta(minutes=10)
    assert interval("cutover-rollback/manual") is None
    savings = deployments["spot-savings/hourly"].schedules or []
    assert savings[0].schedule.cron == "5 * * * *"  # type: ignore[union-attr]
    assert deployments["dispatch/local"].parameters == {"names": {"prefix": "x"}, "mode": "local"}


def test_cli_commands_parse() -> None:
    parser = build_parser()
    assert parser.parse_args(["dispatch", "--once"]).mode == "local"
    assert parser.parse_args(["cutover", "rollback", "--reason", "drill"]).reason == "drill"
    assert parser.parse_args(["flows", "serve", "--cutover-interval", "5"]).cutover_interval == 5
    assert parser.parse_args(["provision"]).production is False


def test_provision_flow_is_idempotent(env) -> None:
    pytest.importorskip("facefleet.infra.deploy")
    from facefleet.flows.provisioning import provision
    from tests.flows_support import prefect_harness

    prefect_harness()
    names = {
        "prefix": env.names.prefix,
        "grouping_prefix": env.names.grouping_prefix,
        "stack_name": env.names.stack_name,
    }
    first = provision(names=names, region=env.region, endpoint_url=env.endpoint_url)
    assert first["outputs"] and first["dashboards"]
    assert "CREATE" in first["plan"]["summary"] and first["plan"]["changes"]
    second = provision(names=names, region=env.region, endpoint_url=env.endpoint_url)
    assert second["outputs"] == first["outputs"]
    assert second["plan"] == {"summary": f"stack {env.names.stack_name}: no changes", "changes": []}


def test_spot_savings_flow_prices_an_idle_hour_at_zero(env) -> None:
    from facefleet.flows.savings import spot_savings
    from tests.flows_support import create_batch, prefect_harness

    prefect_harness()
    create_batch(env.names, env.aws)
    hour = dt.datetime(2026, 1, 5, 10, tzinfo=dt.UTC)
    names = {"prefix": env.names.prefix, "metrics_namespace": f"FaceFleet-{env.namespace}"}
    result = spot_savings(
        names=names, region=env.region, endpoint_url=env.endpoint_url, hour=hour.isoformat()
    )
    assert result["hour_start"] == hour.isoformat()
    assert result["instance_hours"] == {} and result["savings_usd"] == 0
    assert result["cost_per_1000_images_usd"] is None


def test_reprovisioning_the_local_stack_applies_job_definition_changes(
    env, tmp_path, monkeypatch
) -> None:
    """moto cannot update a Batch job definition through CloudFormation: a re-provision once
    reported UPDATE_COMPLETE and kept the old definitions. And `source stack.env` then gives the
    stack's worker environment (FACE_GROUP_BUCKET_NAME and the rest)."""
    from facefleet.embedded import servers as local
    from facefleet.flows.provisioning import provision
    from tests.flows_support import prefect_harness

    prefect_harness()
    local.StackState(str(tmp_path)).save()
    monkeypatch.setenv(local.STATE_DIR_ENV, str(tmp_path))
    names = {
        "prefix": env.names.prefix,
        "grouping_prefix": env.names.grouping_prefix,
        "stack_name": env.names.stack_name,
    }
    common = {"names": names, "region": env.region, "endpoint_url": env.endpoint_url}
    first = provision(**common, with_dashboards=False)
    stack_env = (tmp_path / local.ENV_FILE).read_text()
    for variable in ("QUEUE_URL", "GROUP_FACE_QUEUE_URL", "BUCKET_NAME", "FACE_GROUP_BUCKET_NAME"):
        assert f"export {variable}=" in stack_env

    batch = env.aws.client("batch")

    def latest_environment() -> dict[str, str]:
        found = batch.describe_job_definitions(
            jobDefinitionName=env.names.detection_job.name, status="ACTIVE"
        )["jobDefinitions"]
        latest = max(found, key=lambda d: d["revision"])
        return {e["name"]: e["value"] for e in latest["containerProperties"]["environment"]}

    def revisions() -> int:
        found = batch.describe_job_definitions(
            jobDefinitionName=env.names.detection_job.name, status="ACTIVE"
        )["jobDefinitions"]
        return len(found)

    assert latest_environment()["MODEL_DIR"].endswith("/facefleet-dev")
    created = revisions()  # CloudFormation's, and one with what moto's CloudFormation dropped
    provision(**common, with_dashboards=False)
    assert revisions() == created  # an unchanged definition gets no new revision
    settings = {"MODEL_PACK": "facefleet-dev", "DETECTION_THRESHOLD": "0.61"}
    second = provision(**common, config={"worker_settings": settings}, with_dashboards=False)
    assert second["plan"]["changes"] and second["outputs"] == first["outputs"]
    assert latest_environment()["DETECTION_THRESHOLD"] == "0.61"
    assert revisions() == created + 1


def test_prefect_yaml_is_generated_from_the_deployments() -> None:
    import yaml

    from facefleet.flows.deployments import REPOSITORY_ROOT, prefect_yaml, specs

    committed = (REPOSITORY_ROOT / "prefect.yaml").read_text()
    assert committed == prefect_yaml(), (
        "prefect.yaml is stale: facefleet flows yaml --out prefect.yaml"
    )
    document = yaml.safe_load(committed)
    assert [d["name"] for d in document["deployments"]] == [s.name for s in specs()]
    for entry in document["deployments"]:
        path, function = entry["entrypoint"].split(":")
        assert (REPOSITORY_ROOT / path).is_file() and function in (
            REPOSITORY_ROOT / path
        ).read_text()
