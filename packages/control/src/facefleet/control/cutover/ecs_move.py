"""The cutover's first step, done whole: the existing ECS service moves from the ingress queue
(the one producers write to) to the stack's ECS queue, and back.

Moving means four things, each verified by `check` (what `facefleet cutover status` prints):
1. a new task definition revision that is the current one in every field `RegisterTaskDefinition`
   accepts (read from the API model, so a field AWS adds later is copied too) but QUEUE_URL, and
   the service updated to it;
2. the service's task role may consume the new queue: an inline policy on the role when the
   caller may put one, else the exact policy JSON for the role's owner to add (a role in another
   account always); once added, `--task-role-granted` records the operator's confirmation, and
   `check` verifies by IAM policy simulation where it is permitted, else reports the grant as
   operator-confirmed;
3. the service's scaling alarms (CloudWatch alarms whose actions are the service's Application
   Auto Scaling policies and whose dimensions name the old queue) watch the new queue;
4. only then the router's SQS event source mapping is enabled (it is created disabled: enabled
   earlier, it would fill a queue nobody reads).

`back=True` undoes it in the reverse order: the mapping disabled first, then alarms, role policy
and task definition back to the queue recorded at the move.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError

from facefleet.common.aws import AwsTarget
from facefleet.common.names import Names
from facefleet.control import observe, router
from facefleet.control.cutover.ecs_task_role import (
    error_code,
    put_grant,
    record_granted,
    remove_grant,
    role_access,
)

log = logging.getLogger(__name__)

QUEUE_URL_VARIABLE = "QUEUE_URL"


def previous_parameter(names: Names) -> str:
    """Where the move records the queue the service read before (for `--back`)."""
    return router.parameter(names, "ecs-previous-queue-url")


@dataclass(frozen=True)
class MoveReport:
    queue_url: str
    previous_url: str | None
    task_definition: str
    role_policy: str  # "put on ROLE", "removed from ROLE", or the policy JSON to add by hand
    role_policy_added: bool
    alarms: tuple[str, ...]
    mapping: str  # "enabled", "disabled", "none" (no router function), or why it was not


@dataclass(frozen=True)
class MoveCheck:
    """Whether the ECS service reads `expected` in every respect (None: could not be read)."""

    reads: str | None
    expected: str
    role_access: bool | None
    alarms_on_old: tuple[str, ...]
    mapping_enabled: bool | None
    role_how: str = ""  # how role_access was judged (inline policy, simulation, operator)

    @property
    def moved(self) -> bool:
        return (
            self.reads == self.expected
            and self.role_access is not False
            and not self.alarms_on_old
            and self.mapping_enabled is not False
        )


def _service(cluster: str, service: str, aws: AwsTarget) -> dict[str, Any]:
    found = aws.client("ecs").describe_services(cluster=cluster, services=[service])["services"]
    if not found:
        raise LookupError(f"ECS service {service} not found in cluster {cluster}")
    return dict(found[0])


def _task_definition(arn: str, aws: AwsTarget) -> tuple[dict[str, Any], list[Any]]:
    described = aws.client("ecs").describe_task_definition(taskDefinition=arn, include=["TAGS"])
    return dict(described["taskDefinition"]), list(described.get("tags") or [])


def ecs_queue_url(cluster: str, service: str, aws: AwsTarget) -> str | None:
    """The QUEUE_URL the ECS service's task definition gives its containers (None: unset)."""
    definition, _ = _task_definition(_service(cluster, service, aws)["taskDefinition"], aws)
    for container in definition["containerDefinitions"]:
        for variable in container.get("environment", []):
            if variable.get("name") == QUEUE_URL_VARIABLE:
                return str(variable.get("value"))
    return None


def _accepted(client: Any, operation: str) -> set[str]:
    """The request fields an API operation accepts, from botocore's model of it."""
    return set(client.meta.service_model.operation_model(operation).input_shape.members)


