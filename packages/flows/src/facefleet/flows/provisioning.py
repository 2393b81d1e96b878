"""The provisioning flow: render, validate and deploy the infra stack, then dashboards and alarms.

Steps (each a task, so a run shows where it stopped): render the `StackConfig` (the embedded
stack's from `local_stack_config`, or production's from parameters), validate it, plan the change
set and report it, apply (CloudFormation create/update, waited for), then apply the dashboards
and alarms. Idempotent: an unchanged stack plans no changes and re-puts identical alarms. A failed
deploy raises before the dashboards step; CloudFormation rolls the stack back to its previous
state (`facefleet.infra.deploy.apply`), so the previous stack stays in service.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from facefleet.common.aws import AwsTarget
from facefleet.common.names import Names
from facefleet.dashboards.apply import apply_dashboards
from facefleet.infra import deploy
from facefleet.infra.stack_config import StackConfig


@task
def render(
    names: Names,
    aws: AwsTarget,
    local: bool,
    overrides: Mapping[str, Any] | None,
) -> StackConfig:
    return StackConfig.from_env(names, aws, local=local, overrides=overrides)


@task
def validate(config: StackConfig) -> None:
    config.validate()


@task
def plan(config: StackConfig, aws: AwsTarget) -> deploy.Plan:
    return deploy.plan(config, aws)


@task
def apply(config: StackConfig, aws: AwsTarget, changes: deploy.Plan) -> dict[str, str]:
    """Execute exactly the change set that `plan` showed (no second, unreviewed one)."""
    return dict(deploy.apply(config, aws, plan=changes))


def record_local_environment(outputs: Mapping[str, str]) -> str | None:
    """On the embedded stack started by `facefleet local up` (its stack.env names its state
    folder), add the stack's worker environment to stack.env, so a shell that sources it has
    QUEUE_URL, BUCKET_NAME, FACE_GROUP_BUCKET_NAME, ... for `facefleet people` and workers."""
    from facefleet.embedded import servers as local
    from facefleet.infra.stack_config import worker_environment

    state_dir = os.environ.get(local.STATE_DIR_ENV)
    if not state_dir or not local.record_worker_environment(state_dir, worker_environment(outputs)):
        return None
    return str(Path(state_dir) / local.ENV_FILE)


@task
def emulator_job_definitions(
    config: StackConfig, aws: AwsTarget, outputs: Mapping[str, str]
) -> list[str]:
    """moto's CloudFormation keeps a changed Batch job definition's old revision; register the
    template's, as AWS would (`facefleet.embedded.jobdefs`)."""
    from facefleet.embedded.jobdefs import apply_job_definitions
    from facefleet.infra.template import render as render_template

    return apply_job_definitions(aws.client("batch"), render_template(config), outputs)


@task
def dashboards(names: Names, aws: AwsTarget) -> list[str]:
    return apply_dashboards(names, aws)


@flow(name="provision", log_prints=True)
def provision(
    names: dict[str, Any] | None = None,
    local: bool = True,
    config: dict[str, Any] | None = None,
    with_dashboards: bool = True,
    region: str | None = None,
    endpoint_url: str | None = None,
) -> dict[str, Any]:
    """Deploy (or update) the stack and its dashboards; return the plan, outputs and names.

    `local`: the embedded stack (default VPC, buckets created); otherwise `config` carries the
    production `StackConfig` fields (vpc_id, subnet_ids, existing queues, ...)."""
    logger = get_run_logger()
    the_names = Names.from_params(names)
    aws = AwsTarget.from_env(region=region, endpoint_url=endpoint_url)
    stack_config = render(the_names, aws, local, config)
    validate(stack_config)
    changes = plan(stack_config, aws)
    logger.info("plan: %s", changes.summary())
    outputs = apply(stack_config, aws, changes)
    logger.info("stack %s deployed; outputs %s", the_names.stack_name, outputs)
    if local:
        revised = emulator_job_definitions(stack_config, aws, outputs)
        if revised:
            logger.info("emulator: registered the template's revision of %s", revised)
        recorded = record_local_environment(outputs)
        if recorded:
            logger.info("worker environment added to %s", recorded)
    applied: list[str] = []
    if with_dashboards:
        applied = dashboards(the_names, aws)
        logger.info("dashboards and alarms applied: %s", applied)
    rows = "\n".join(f"| {key} | {value} |" for key, value in sorted(outputs.items()))
    create_markdown_artifact(
        key="provision-" + "".join(c if c.isalnum() else "-" for c in the_names.stack_name.lower()),
        markdown=(
            f"## Stack {the_names.stack_name} in {aws.region}\n\n```\n{changes.summary()}\n```\n\n"
            f"| output | value |\n|---|---|\n{rows}\n\nDashboards/alarms: {len(applied)}"
        ),
    )
    plan_view = {"summary": changes.summary(), "changes": [asdict(c) for c in changes.changes]}
    return {"plan": plan_view, "outputs": outputs, "dashboards": applied}
