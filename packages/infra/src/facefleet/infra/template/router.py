"""The cutover router: the ingress and ECS queues, the router Lambda on the ingress queue (SQS
event source, partial-batch failures), its least-privilege role, its alarms.

The ingress queue is the one producers already write to: in production the existing service's
indexing queue (`StackConfig.ingress_queue`, referenced, never created); otherwise the stack
creates `Names.ingress_queue`. The ECS service's own queue (`Names.ecs_indexing_queue`, with a
dead-letter queue) is always created: moving the service's QUEUE_URL there is the cutover's first
step (docs/infra.md, "Cutover").

The event source mapping is created disabled: enabled at weight 0 it would move production
messages to the ECS queue before the ECS service reads it. `facefleet cutover move-ecs-queue`
enables it once the move is verified (and `--back` disables it first). Its
`ScalingConfig.MaximumConcurrency` caps the router's share of the account's concurrency
(2-1,000; without it the mapping may take up to 1,000), and the function timeout fits
`VISIBILITY_TIMEOUT_FACTOR` times in the ingress queue's visibility timeout (Lambda developer
guide, "Using Lambda with Amazon SQS": at least the function timeout, 6x recommended; doctor
checks an existing ingress queue).

The router role may receive and delete on the ingress queue (GetQueueAttributes too, which the
event source mapping needs to poll), send to the two targets, read the weight parameter, and
write its own logs: nothing else. Its routed-per-side counts are EMF lines in those logs.
"""

from __future__ import annotations

from typing import Any

from facefleet.control.router import WEIGHT, parameter
from facefleet.infra.lambda_package import ROUTER_HANDLER, LambdaPackage
from facefleet.infra.stack_config import QueueRef, StackConfig, StackConfigError
from facefleet.infra.template.base import (
    INDEXING_QUEUE,
    LAMBDA_RUNTIME,
    Json,
    arn,
    assume_role,
    get_att,
    policy_document,
    ref,
    statement,
    tag_list,
)
from facefleet.infra.template.queues import Queues, queue_with_dead_letter

INGRESS_QUEUE = "IngressQueue"
ECS_QUEUE = "EcsIndexingQueue"
ROUTER_ROLE = "RouterFunctionRole"
ROUTER_FUNCTION = "RouterFunction"
ROUTER_EVENT_SOURCE = "RouterEventSource"
ROUTER_TIMEOUT_S = 30
# Concurrent router invocations at most: each forwards a batch in well under a second, so a few
# keep up with any upload burst (Lambda's SQS poller scales to this, not to 1,000).
ROUTER_MAX_CONCURRENCY = 5
VISIBILITY_TIMEOUT_FACTOR = 6  # AWS recommends a visibility timeout of 6x the function timeout


class RouterQueues:
    """Where the ingress and ECS queues' URL and ARN come from (the stack, or existing)."""

    def __init__(self, config: StackConfig) -> None:
        self.config = config
        self.ingress = (
            QueueRef.parse(config.ingress_queue, "us-east-1") if config.ingress_queue else None
        )

    def url(self, logical_id: str) -> Any:
        if logical_id == INGRESS_QUEUE and self.ingress is not None:
            return self.ingress.url
        return ref(logical_id)

    def arn(self, logical_id: str) -> Any:
        if logical_id == INGRESS_QUEUE and self.ingress is not None:
            return self.ingress.arn
        return get_att(logical_id, "Arn")

    def name(self, logical_id: str) -> Any:
        if logical_id == INGRESS_QUEUE and self.ingress is not None:
            return self.ingress.name
        return get_att(logical_id, "QueueName")


def router_statements(config: StackConfig, queues: Queues, routed: RouterQueues) -> list[Json]:
    names = config.names
    return [
        statement(
            ["sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:GetQueueAttributes"],
            [routed.arn(INGRESS_QUEUE)],
        ),
        statement(["sqs:SendMessage"], [routed.arn(ECS_QUEUE), queues.arn(INDEXING_QUEUE)]),
        statement(["ssm:GetParameter"], [arn("ssm", f"parameter{parameter(names, WEIGHT)}")]),
        statement(
            ["logs:CreateLogStream", "logs:PutLogEvents"],
            [arn("logs", f"log-group:/aws/lambda/{names.router_function}:*")],
        ),
    ]


def _alarm(config: StackConfig, description: str, **properties: Any) -> Json:
    return {
        "Type": "AWS::CloudWatch::Alarm",
        "Properties": {
            "AlarmDescription": description,
            "AlarmActions": [ref("AlertsTopic")],
            "OKActions": [ref("AlertsTopic")],
            "EvaluationPeriods": 5,
            "Period": 60,
            "TreatMissingData": "notBreaching",
            **properties,
        },
    }


