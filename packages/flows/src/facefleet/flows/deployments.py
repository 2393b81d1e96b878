"""The flows' deployments and their schedules, served from one process (`facefleet flows serve`).

Deployment names (what `prefect deployment run` takes):

    dispatch/local           every minute    (queue depth -> Batch jobs; local executor)
    cutover/scheduled        every N minutes (default 10; evaluates the stage, applies it)
    cutover-rollback/manual  on demand       (all traffic to ECS, Batch queue drained to ECS)
    cutover-pause/manual     on demand
    cutover-resume/manual    on demand
    provision/local          on demand       (stack + dashboards on the embedded stack)
    spot-savings/hourly      5 past each hour (the previous hour's Spot saving, as metrics)

`serve` runs each flow run as a subprocess of the serving process, which inherits its
environment (source the local stack's `stack.env` first). Local Batch jobs are started in their
own sessions, so they outlive the dispatch run that started them.

A local work pool instead: `prefect.yaml` at the repository root is generated from `specs`
here (`facefleet flows yaml --out prefect.yaml`; a test checks the committed file is current),
and `prefect deploy` registers the same flows on a process pool.

Production (the ECS work pool, and the dispatch service that serves `dispatch/production`):
`facefleet.flows.production`.
"""

from __future__ import annotations

import argparse
import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import yaml
from prefect import Flow, serve
from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
from prefect.deployments.runner import RunnerDeployment

from facefleet.flows.cutover import cutover, pause_flow, resume_flow, rollback_flow
from facefleet.flows.dispatch import dispatch
from facefleet.flows.provisioning import provision
from facefleet.flows.savings import SAVINGS_CRON, spot_savings

DISPATCH_INTERVAL_S = 60
CUTOVER_INTERVAL_MIN = 10
# A tick that overlaps a slow one would observe the same backlog twice: skip it instead.
ONE_AT_A_TIME = ConcurrencyLimitConfig(
    limit=1, collision_strategy=ConcurrencyLimitStrategy.CANCEL_NEW
)


@dataclass(frozen=True)
class DeploymentSpec:
    """One deployment, as both `build` (for `serve`) and `prefect_yaml` (for a pool) render it."""

    flow: Flow[..., Any]
    name: str
    parameters: dict[str, Any] = field(default_factory=dict)
    interval_s: int | None = None
    cron: str | None = None
    one_at_a_time: bool = False
    description: str | None = None
    tags: tuple[str, ...] = ()


def specs(
    names: dict[str, Any] | None = None,
    *,
    mode: str = "local",
    dispatch_interval_s: int = DISPATCH_INTERVAL_S,
    cutover_interval_min: int = CUTOVER_INTERVAL_MIN,
    local_batch_dir: str | None = None,
    cutover_schedule: bool = True,
) -> list[DeploymentSpec]:
    """The deployments for one stack (`names`: `Names` fields; None: the defaults)."""
    common = {"names": names} if names else {}
    dispatch_params: dict[str, Any] = {**common, "mode": mode}
    if local_batch_dir:
        dispatch_params["local_batch_dir"] = local_batch_dir
    tags = ("facefleet", mode)
    return [
        DeploymentSpec(
            dispatch,
            name=mode,
            interval_s=dispatch_interval_s,
            parameters=dispatch_params,
            tags=tags,
            description="Queue depth -> Batch jobs (policy.decide) every minute.",
            one_at_a_time=True,
        ),
        DeploymentSpec(
            cutover,
            name="scheduled",
            interval_s=cutover_interval_min * 60 if cutover_schedule else None,
            parameters=common,
            tags=tags,
            description="Evaluate the cutover stage against its health gates and apply it.",
            one_at_a_time=True,
        ),
        DeploymentSpec(rollback_flow, name="manual", parameters=common, tags=tags),
        DeploymentSpec(pause_flow, name="manual", parameters=common, tags=tags),
        DeploymentSpec(resume_flow, name="manual", parameters=common, tags=tags),
        DeploymentSpec(
            provision, name=mode, parameters={**common, "local": mode == "local"}, tags=tags
        ),
        DeploymentSpec(
            spot_savings,
            name="hourly",
            cron=SAVINGS_CRON,
            parameters=common,
            tags=tags,
            description="The previous hour's Spot saving and $/1000 images, as metrics.",
        ),
    ]


def build(
    names: dict[str, Any] | None = None,
    *,
    mode: str = "local",
    dispatch_interval_s: int = DISPATCH_INTERVAL_S,
    cutover_interval_min: int = CUTOVER_INTERVAL_MIN,
    local_batch_dir: str | None = None,
    cutover_schedule: bool = True,
) -> list[RunnerDeployment]:
    """The deployments for one stack (`names`: `Names` fields; None: the defaults)."""
    deployments = []
    for spec in specs(
        names,
        mode=mode,
        dispatch_interval_s=dispatch_interval_s,
        cutover_interval_min=cutover_interval_min,
        local_batch_dir=local_batch_dir,
        cutover_schedule=cutover_schedule,
    ):
        deployments.append(
            spec.flow.to_deployment(
                name=spec.name,
                parameters=spec.parameters,
                tags=list(spec.tags),
                **deployment_options(spec),
            )
        )
    # Called outside an event loop, `to_deployment` returns the deployment, not a coroutine.
    return [cast(RunnerDeployment, deployment) for deployment in deployments]