def revision_request(
    definition: Mapping[str, Any], tags: list[Any], queue_url: str, accepted: set[str]
) -> dict[str, Any]:
    """The RegisterTaskDefinition request of `definition` with QUEUE_URL set to `queue_url`:
    every field the call accepts is copied (pure, for the tests)."""
    request = {k: v for k, v in definition.items() if k in accepted and v not in (None, [], {})}
    containers = []
    for container in definition["containerDefinitions"]:
        environment = [
            v for v in container.get("environment", []) if v.get("name") != QUEUE_URL_VARIABLE
        ]
        environment.append({"name": QUEUE_URL_VARIABLE, "value": queue_url})
        containers.append({**container, "environment": environment})
    request["containerDefinitions"] = containers
    if tags:
        request["tags"] = tags
    return request


def queue_arn(queue_url: str, aws: AwsTarget) -> str:
    attributes = aws.client("sqs").get_queue_attributes(
        QueueUrl=queue_url, AttributeNames=["QueueArn"]
    )["Attributes"]
    return str(attributes["QueueArn"])


def _queue_name(url: str) -> str:
    return url.rstrip("/").rsplit("/", 1)[-1]


def _scaling_policy_arns(cluster: str, service: str, aws: AwsTarget) -> set[str]:
    scaling = aws.client("application-autoscaling")
    resource = f"service/{cluster.rsplit('/', 1)[-1]}/{service.rsplit('/', 1)[-1]}"
    policies = scaling.describe_scaling_policies(ServiceNamespace="ecs", ResourceId=resource)
    return {p["PolicyARN"] for p in policies.get("ScalingPolicies", [])}


