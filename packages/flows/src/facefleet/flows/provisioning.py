"""The provisioning flow: render, validate and deploy the infra stack, then dashboards and alarms.

Steps (each a task, so a run shows where it stopped): render the `StackConfig` (the embedded
stack's from `local_stack_config`, or production's from parameters), validate it, plan the change
set and report it, apply (CloudFormation create/update, waited for), then apply the dashboards
and alarms. Idempotent: an unchanged stack plans no changes and re-puts identical alarms. A failed
deploy raises before the dashboards step; CloudFormation rolls the stack back to its previous
state (`facefleet.infra.deploy.apply`), so the previous stack stays in service.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from facefleet.common.config import Names


def _config_values(overrides: Mapping[str, Any] | None) -> dict[str, Any]:
    values = dict(overrides or {})
    for key in ("subnet_ids", "security_group_ids"):
        if key in values:
            values[key] = tuple(values[key])
    return values


@task
def render(
    names: Names,
    region: str,
    endpoint_url: str | None,
    local: bool,
    overrides: Mapping[str, Any] | None,
) -> Any:
    from facefleet.infra.stack_config import StackConfig, local_stack_config

    values = _config_values(overrides)
    if local:
        mongo = {
            key: os.environ[env]
            for key, env in (
                ("gallery_mongo_uri", "GALLERY_IMAGES_MONGO_URI"),
                ("huemn_mongo_uri", "HUEMN_MONGO_URI"),
            )
            if os.environ.get(env) and key not in values
        }
        return local_stack_config(names, region, endpoint_url, **mongo, **values)
    return StackConfig(names=names, **values)


def _deploy() -> Any:
    """The infra stack's deploy module (`plan/apply/destroy(config, region, endpoint_url)`)."""
    return importlib.import_module("facefleet.infra.deploy")


@task
def validate(config: Any) -> None:
    config.validate()


@task
def plan(config: Any, region: str, endpoint_url: str | None) -> Any:
    return _deploy().plan(config, region, endpoint_url)


@task
def apply(config: Any, region: str, endpoint_url: str | None, changes: Any) -> dict[str, str]:
    """Execute exactly the change set that `plan` showed (no second, unreviewed one)."""
    return dict(_deploy().apply(config, region, endpoint_url, plan=changes))


def record_local_environment(outputs: Mapping[str, str]) -> str | None:
    """On the embedded stack started by `facefleet local up` (its stack.env names its state
    folder), add the stack's worker environment to stack.env, so a shell that sources it has
    QUEUE_URL, BUCKET_NAME, FACE_GROUP_BUCKET_NAME, ... for `facefleet people` and workers."""
    from facefleet.infra import local
    from facefleet.infra.stack_config import worker_environment

    state_dir = os.environ.get(local.STATE_DIR_ENV)
    if not state_dir or not local.record_worker_environment(state_dir, worker_environment(outputs)):
        return None
    return str(Path(state_dir) / local.ENV_FILE)


@task
def dashboards(names: Names, region: str, endpoint_url: str | None) -> list[str]:
    from facefleet.dashboards.apply import apply_dashboards

    return apply_dashboards(names, region, endpoint_url)


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
    the_names = Names(**dict(names or {}))
    region = region or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    endpoint_url = endpoint_url or os.environ.get("AWS_ENDPOINT_URL")
    stack_config = render(the_names, region, endpoint_url, local, config)
    validate(stack_config)
    changes: Any = plan(stack_config, region, endpoint_url)
    logger.info("plan: %s", changes.summary())
    outputs = apply(stack_config, region, endpoint_url, changes)
    logger.info("stack %s deployed; outputs %s", the_names.stack_name, outputs)
    if local:
        recorded = record_local_environment(outputs)
        if recorded:
            logger.info("worker environment added to %s", recorded)
    applied: list[str] = []
    if with_dashboards:
        applied = dashboards(the_names, region, endpoint_url)
        logger.info("dashboards and alarms applied: %s", applied)
    rows = "\n".join(f"| {key} | {value} |" for key, value in sorted(outputs.items()))
    create_markdown_artifact(
        key="provision-" + "".join(c if c.isalnum() else "-" for c in the_names.stack_name.lower()),
        markdown=(
            f"## Stack {the_names.stack_name} in {region}\n\n```\n{changes.summary()}\n```\n\n"
            f"| output | value |\n|---|---|\n{rows}\n\nDashboards/alarms: {len(applied)}"
        ),
    )
    plan_view = {"summary": changes.summary(), "changes": [asdict(c) for c in changes.changes]}
    return {"plan": plan_view, "outputs": outputs, "dashboards": applied}
