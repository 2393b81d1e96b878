"""What a role's policies allow (read, not simulated), and the ECS task role's access to the
ECS queue."""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Iterable, Mapping
from typing import Any

from facefleet.common.aws import AwsTarget
from facefleet.infra.doctor.check import Check
from facefleet.infra.stack_config import StackConfig

# What a job role does on its queue (the queue policy of a queue in another account must allow).
CONSUME_ACTIONS = ("sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:ChangeMessageVisibility")


def _statements(document: Any) -> list[Mapping[str, Any]]:
    if isinstance(document, str):
        document = json.loads(document)
    found = document.get("Statement", [])
    return found if isinstance(found, list) else [found]


def _role_statements(iam: Any, role_name: str) -> list[Mapping[str, Any]]:
    statements: list[Mapping[str, Any]] = []
    for page in iam.get_paginator("list_role_policies").paginate(RoleName=role_name):
        for policy_name in page["PolicyNames"]:
            document = iam.get_role_policy(RoleName=role_name, PolicyName=policy_name)
            statements += _statements(document["PolicyDocument"])
    for page in iam.get_paginator("list_attached_role_policies").paginate(RoleName=role_name):
        for attached in page["AttachedPolicies"]:
            arn = attached["PolicyArn"]
            version = iam.get_policy(PolicyArn=arn)["Policy"]["DefaultVersionId"]
            document = iam.get_policy_version(PolicyArn=arn, VersionId=version)
            statements += _statements(document["PolicyVersion"]["Document"])
    return statements


def _matches(patterns: Any, value: str) -> bool:
    items = patterns if isinstance(patterns, list) else [patterns]
    return any(fnmatch.fnmatchcase(value.lower(), str(p).lower()) for p in items)


def role_allows(aws: AwsTarget, role_arn: str, actions: Iterable[str], resource: str) -> bool:
    """Do the role's own policies (inline and attached) allow every action on `resource`?
    Read, not simulated (iam:SimulatePrincipalPolicy is a separate grant few operators
    hold): conditions, permission boundaries and SCPs are not evaluated; an explicit Deny
    for the action and resource counts."""
    statements = _role_statements(aws.client("iam"), role_arn.rsplit("/", 1)[-1])

    def applies(stmt: Mapping[str, Any], action: str) -> bool:
        return _matches(stmt.get("Action", []), action) and _matches(
            stmt.get("Resource", []), resource
        )

    for action in actions:
        if any(s.get("Effect") == "Deny" and applies(s, action) for s in statements):
            return False
        if not any(s.get("Effect") == "Allow" and applies(s, action) for s in statements):
            return False
    return True


def ecs_task_role_access(
    config: StackConfig, aws: AwsTarget, account: str, ecs_queue_arn: str
) -> list[Check]:
    """The existing ECS service's task role may consume the queue `move-ecs-queue` points it
    at (the ECS queue): otherwise the service stops processing at the cutover's start."""
    if not config.ecs_service_arn or not config.router:
        return []
    service_arn = config.ecs_service_arn
    path = service_arn.split(":", 5)[-1].split("/")  # service/cluster/name or service/name
    cluster, service = (path[1], path[2]) if len(path) == 3 else ("default", path[-1])
    name = f"ECS service {service} task role"
    ecs = aws.client("ecs")
    found = ecs.describe_services(cluster=cluster, services=[service_arn])["services"]
    if not found:
        return [Check(name, False, f"{service_arn} not found: fix --ecs-service-arn")]
    definition = ecs.describe_task_definition(taskDefinition=found[0]["taskDefinition"])
    role_arn = definition["taskDefinition"].get("taskRoleArn")
    if not role_arn:
        return [Check(name, False, f"{service} has no task role: it cannot read any queue")]
    if role_arn.split(":")[4] != account:
        return [Check(name, False, f"{role_arn} is in another account: check it there")]
    if role_allows(aws, role_arn, ECS_CONSUME_ACTIONS, ecs_queue_arn):
        return [Check(name, True, f"{role_arn} may consume {ecs_queue_arn}")]
    statement = {"Effect": "Allow", "Action": list(ECS_CONSUME_ACTIONS), "Resource": ecs_queue_arn}
    return [
        Check(
            name,
            False,
            f"{role_arn} may not consume {ecs_queue_arn} (the queue move-ecs-queue points the "
            f"service at): add {json.dumps(statement)}",
        )
    ]


ECS_CONSUME_ACTIONS = (*CONSUME_ACTIONS, "sqs:GetQueueAttributes")
