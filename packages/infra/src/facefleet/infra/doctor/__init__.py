"""`facefleet infra doctor`: a read-only preflight before the first deploy (and any later one).

Each check reads the account (never writes) and ends `ok` or `todo` with what to do:

- Spot vCPU quota for G instances in the region (Service Quotas L-3819A6DF, "All G and VT Spot
  Instance Requests") against what the compute environments may launch;
- every subnet has a way out: a default route to an internet or NAT gateway, or every VPC
  endpoint a container instance needs (ecs, ecs-agent, ecs-telemetry, ecr.api, ecr.dkr, logs,
  secretsmanager, sqs, monitoring, and the S3 gateway on the subnet's route table);
- AWS Batch's service-linked role (apply creates it when absent);
- the MongoDB secrets (existing ARNs) are there, or the URIs to create them are set;
- the alerts topic has a confirmed subscription (an email one stays PendingConfirmation until
  someone clicks the link);
- the gallery bucket sends the events deploy configures (`gallery_notification_events`:
  deletions only by default) to the indexing queue;
- the model pack is in the model bucket;
- the image tag the job definitions run is in ECR;
- an existing queue in another account has a queue policy that admits this account's job
  roles (a cross-account receive needs both the role's policy and the queue's);
- the existing ingress queue the router reads: its policy admits this account, its key lets a
  function in this account read it (never the AWS managed key across accounts; a customer key
  needs kms:Decrypt for the router role), its visibility timeout covers the router's timeout;
- the existing ECS service's task role may consume the ECS queue `move-ecs-queue` points it at;
- before a first create, every fixed name the template claims is free (ECR repositories,
  buckets including the global model bucket name, topics, queues, tables, log groups, secrets).

Every call is a read (Describe, Get, List, Head); role policies are read, not simulated.

Also printed: the command that reads the memory ECS really registers on a running instance, the
one figure of the instance facts table only a real instance can confirm.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from facefleet.common.aws import AwsTarget
from facefleet.infra import template
from facefleet.infra.doctor.batch import batch_service_linked_role, spot_quota
from facefleet.infra.doctor.check import Check, _error, _queue
from facefleet.infra.doctor.names import name_collisions
from facefleet.infra.doctor.network import subnets_route_out
from facefleet.infra.doctor.queues import foreign_queues, ingress_queue
from facefleet.infra.doctor.resources import (
    alerts_subscription,
    gallery_notification,
    image_tag,
    model_pack,
    secrets,
)
from facefleet.infra.doctor.roles import ecs_task_role_access
from facefleet.infra.lambda_package import ROUTER_HANDLER, LambdaPackage
from facefleet.infra.stack_config import StackConfig
from facefleet.infra.template.router import ROUTER_ROLE


def _rendered(config: StackConfig) -> dict[str, Any]:
    """The template `config` deploys; the Lambda zips' content does not matter here."""
    placeholder = LambdaPackage(b"", "0" * 64, ())
    return template.render(config, placeholder, placeholder)


def _router_timeout(rendered: Mapping[str, Any]) -> int | None:
    for resource in rendered["Resources"].values():
        props = resource.get("Properties", {})
        if resource["Type"] == "AWS::Lambda::Function" and props.get("Handler") == ROUTER_HANDLER:
            return int(props.get("Timeout", 3))
    return None


def _stack_resource(config: StackConfig, aws: AwsTarget, logical_id: str) -> str | None:
    """The physical id of one of the deployed stack's resources (None: not there)."""
    try:
        found = aws.client("cloudformation").describe_stack_resources(
            StackName=config.names.stack_name, LogicalResourceId=logical_id
        )["StackResources"]
    except ClientError:
        return None
    return next((str(r["PhysicalResourceId"]) for r in found if r.get("PhysicalResourceId")), None)


def _stack_outputs(config: StackConfig, aws: AwsTarget) -> dict[str, str]:
    try:
        stacks = aws.client("cloudformation").describe_stacks(StackName=config.names.stack_name)
    except ClientError:
        return {}
    return {o["OutputKey"]: o["OutputValue"] for o in stacks["Stacks"][0].get("Outputs", [])}


REGISTERED_MEMORY_COMMAND = (
    "aws ecs describe-container-instances --cluster <the compute environment's ecsClusterArn> "
    "--container-instances $(aws ecs list-container-instances --cluster <same> --query "
    "'containerInstanceArns[0]' --output text) --query "
    "'containerInstances[0].registeredResources[?name==`MEMORY`].integerValue'"
)


def run(
    config: StackConfig,
    aws: AwsTarget,
    *,
    environ: Mapping[str, str] | None = None,
    emit: Callable[[str], None] = print,
) -> list[Check]:
    """Every check, printed as it completes; the list comes back for callers and tests."""
    source = os.environ if environ is None else environ
    rendered = _rendered(config)  # also validates the config
    account = str(aws.client("sts").get_caller_identity()["Account"])
    outputs = _stack_outputs(config, aws)
    indexing = _queue(config.indexing_queue, aws.region)
    indexing_arn = indexing.arn if indexing else outputs.get("IndexingQueueArn")
    wants_router_role = outputs and config.router_lambda and config.ingress_queue
    router_role = _stack_resource(config, aws, ROUTER_ROLE) if wants_router_role else None
    router_role_arn = f"arn:aws:iam::{account}:role/{router_role}" if router_role else None
    ecs_queue_arn = f"arn:aws:sqs:{aws.region}:{account}:{config.names.ecs_indexing_queue}"
    checks: list[Check] = []

    def add(found: Check | list[Check]) -> None:
        for check in found if isinstance(found, list) else [found]:
            checks.append(check)
            emit(check.line())

    emit(
        f"facefleet infra doctor: account {account}, region {aws.region}, stack "
        f"{config.names.stack_name} ({'deployed' if outputs else 'not deployed yet'})"
    )
    steps: list[Callable[[], Check | list[Check]]] = [
        lambda: spot_quota(config, aws),
        lambda: subnets_route_out(config, aws),
        lambda: batch_service_linked_role(aws),
        lambda: secrets(config, aws, source),
        lambda: alerts_subscription(config, aws),
        lambda: gallery_notification(config, aws, indexing_arn),
        lambda: model_pack(config, aws),
        lambda: image_tag(config, aws),
        lambda: foreign_queues(config, aws, account),
        lambda: ingress_queue(config, aws, account, _router_timeout(rendered), router_role_arn),
        lambda: ecs_task_role_access(config, aws, account, ecs_queue_arn),
    ]
    if not outputs:
        steps.append(lambda: name_collisions(config, aws, rendered))
    for step in steps:
        try:
            add(step())
        except (ClientError, BotoCoreError) as error:  # a check that cannot run says so
            add(Check("check", False, f"could not run: {_error(error)}"))
    emit(
        f"info  registered memory on a running instance (the facts table's figure): "
        f"{REGISTERED_MEMORY_COMMAND}"
    )
    return checks