def _dimensions(alarm: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    yield from alarm.get("Dimensions", [])
    for query in alarm.get("Metrics", []):
        yield from query.get("MetricStat", {}).get("Metric", {}).get("Dimensions", [])


def service_alarms(cluster: str, service: str, queue_url: str, aws: AwsTarget) -> list[Any]:
    """The service's scaling alarms that watch `queue_url`."""
    policies = _scaling_policy_arns(cluster, service, aws)
    if not policies:
        return []
    name = _queue_name(queue_url)
    found = []
    for page in aws.client("cloudwatch").get_paginator("describe_alarms").paginate():
        for alarm in page.get("MetricAlarms", []):
            actions = {*alarm.get("AlarmActions", []), *alarm.get("OKActions", [])}
            watches = any(
                d.get("Name") == "QueueName" and d.get("Value") == name for d in _dimensions(alarm)
            )
            if watches and actions & policies:
                found.append(alarm)
    return found


def _repoint(alarms: list[Any], new_url: str, aws: AwsTarget) -> tuple[str, ...]:
    cloudwatch = aws.client("cloudwatch")
    accepted = _accepted(cloudwatch, "PutMetricAlarm")
    new_name = _queue_name(new_url)
    moved = []
    for alarm in alarms:
        request = json.loads(json.dumps({k: v for k, v in alarm.items() if k in accepted}))
        for dimension in _dimensions(request):
            if dimension.get("Name") == "QueueName":
                dimension["Value"] = new_name
        cloudwatch.put_metric_alarm(**request)
        moved.append(str(alarm["AlarmName"]))
    return tuple(moved)


ROUTER_EVENT_SOURCE = "RouterEventSource"  # the mapping's logical id in the stack


def _mapping(names: Names, aws: AwsTarget) -> tuple[str | None, bool | None]:
    """The stack's router event source mapping (uuid, enabled), or (None, None) without one
    (no stack, or a stack whose router runs as a process)."""
    cloudformation = aws.client("cloudformation")
    try:
        pages = cloudformation.get_paginator("list_stack_resources").paginate(
            StackName=names.stack_name
        )
        found = [
            r
            for page in pages
            for r in page.get("StackResourceSummaries", [])
            if r["LogicalResourceId"] == ROUTER_EVENT_SOURCE
        ]
    except ClientError as error:
        if "does not exist" in str(error):
            return None, None
        raise
    if not found:
        return None, None
    resource = found[0]
    uuid = str(resource["PhysicalResourceId"])
    mapping = aws.client("lambda").get_event_source_mapping(UUID=uuid)
    return uuid, mapping.get("State") in ("Enabled", "Enabling")


def set_router_mapping(names: Names, aws: AwsTarget, enabled: bool) -> str:
    uuid, _ = _mapping(names, aws)
    if uuid is None:
        return "none"
    aws.client("lambda").update_event_source_mapping(UUID=uuid, Enabled=enabled)
    return "enabled" if enabled else "disabled"


def _register(
    cluster: str,
    service: str,
    current: Mapping[str, Any],
    tags: list[Any],
    url: str,
    aws: AwsTarget,
) -> str:
    ecs = aws.client("ecs")
    request = revision_request(current, tags, url, _accepted(ecs, "RegisterTaskDefinition"))
    arn = str(ecs.register_task_definition(**request)["taskDefinition"]["taskDefinitionArn"])
    ecs.update_service(cluster=cluster, service=service, taskDefinition=arn)
    return arn


def move_ecs_queue(
    names: Names,
    cluster: str,
    service: str,
    aws: AwsTarget,
    *,
    queue_url: str | None = None,
    back: bool = False,
    role_granted: bool = False,
) -> MoveReport:
    """Move the service to `queue_url` (default: the stack's ECS queue), or `back` to the queue
    it read before the move (or `queue_url` when given). Idempotent: a second run finds each
    part done and redoes nothing but the checks. `role_granted`: the operator confirms the
    task role's owner added the printed policy (a role this caller may not change)."""
    ssm = aws.client("ssm")
    if back:
        target = (
            queue_url or ssm.get_parameter(Name=previous_parameter(names))["Parameter"]["Value"]
        )
    else:
        target = queue_url or observe.stack_queue_url(
            names, aws, "EcsIndexingQueueUrl", names.ecs_indexing_queue
        )
    mapping = set_router_mapping(names, aws, False) if back else "unchanged"
    definition, tags = _task_definition(_service(cluster, service, aws)["taskDefinition"], aws)
    previous = ecs_queue_url(cluster, service, aws)
    arn = str(definition["taskDefinitionArn"])
    if previous != target:
        arn = _register(cluster, service, definition, tags, target, aws)
        if not back and previous:
            ssm.put_parameter(
                Name=previous_parameter(names), Value=previous, Type="String", Overwrite=True
            )
    role = definition.get("taskRoleArn")
    if back:
        grant, added = remove_grant(role, aws), False
    else:
        grant, added = put_grant(role, queue_arn(target, aws), aws)
        if not added and role and role_granted:
            record_granted(names, role, queue_arn(target, aws), aws)
            grant += " (confirmed added: --task-role-granted)"
    alarms = (
        _repoint(service_alarms(cluster, service, previous, aws), target, aws) if previous else ()
    )
    if not back:
        # Enabled only once the service reads the ECS queue and may consume it.
        verified = ecs_queue_url(cluster, service, aws) == target
        may, _ = role_access(names, role, queue_arn(target, aws), aws)
        mapping = (
            set_router_mapping(names, aws, True)
            if verified and may is not False
            else ("left disabled: the move is not complete")
        )
    log.info("ECS service %s reads %s (was %s)", service, target, previous)
    return MoveReport(target, previous, arn, grant, added, alarms, mapping)


def check(
    names: Names, cluster: str, service: str, aws: AwsTarget, expected: str | None = None
) -> MoveCheck:
    """Whether the service reads `expected` (default: the stack's ECS queue) in every respect."""
    expected = expected or observe.stack_queue_url(
        names, aws, "EcsIndexingQueueUrl", names.ecs_indexing_queue
    )
    definition, _ = _task_definition(_service(cluster, service, aws)["taskDefinition"], aws)
    reads = ecs_queue_url(cluster, service, aws)
    previous = None
    try:
        previous = aws.client("ssm").get_parameter(Name=previous_parameter(names))["Parameter"][
            "Value"
        ]
    except ClientError as error:
        if error_code(error) != "ParameterNotFound":
            raise
    on_old = ()
    if previous and previous != expected:
        on_old = tuple(a["AlarmName"] for a in service_alarms(cluster, service, previous, aws))
    _, enabled = _mapping(names, aws)
    access, how = role_access(names, definition.get("taskRoleArn"), queue_arn(expected, aws), aws)
    return MoveCheck(
        reads=reads,
        expected=expected,
        role_access=access,
        alarms_on_old=on_old,
        mapping_enabled=enabled,
        role_how=how,
    )
