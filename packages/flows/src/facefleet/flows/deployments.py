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

Production (`production_deployments` / `deploy_production`, `facefleet flows deploy
--production`): the same specs with `mode: aws`, named `production`, on an ECS work pool
(`Names.work_pool`, type `ecs`, the prefect-aws ECS worker's job template; the stack runs that
worker as a Fargate service). Each flow run is a Fargate task from the flows image
(`FlowsImageUri`) with the stack's `FlowsTaskRoleArn`; entrypoints are module paths, importable
from the image's installed packages. `provision` is not deployed there: the flow task role has no
`cloudformation:*` (provisioning runs from a person's shell or CI).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import yaml
from prefect import Flow, serve
from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
from prefect.deployments.runner import EntrypointType, RunnerDeployment

from facefleet.common.names import Names
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
        options: dict[str, Any] = {}
        if spec.interval_s is not None:
            options["interval"] = spec.interval_s
        if spec.cron is not None:
            options["cron"] = spec.cron
        if spec.description is not None:
            options["description"] = spec.description
        if spec.one_at_a_time:
            options["concurrency_limit"] = ONE_AT_A_TIME
        deployments.append(
            spec.flow.to_deployment(
                name=spec.name, parameters=spec.parameters, tags=list(spec.tags), **options
            )
        )
    # Called outside an event loop, `to_deployment` returns the deployment, not a coroutine.
    return [cast(RunnerDeployment, deployment) for deployment in deployments]


# ---- prefect.yaml ------------------------------------------------------------------------

REPOSITORY_ROOT = Path(__file__).resolve().parents[5]
LOCAL_POOL = "facefleet-local"
PRODUCTION_POOL = Names().work_pool
PRODUCTION_POOL_TYPE = "ecs"  # prefect-aws ECS worker (push pools are Prefect Cloud only)
PRODUCTION_NAME = "production"
# Flows the production runtime does not run (its task role has no cloudformation:*).
NOT_IN_PRODUCTION = frozenset({"provision"})

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


@dataclass(frozen=True)
class ProductionRuntime:
    """Where production flow runs go: the stack outputs FlowsImageUri, FlowsTaskRoleArn,
    FlowsExecutionRoleArn, FlowsClusterName, FlowsLogGroupName, AlertsTopicArn; the subnets and
    security group of the stack's network (for the Fargate tasks)."""

    image: str
    task_role_arn: str
    execution_role_arn: str | None = None
    cluster: str | None = None
    log_group: str | None = None
    subnets: tuple[str, ...] = ()
    security_groups: tuple[str, ...] = ()
    alerts_topic_arn: str | None = None
    region: str | None = None

    @classmethod
    def from_outputs(cls, outputs: dict[str, str], **extra: Any) -> ProductionRuntime:
        security_group = outputs.get("WorkerSecurityGroupId")
        return cls(
            image=outputs["FlowsImageUri"],
            task_role_arn=outputs["FlowsTaskRoleArn"],
            execution_role_arn=outputs.get("FlowsExecutionRoleArn"),
            cluster=outputs.get("FlowsClusterName"),
            log_group=outputs.get("FlowsLogGroupName"),
            security_groups=(security_group,) if security_group else (),
            alerts_topic_arn=outputs.get("AlertsTopicArn"),
            region=outputs.get("Region"),
            **extra,
        )

    def job_variables(self) -> dict[str, Any]:
        variables: dict[str, Any] = {
            "image": self.image,
            "task_role_arn": self.task_role_arn,
            "launch_type": "FARGATE",
            "env": {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"},
        }
        if self.alerts_topic_arn:
            variables["env"]["ALERTS_TOPIC_ARN"] = self.alerts_topic_arn
        if self.region:
            variables["env"]["AWS_DEFAULT_REGION"] = self.region
        if self.execution_role_arn:
            variables["execution_role_arn"] = self.execution_role_arn
        if self.cluster:
            variables["cluster"] = self.cluster
        if self.log_group:
            variables["configure_cloudwatch_logs"] = True
            variables["cloudwatch_logs_options"] = {
                "awslogs-group": self.log_group,
                "awslogs-stream-prefix": "flow-run",
            }
        if self.subnets:
            variables["network_configuration"] = {
                "subnets": list(self.subnets),
                "securityGroups": list(self.security_groups),
                "assignPublicIp": "DISABLED",
            }
        return variables


def production_deployments(
    runtime: ProductionRuntime,
    names: dict[str, Any] | None = None,
    *,
    pool: str = PRODUCTION_POOL,
    cutover_interval_min: int = CUTOVER_INTERVAL_MIN,
) -> list[RunnerDeployment]:
    """The production deployments (`mode: aws`), from the same `specs` as the local ones."""
    deployments = []
    for spec in specs(names, mode="aws", cutover_interval_min=cutover_interval_min):
        if spec.flow.name in NOT_IN_PRODUCTION:
            continue
        options: dict[str, Any] = {}
        if spec.interval_s is not None:
            options["interval"] = spec.interval_s
        if spec.cron is not None:
            options["cron"] = spec.cron
        if spec.description is not None:
            options["description"] = spec.description
        if spec.one_at_a_time:
            options["concurrency_limit"] = ONE_AT_A_TIME
        deployment = cast(
            RunnerDeployment,
            spec.flow.to_deployment(
                name=PRODUCTION_NAME,
                parameters=spec.parameters,
                tags=[*spec.tags, PRODUCTION_NAME],
                work_pool_name=pool,
                job_variables=runtime.job_variables(),
                entrypoint_type=EntrypointType.MODULE_PATH,
                **options,
            ),
        )
        deployments.append(deployment)
    return deployments


def ensure_production_pool(pool: str = PRODUCTION_POOL) -> str:
    """Create the ECS work pool (the prefect-aws worker's default job template) if missing;
    its type."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound
    from prefect_aws.workers.ecs_worker import ECSWorker

    with get_client(sync_client=True) as client:
        try:
            return str(client.read_work_pool(pool).type)
        except ObjectNotFound:
            created = client.create_work_pool(
                WorkPoolCreate(
                    name=pool,
                    type=PRODUCTION_POOL_TYPE,
                    base_job_template=ECSWorker.get_default_base_job_template(),
                    description="FaceFleet production flows: Fargate tasks from the flows image",
                )
            )
            return str(created.type)


def deploy_production(
    runtime: ProductionRuntime,
    names: dict[str, Any] | None = None,
    *,
    pool: str = PRODUCTION_POOL,
) -> dict[str, str]:
    """Register the production deployments on `pool` (created when missing); name -> id."""
    ensure_production_pool(pool)
    registered = {}
    for deployment in production_deployments(runtime, names, pool=pool):
        deployment_id = deployment.apply()
        registered[f"{deployment.flow_name}/{deployment.name}"] = str(deployment_id)
    return registered


def serve_all(deployments: list[RunnerDeployment], limit: int | None = None) -> None:
    """Register the deployments and run their scheduled and manual runs until interrupted."""
    serve(*deployments, limit=limit)


if __name__ == "__main__":
    serve_all(build())