def router_resources(
    config: StackConfig, queues: Queues, package: LambdaPackage | None, code_bucket: Any
) -> Json:
    """The router's queues, and with `config.router_lambda` its function, event source mapping,
    role, log group and alarms (`package`: the router zip; only its key is used)."""
    names = config.names
    routed = RouterQueues(config)
    resources: Json = queue_with_dead_letter(config, ECS_QUEUE, names.ecs_indexing_queue)
    if routed.ingress is None:
        resources.update(queue_with_dead_letter(config, INGRESS_QUEUE, names.ingress_queue))
    if not config.router_lambda:
        return resources
    if package is None:
        raise ValueError("the router Lambda needs its package (lambda_package.build_router())")
    if routed.ingress is None and config.queue_visibility_timeout_s < ROUTER_TIMEOUT_S:
        # Lambda refuses an SQS event source whose visibility timeout is below its timeout.
        raise StackConfigError(
            f"queue_visibility_timeout_s={config.queue_visibility_timeout_s}: the router's "
            f"ingress queue needs a visibility timeout of at least {ROUTER_TIMEOUT_S} s "
            f"({VISIBILITY_TIMEOUT_FACTOR * ROUTER_TIMEOUT_S} s recommended)"
        )
    function = names.router_function
    resources.update(
        {
            "RouterLogGroup": {
                "Type": "AWS::Logs::LogGroup",
                "Properties": {
                    "LogGroupName": f"/aws/lambda/{function}",
                    "RetentionInDays": config.log_retention_days,
                },
            },
            ROUTER_ROLE: {
                "Type": "AWS::IAM::Role",
                "Properties": {
                    "AssumeRolePolicyDocument": assume_role("lambda.amazonaws.com"),
                    "Policies": [
                        {
                            "PolicyName": "facefleet-router",
                            "PolicyDocument": policy_document(
                                router_statements(config, queues, routed)
                            ),
                        }
                    ],
                    "Tags": tag_list(config),
                },
            },
            ROUTER_FUNCTION: {
                "Type": "AWS::Lambda::Function",
                "DependsOn": ["RouterLogGroup"],
                "Properties": {
                    "FunctionName": function,
                    "Description": "FaceFleet cutover router: ingress -> ECS or Batch, by user",
                    "Runtime": LAMBDA_RUNTIME,
                    "Handler": ROUTER_HANDLER,
                    "Code": {"S3Bucket": code_bucket, "S3Key": package.key},
                    "Role": get_att(ROUTER_ROLE, "Arn"),
                    "Timeout": ROUTER_TIMEOUT_S,
                    "MemorySize": 256,
                    "Environment": {
                        "Variables": {
                            "FACEFLEET_PREFIX": names.prefix,
                            "FACEFLEET_GROUPING_PREFIX": names.grouping_prefix,
                            "ECS_QUEUE_URL": routed.url(ECS_QUEUE),
                            "BATCH_QUEUE_URL": queues.url(INDEXING_QUEUE),
                            "WEIGHT_CACHE_S": "30",
                            "METRICS_NAMESPACE": names.metrics_namespace,
                        }
                    },
                    "Tags": tag_list(config),
                },
            },
            ROUTER_EVENT_SOURCE: {
                "Type": "AWS::Lambda::EventSourceMapping",
                "Properties": {
                    "EventSourceArn": routed.arn(INGRESS_QUEUE),
                    "FunctionName": ref(ROUTER_FUNCTION),
                    "BatchSize": config.router_batch_size,
                    "MaximumBatchingWindowInSeconds": 1,
                    # Only the failed messages of a batch return to the ingress queue.
                    "FunctionResponseTypes": ["ReportBatchItemFailures"],
                    "ScalingConfig": {"MaximumConcurrency": ROUTER_MAX_CONCURRENCY},
                    # Enabled by `facefleet cutover move-ecs-queue` once the ECS service reads
                    # the ECS queue (the router would otherwise fill a queue nobody reads).
                    "Enabled": False,
                },
            },
            "RouterErrorsAlarm": _alarm(
                config,
                "FaceFleet router: invocations failing (messages wait on the ingress queue)",
                Namespace="AWS/Lambda",
                MetricName="Errors",
                Dimensions=[{"Name": "FunctionName", "Value": function}],
                Statistic="Sum",
                Threshold=0,
                ComparisonOperator="GreaterThanThreshold",
                DatapointsToAlarm=3,
            ),
            "IngressAgeAlarm": _alarm(
                config,
                "FaceFleet router: the ingress queue's oldest message is getting old",
                Namespace="AWS/SQS",
                MetricName="ApproximateAgeOfOldestMessage",
                Dimensions=[{"Name": "QueueName", "Value": routed.name(INGRESS_QUEUE)}],
                Statistic="Maximum",
                Threshold=config.ingress_age_alarm_s,
                ComparisonOperator="GreaterThanThreshold",
                DatapointsToAlarm=5,
            ),
        }
    )
    return resources


def router_outputs(config: StackConfig) -> dict[str, tuple[Any, str]]:
    routed = RouterQueues(config)
    values: dict[str, tuple[Any, str]] = {
        "IngressQueueUrl": (routed.url(INGRESS_QUEUE), "the queue producers write to"),
        "EcsIndexingQueueUrl": (routed.url(ECS_QUEUE), "the ECS service's QUEUE_URL (cutover)"),
    }
    if config.router_lambda:
        values["RouterFunctionName"] = (ref(ROUTER_FUNCTION), "cutover router")
    return values
