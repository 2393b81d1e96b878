"""Where the flows run in production.

Production (`production_deployments` / `deploy_production`, `facefleet flows deploy
--production`): the same specs with `mode: aws`, named `production`, on an ECS work pool
(`Names.work_pool`, type `ecs`, the prefect-aws ECS worker's job template; the stack runs that
worker as a Fargate service). Each flow run is a Fargate task from the flows image
(`FlowsImageUri`) with the stack's `FlowsTaskRoleArn`; entrypoints are module paths, importable
from the image's installed packages. `provision` is not deployed there: the flow task role has no
`cloudformation:*` (provisioning runs from a person's shell or CI).

Except dispatch: a Fargate task per minutely tick is ~1,440 image pulls a day and a minute of
start-up per tick. The stack's dispatch service (`python -m facefleet.flows.deployments
serve-production`, with the flow task role) serves `dispatch/production` with its schedule, so
each tick is a subprocess of that long-lived process; `prefect deployment run
dispatch/production` still works. Cutover, rollback and savings stay Fargate tasks: they run
every 10 minutes at most, and the rollback does not depend on the dispatcher's process.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

from prefect.deployments.runner import EntrypointType, RunnerDeployment

from facefleet.common.names import Names
from facefleet.flows.deployments import (
    CUTOVER_INTERVAL_MIN,
    DISPATCH_INTERVAL_S,
    SERVE_PRODUCTION_MODULE,
    deployment_options,
    serve_all,
    specs,
)

PRODUCTION_POOL = Names().work_pool
PRODUCTION_POOL_TYPE = "ecs"  # prefect-aws ECS worker (push pools are Prefect Cloud only)
PRODUCTION_NAME = "production"
# Flows the production runtime does not run (its task role has no cloudformation:*).
NOT_IN_PRODUCTION = frozenset({"provision"})
# Flows the stack's dispatch service serves in-process (`serve_production`), not on the pool.
SERVED_IN_PRODUCTION = frozenset({"dispatch"})


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
    """The production deployments on the ECS pool (`mode: aws`), from the same `specs` as the
    local ones; not dispatch, which the stack's dispatch service serves."""
    deployments = []
    for spec in specs(names, mode="aws", cutover_interval_min=cutover_interval_min):
        if spec.flow.name in NOT_IN_PRODUCTION | SERVED_IN_PRODUCTION:
            continue
        deployment = cast(
            RunnerDeployment,
            spec.flow.to_deployment(
                name=PRODUCTION_NAME,
                parameters=spec.parameters,
                tags=[*spec.tags, PRODUCTION_NAME],
                work_pool_name=pool,
                job_variables=runtime.job_variables(),
                entrypoint_type=EntrypointType.MODULE_PATH,
                **deployment_options(spec),
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


def served_production_deployments(
    names: dict[str, Any] | None = None, *, dispatch_interval_s: int = DISPATCH_INTERVAL_S
) -> list[RunnerDeployment]:
    """What the stack's dispatch service serves: `dispatch/production` (`mode: aws`), its
    schedule and one-at-a-time limit, on no work pool (the serving process runs its runs)."""
    return [
        cast(
            RunnerDeployment,
            spec.flow.to_deployment(
                name=PRODUCTION_NAME,
                parameters=spec.parameters,
                tags=[*spec.tags, PRODUCTION_NAME],
                **deployment_options(spec),
            ),
        )
        for spec in specs(names, mode="aws", dispatch_interval_s=dispatch_interval_s)
        if spec.flow.name in SERVED_IN_PRODUCTION
    ]


def forget_pool_registrations(deployments: list[RunnerDeployment]) -> list[str]:
    """Delete these deployments where they are registered on a work pool (a stack upgraded
    from a Fargate task per tick): the ECS worker would otherwise race the serving process for
    each run. Their `flow/name`s."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    forgotten = []
    with get_client(sync_client=True) as client:
        for deployment in deployments:
            name = f"{deployment.flow_name}/{deployment.name}"
            try:
                found = client.read_deployment_by_name(name)
            except ObjectNotFound:
                continue
            if found.work_pool_name:
                client.delete_deployment(found.id)
                forgotten.append(name)
    return forgotten


def serve_production(
    names: dict[str, Any] | None = None, *, dispatch_interval_s: int = DISPATCH_INTERVAL_S
) -> None:
    """The dispatch service's process: serve `dispatch/production` until stopped."""
    deployments = served_production_deployments(names, dispatch_interval_s=dispatch_interval_s)
    for name in forget_pool_registrations(deployments):
        print(f"removed {name} from its work pool: this process serves it now")
    # ECS starts the new task before it stops the old one (a rolling deployment): the old
    # one's shutdown must not pause the schedule the new one serves.
    serve_all(deployments, pause_on_shutdown=False)


def serve_production_command(names: dict[str, Any] | None = None) -> list[str]:
    """The dispatch service's container command (the flows image has no `facefleet` CLI)."""
    command = ["python", "-m", SERVE_PRODUCTION_MODULE, "serve-production"]
    for key in ("prefix", "grouping_prefix"):
        if names and names.get(key):
            command += [f"--{key.replace('_', '-')}", str(names[key])]
    return command