def deployment_options(spec: DeploymentSpec) -> dict[str, Any]:
    """`to_deployment` keywords for the spec's schedule, description and concurrency."""
    options: dict[str, Any] = {}
    if spec.interval_s is not None:
        options["interval"] = spec.interval_s
    if spec.cron is not None:
        options["cron"] = spec.cron
    if spec.description is not None:
        options["description"] = spec.description
    if spec.one_at_a_time:
        options["concurrency_limit"] = ONE_AT_A_TIME
    return options


# ---- prefect.yaml ------------------------------------------------------------------------

REPOSITORY_ROOT = Path(__file__).resolve().parents[5]
LOCAL_POOL = "facefleet-local"
SERVE_PRODUCTION_MODULE = "facefleet.flows.deployments"

PREFECT_YAML_HEADER = """\
# GENERATED from packages/flows/src/facefleet/flows/deployments.py (`specs`): do not edit.
# Regenerate with `facefleet flows yaml --out prefect.yaml` (tests/test_flows_deployments.py
# checks this file is current).
#
# FaceFleet Prefect deployments for a work pool (`prefect deploy --all` from the repository root).
#
# Local (embedded stack), process work pool:
#   source .facefleet/local/stack.env
#   prefect work-pool create facefleet-local --type process
#   prefect deploy --name local --name scheduled --name manual --name hourly
#   prefect worker start --pool facefleet-local          # runs them as local subprocesses
#   prefect deployment run 'dispatch/local'
# (`facefleet flows serve` registers the same names without a pool or worker.)
#
# Production deployments are not in this file: `facefleet flows deploy --production` registers
# them from the same specs (`mode: aws`, named `production`) on the ECS work pool, with the flows
# image and the stack's flow task role (docs/infra.md, "Flows in production").
#
# No pull steps: `prefect deploy` records the directory it ran from (the repository root) as the
# flow runs' working directory, where run_detection_service.py and the packages live.

"""


def entrypoint(flow: Flow[..., Any], root: Path = REPOSITORY_ROOT) -> str:
    """`path/to/module.py:function`, relative to the repository root."""
    source = Path(inspect.getfile(flow.fn)).resolve()
    return f"{source.relative_to(root).as_posix()}:{flow.fn.__name__}"


def _yaml_entry(spec: DeploymentSpec, name: str, work_pool: dict[str, Any]) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": name, "entrypoint": entrypoint(spec.flow)}
    if spec.description:
        entry["description"] = spec.description
    if spec.parameters:
        entry["parameters"] = spec.parameters
    if spec.tags:
        entry["tags"] = list(spec.tags)
    if spec.interval_s is not None:
        entry["schedules"] = [{"interval": spec.interval_s}]
    if spec.cron is not None:
        entry["schedules"] = [{"cron": spec.cron}]
    if spec.one_at_a_time:
        entry["concurrency_limit"] = {
            "limit": ONE_AT_A_TIME.limit,
            "collision_strategy": str(ONE_AT_A_TIME.collision_strategy.value),
        }
    entry["work_pool"] = work_pool
    return entry


def prefect_yaml() -> str:
    """The text of the repository's prefect.yaml: the local deployments on a process pool (the
    production ones are registered by `deploy_production`, from the same specs)."""
    local = [_yaml_entry(s, s.name, {"name": LOCAL_POOL}) for s in specs(mode="local")]
    document = {"name": "facefleet", "prefect-version": "3.0.0", "deployments": local}
    return PREFECT_YAML_HEADER + yaml.safe_dump(document, sort_keys=False, width=100)


def serve_all(
    deployments: list[RunnerDeployment], limit: int | None = None, pause_on_shutdown: bool = True
) -> None:
    """Register the deployments and run their scheduled and manual runs until interrupted."""
    serve(*deployments, limit=limit, pause_on_shutdown=pause_on_shutdown)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m {SERVE_PRODUCTION_MODULE}")
    parser.add_argument("action", choices=("serve-local", "serve-production"), nargs="?")
    parser.add_argument("--prefix", default=None)
    parser.add_argument("--grouping-prefix", default=None)
    parser.add_argument("--dispatch-interval", type=int, default=DISPATCH_INTERVAL_S)
    args = parser.parse_args(argv)
    names = {
        key: value
        for key, value in (("prefix", args.prefix), ("grouping_prefix", args.grouping_prefix))
        if value
    }
    if args.action == "serve-production":
        from facefleet.flows.production import serve_production  # it builds on this module

        serve_production(names or None, dispatch_interval_s=args.dispatch_interval)
    else:
        serve_all(build(names or None, dispatch_interval_s=args.dispatch_interval))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
