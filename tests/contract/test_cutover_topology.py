"""The documented cutover topology (the existing indexing queue is the router's ingress queue,
the stack's own queue feeds Batch, a Prefect worker runs the flows, the ECS service is named):
rules AWS enforces that cfn-lint and moto do not.

- Lambda developer guide, "Using Lambda with Amazon SQS": the queue's visibility timeout must be
  at least the function timeout (6x recommended), and `ScalingConfig.MaximumConcurrency` (2 to
  1,000) caps the concurrent invocations an SQS event source takes from the account.
- The router's mapping is created disabled and enabled only by `move-ecs-queue` once the ECS
  service reads the ECS queue (docs/infra.md, "First deploy"): at weight 0 an enabled mapping
  moves production messages to a queue nobody reads yet.
- ECS developer guide, "Deployment circuit breaker": without it a service whose tasks cannot
  start keeps its deployment (and the CloudFormation stack) IN_PROGRESS for hours.
- Service Authorization Reference: dispatch's lease is a DynamoDB PutItem/DeleteItem on the
  lease table; reading the stack's outputs is `cloudformation:DescribeStacks` on the stack's ARN.
  The recorded calls of the whole runbook are judged in tests/test_rehearsal.py.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from facefleet.infra import template
from facefleet.infra.stack_config import StackConfig
from tests.contract.conftest import EXISTING_GROUP_FACE, EXISTING_INDEXING, PRODUCTION
from tests.contract.iam_support import Context, Request, allowed, role_policy

RECOMMENDED_FACTOR = 6  # visibility timeout / function timeout, as the Lambda guide recommends
ACCOUNT = "111122223333"
REGION = "ap-south-1"
ECS_SERVICE = f"arn:aws:ecs:{REGION}:{ACCOUNT}:service/prod/indexer"

CUTOVER = replace(
    PRODUCTION,
    indexing_queue=None,  # the stack's own queue feeds Batch
    ingress_queue=EXISTING_INDEXING,  # producers keep writing where they do
    group_face_queue=EXISTING_GROUP_FACE,
    prefect_api_url="https://prefect.example/api",
    ecs_service_arn=ECS_SERVICE,
)
# The stack creates its own ingress queue when none exists (the visibility rule applies there).
OWN_INGRESS = replace(CUTOVER, ingress_queue=None)


def _resources(config: StackConfig, kind: str) -> dict[str, Any]:
    rendered = template.render(config)
    return {k: v["Properties"] for k, v in rendered["Resources"].items() if v["Type"] == kind}


@pytest.mark.parametrize("config", [CUTOVER, OWN_INGRESS], ids=["existing", "own"])
def test_router_mapping_is_created_disabled_with_a_concurrency_cap(config: StackConfig) -> None:
    mappings = _resources(config, "AWS::Lambda::EventSourceMapping")
    router = mappings["RouterEventSource"]
    assert router["Enabled"] is False
    assert 2 <= router["ScalingConfig"]["MaximumConcurrency"] <= 1000


def test_router_timeout_fits_the_ingress_visibility_timeout_six_times() -> None:
    function = _resources(OWN_INGRESS, "AWS::Lambda::Function")["RouterFunction"]
    queue = _resources(OWN_INGRESS, "AWS::SQS::Queue")["IngressQueue"]
    assert queue["VisibilityTimeout"] >= RECOMMENDED_FACTOR * function["Timeout"]
    # A visibility timeout below the function timeout is refused outright by Lambda: the
    # stack's setting must not be able to go there either.
    short = replace(OWN_INGRESS, queue_visibility_timeout_s=function["Timeout"] - 1)
    with pytest.raises(ValueError, match="visibility"):
        template.render(short)


def test_every_ecs_service_has_a_circuit_breaker_with_rollback() -> None:
    services = _resources(CUTOVER, "AWS::ECS::Service")
    assert services, "the cutover rendering has the Prefect worker service"
    for name, service in services.items():
        breaker = service.get("DeploymentConfiguration", {}).get("DeploymentCircuitBreaker")
        assert breaker == {"Enable": True, "Rollback": True}, name


def _flows_policy() -> dict[str, Any]:
    rendered = template.render(CUTOVER)
    context = Context(
        REGION,
        ACCOUNT,
        refs={
            "PrimaryJobQueue": f"arn:aws:batch:{REGION}:{ACCOUNT}:job-queue/p",
            "SecondaryJobQueue": f"arn:aws:batch:{REGION}:{ACCOUNT}:job-queue/s",
            "AlertsTopic": f"arn:aws:sns:{REGION}:{ACCOUNT}:alerts",
        },
        attributes={
            "DispatchLeaseTable.Arn": f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/lease",
            "IndexingQueue.Arn": f"arn:aws:sqs:{REGION}:{ACCOUNT}:indexing",
            "IndexingQueueDeadLetter.Arn": f"arn:aws:sqs:{REGION}:{ACCOUNT}:indexing-dlq",
            "EcsIndexingQueue.Arn": f"arn:aws:sqs:{REGION}:{ACCOUNT}:ecs",
        },
    )
    return role_policy(rendered, "FlowsTaskRole", context)


def test_flows_task_role_may_take_the_lease_and_read_its_stack_only() -> None:
    policy = _flows_policy()
    stack = CUTOVER.names.stack_name
    table = f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/lease"
    for action in ("dynamodb:PutItem", "dynamodb:DeleteItem"):
        assert allowed(policy, Request(action, table)), action
    own = f"arn:aws:cloudformation:{REGION}:{ACCOUNT}:stack/{stack}/0a1b2c"
    assert allowed(policy, Request("cloudformation:DescribeStacks", own))
    other = f"arn:aws:cloudformation:{REGION}:{ACCOUNT}:stack/other/0a1b2c"
    assert not allowed(policy, Request("cloudformation:DescribeStacks", other))
    for action in ("cloudformation:UpdateStack", "dynamodb:Scan"):
        assert not allowed(policy, Request(action, "*")), action
