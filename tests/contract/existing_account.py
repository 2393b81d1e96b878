"""The account as it is before FaceFleet arrives, on a moto server: the existing indexing and
GroupFace queues, the existing ECS service (cluster, service, a task definition with every
field `RegisterTaskDefinition` accepts set, its own task role, step-scaling alarms on its queue)
that reads the indexing queue. Used by the rehearsal and the `move-ecs-queue` tests."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from facefleet.common.aws import AwsTarget

ACCOUNT = "123456789012"  # moto's
CLUSTER = "prod"
SERVICE = "indexer"
FAMILY = "indexer"
TASK_ROLE = "indexer-task"
EXECUTION_ROLE = "indexer-execution"
ECS_TRUST = json.dumps(
    {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"Service": "ecs-tasks.amazonaws.com"},
                "Action": "sts:AssumeRole",
            }
        ],
    }
)


@dataclass(frozen=True)
class ExistingAccount:
    indexing_url: str
    group_face_url: str
    task_role_arn: str
    task_definition: str
    scaling_policies: tuple[str, ...]
    alarms: tuple[str, ...]
    # Every field of the task definition but the containers, as registered.
    fields: dict[str, Any]


def _queue_arn(sqs: Any, url: str) -> str:
    return str(
        sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"][
            "QueueArn"
        ]
    )


def task_definition_fields(task_role_arn: str, execution_role_arn: str) -> dict[str, Any]:
    """Every RegisterTaskDefinition field but family and containers, set."""
    return {
        "taskRoleArn": task_role_arn,
        "executionRoleArn": execution_role_arn,
        "networkMode": "awsvpc",
        "volumes": [{"name": "scratch", "host": {"sourcePath": "/var/scratch"}}],
        "placementConstraints": [
            {"type": "memberOf", "expression": "attribute:ecs.instance-type =~ g4dn.*"}
        ],
        "requiresCompatibilities": ["EC2"],
        "cpu": "2048",
        "memory": "8192",
        "pidMode": "task",
        "ipcMode": "task",
        "proxyConfiguration": {
            "type": "APPMESH",
            "containerName": "indexer",
            "properties": [{"name": "AppPorts", "value": "8080"}],
        },
        "inferenceAccelerators": [{"deviceName": "device1", "deviceType": "eia2.medium"}],
        "ephemeralStorage": {"sizeInGiB": 40},
        "runtimePlatform": {"cpuArchitecture": "X86_64", "operatingSystemFamily": "LINUX"},
        "enableFaultInjection": True,
        "tags": [{"key": "team", "value": "vision"}],
    }


def create(aws: AwsTarget, prefix: str = "") -> ExistingAccount:
    """The existing resources (names prefixed by `prefix`, so tests share a server)."""
    sqs, iam, ecs = aws.client("sqs"), aws.client("iam"), aws.client("ecs")
    indexing = sqs.create_queue(
        QueueName=f"{prefix}ve-inhouse-indexing", Attributes={"VisibilityTimeout": "600"}
    )["QueueUrl"]
    group_face = sqs.create_queue(QueueName=f"{prefix}GroupFace")["QueueUrl"]
    for url in (indexing, group_face):
        # The owner's queue policy admits the account FaceFleet deploys in (here: the same).
        policy = {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Effect": "Allow",
                    "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT}:root"},
                    "Action": [
                        "sqs:ReceiveMessage",
                        "sqs:DeleteMessage",
                        "sqs:ChangeMessageVisibility",
                        "sqs:GetQueueAttributes",
                        "sqs:SendMessage",
                    ],
                    "Resource": _queue_arn(sqs, url),
                }
            ],
        }
        sqs.set_queue_attributes(QueueUrl=url, Attributes={"Policy": json.dumps(policy)})
    role = iam.create_role(RoleName=f"{prefix}{TASK_ROLE}", AssumeRolePolicyDocument=ECS_TRUST)
    role_arn = role["Role"]["Arn"]
    iam.put_role_policy(
        RoleName=f"{prefix}{TASK_ROLE}",
        PolicyName="indexer",
        PolicyDocument=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [
                    {
                        "Effect": "Allow",
                        "Action": [
                            "sqs:ReceiveMessage",
                            "sqs:DeleteMessage",
                            "sqs:ChangeMessageVisibility",
                            "sqs:GetQueueAttributes",
                        ],
                        "Resource": _queue_arn(sqs, indexing),
                    },
                    {
                        "Effect": "Allow",
                        "Action": "sqs:SendMessage",
                        "Resource": _queue_arn(sqs, group_face),
                    },
                ],
            }
        ),
    )
    execution = iam.create_role(
        RoleName=f"{prefix}{EXECUTION_ROLE}", AssumeRolePolicyDocument=ECS_TRUST
    )["Role"]["Arn"]
    fields = task_definition_fields(role_arn, execution)
    cluster, service, family = f"{prefix}{CLUSTER}", f"{prefix}{SERVICE}", f"{prefix}{FAMILY}"
    ecs.create_cluster(clusterName=cluster)
    definition = ecs.register_task_definition(
        family=family,
        containerDefinitions=[
            {
                "name": "indexer",
                "image": "123456789012.dkr.ecr.us-east-1.amazonaws.com/indexer:7",
                "memory": 4096,
                "environment": [
                    {"name": "QUEUE_URL", "value": indexing},
                    {"name": "GROUP_FACE_QUEUE_URL", "value": group_face},
                ],
            }
        ],
        **fields,
    )["taskDefinition"]["taskDefinitionArn"]
    ecs.create_service(
        cluster=cluster, serviceName=service, taskDefinition=definition, desiredCount=2
    )
    scaling = aws.client("application-autoscaling")
    resource = f"service/{cluster}/{service}"
    scaling.register_scalable_target(
        ServiceNamespace="ecs",
        ResourceId=resource,
        ScalableDimension="ecs:service:DesiredCount",
        MinCapacity=1,
        MaxCapacity=8,
    )
    cloudwatch = aws.client("cloudwatch")
    policies, alarms = [], []
    for direction, adjustment, operator, threshold in (
        ("out", 1, "GreaterThanThreshold", 100.0),
        ("in", -1, "LessThanThreshold", 10.0),
    ):
        policy = scaling.put_scaling_policy(
            PolicyName=f"{prefix}indexer-scale-{direction}",
            ServiceNamespace="ecs",
            ResourceId=resource,
            ScalableDimension="ecs:service:DesiredCount",
            PolicyType="StepScaling",
            StepScalingPolicyConfiguration={
                "AdjustmentType": "ChangeInCapacity",
                "StepAdjustments": [
                    {"MetricIntervalLowerBound": 0, "ScalingAdjustment": adjustment}
                ],
            },
        )["PolicyARN"]
        alarm = f"{prefix}indexer-backlog-{direction}"
        cloudwatch.put_metric_alarm(
            AlarmName=alarm,
            Namespace="AWS/SQS",
            MetricName="ApproximateNumberOfMessagesVisible",
            Dimensions=[{"Name": "QueueName", "Value": f"{prefix}ve-inhouse-indexing"}],
            Statistic="Average",
            Period=60,
            EvaluationPeriods=2,
            Threshold=threshold,
            ComparisonOperator=operator,
            AlarmActions=[policy],
        )
        policies.append(policy)
        alarms.append(alarm)
    # Someone else's alarm on the same queue: not the service's, never moved.
    cloudwatch.put_metric_alarm(
        AlarmName=f"{prefix}oncall-indexing-age",
        Namespace="AWS/SQS",
        MetricName="ApproximateAgeOfOldestMessage",
        Dimensions=[{"Name": "QueueName", "Value": f"{prefix}ve-inhouse-indexing"}],
        Statistic="Maximum",
        Period=60,
        EvaluationPeriods=5,
        Threshold=900.0,
        ComparisonOperator="GreaterThanThreshold",
    )
    return ExistingAccount(
        indexing, group_face, role_arn, definition, tuple(policies), tuple(alarms), fields
    )


def alarm_queue(aws: AwsTarget, alarm: str) -> str:
    found = aws.client("cloudwatch").describe_alarms(AlarmNames=[alarm])["MetricAlarms"][0]
    return next(d["Value"] for d in found["Dimensions"] if d["Name"] == "QueueName")
