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

Production uses a work pool instead (see `prefect.yaml` at the repository root): `prefect deploy
--all` registers the same flows on an ECS push pool (`facefleet-ecs`, type `ecs:push`; flow runs
as Fargate tasks with a task role that may call Batch, SQS, SSM, CloudWatch and SNS) with
`mode: aws`, so Batch runs the jobs and nothing runs locally.
"""

from __future__ import annotations

from typing import Any, cast

from prefect import serve
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
    common = {"names": names} if names else {}
    dispatch_params: dict[str, Any] = {**common, "mode": mode}
    if local_batch_dir:
        dispatch_params["local_batch_dir"] = local_batch_dir
    tags = ["facefleet", mode]
    deployments = [
        dispatch.to_deployment(
            name=mode,
            interval=dispatch_interval_s,
            parameters=dispatch_params,
            tags=tags,
            description="Queue depth -> Batch jobs (policy.decide) every minute.",
            concurrency_limit=ONE_AT_A_TIME,
        ),
        cutover.to_deployment(
            name="scheduled",
            interval=cutover_interval_min * 60 if cutover_schedule else None,
            parameters=common,
            tags=tags,
            description="Evaluate the cutover stage against its health gates and apply it.",
            concurrency_limit=ONE_AT_A_TIME,
        ),
        rollback_flow.to_deployment(name="manual", parameters=common, tags=tags),
        pause_flow.to_deployment(name="manual", parameters=common, tags=tags),
        resume_flow.to_deployment(name="manual", parameters=common, tags=tags),
        provision.to_deployment(
            name=mode, parameters={**common, "local": mode == "local"}, tags=tags
        ),
        spot_savings.to_deployment(
            name="hourly",
            cron=SAVINGS_CRON,
            parameters=common,
            tags=tags,
            description="The previous hour's Spot saving and $/1000 images, as metrics.",
        ),
    ]
    # Called outside an event loop, `to_deployment` returns the deployment, not a coroutine.
    return [cast(RunnerDeployment, deployment) for deployment in deployments]


def serve_all(deployments: list[RunnerDeployment], limit: int | None = None) -> None:
    """Register the deployments and run their scheduled and manual runs until interrupted."""
    serve(*deployments, limit=limit)


if __name__ == "__main__":
    serve_all(build())
