"""The IAM roles: instance, job execution and the two job roles (least privilege). The compute
environments use AWS Batch's service-linked role, not one of the stack's (template/batch.py)."""

from __future__ import annotations

from facefleet.infra.stack_config import StackConfig
from facefleet.infra.template.base import (
    DETECTION_JOB_ROLE,
    EXECUTION_ROLE,
    GROUP_FACE_QUEUE,
    GROUPING_JOB_ROLE,
    INDEXING_QUEUE,
    Json,
    arn,
    assume_role,
    policy_document,
    ref,
    s3_arn,
    statement,
    sub,
    tag_list,
)
from facefleet.infra.template.queues import Queues
from facefleet.infra.template.storage import secret_arns


def _logs_statement(log_group: str) -> Json:
    return statement(
        ["logs:CreateLogStream", "logs:PutLogEvents"],
        [arn("logs", f"log-group:{log_group}:*")],
    )


def metrics_statement(namespace: str) -> Json:
    # PutMetricData has no resource-level permission; the namespace condition is the scope.
    return statement(
        ["cloudwatch:PutMetricData"],
        ["*"],
        Condition={"StringEquals": {"cloudwatch:namespace": namespace}},
    )


def savings_statements() -> list[Json]:
    """What the Spot savings flow reads beyond the job listing: the Spot price history and the
    on-demand price (neither takes a resource-level permission), and the instance type each
    job's ECS container instance had (in the Batch-managed clusters of this account)."""
    return [
        statement(["ec2:DescribeSpotPriceHistory", "pricing:GetProducts"], ["*"]),
        statement(["ecs:DescribeContainerInstances"], [arn("ecs", "container-instance/*")]),
    ]


CONSUME = [
    "sqs:ReceiveMessage",
    "sqs:DeleteMessage",
    "sqs:ChangeMessageVisibility",
    "sqs:GetQueueAttributes",
    "sqs:GetQueueUrl",
]


def _job_policies(config: StackConfig, queues: Queues) -> dict[str, list[Json]]:
    names = config.names
    face_groups = config.face_group_bucket
    models = config.model_bucket_name
    detection = [
        statement(CONSUME, [queues.arn(INDEXING_QUEUE)]),
        statement(["sqs:SendMessage", "sqs:GetQueueUrl"], [queues.arn(GROUP_FACE_QUEUE)]),
        statement(["s3:GetObject"], [s3_arn(config.gallery_bucket, "/*")]),
        # A photo deleted before detection reads as NoSuchKey (a failed image), not as 403
        # AccessDenied (an outage, retried to the dead-letter queue).
        statement(["s3:ListBucket"], [s3_arn(config.gallery_bucket)]),
        statement(["s3:PutObject"], [s3_arn(face_groups, "/*")]),
        # A deleted photo's crops are listed and deleted (privacy: nothing outlives the photo).
        statement(["s3:DeleteObject"], [s3_arn(face_groups, "/*")]),
        statement(["s3:ListBucket"], [s3_arn(face_groups)]),
        statement(["s3:ListBucket"], [s3_arn(models)]),
        statement(["s3:GetObject"], [s3_arn(models, "/*")]),
        _logs_statement(names.log_group),
        metrics_statement(names.metrics_namespace),
    ]
    grouping = [
        statement(CONSUME, [queues.arn(GROUP_FACE_QUEUE)]),
        # Crops written by detection are read, and copied to their person's key.
        statement(["s3:GetObject", "s3:PutObject"], [s3_arn(face_groups, "/*")]),
        # Covers of emptied people, and on erasure every object under the user's prefixes
        # (crops and covers of the face-group bucket only, never a gallery photo).
        statement(["s3:DeleteObject"], [s3_arn(face_groups, "/*")]),
        # Without ListBucket S3 answers a missing key with 403, not NoSuchKey, and a missing
        # crop (tolerated) would read as AccessDenied (an outage, retried to the DLQ).
        statement(["s3:ListBucket"], [s3_arn(face_groups)]),
        _logs_statement(names.log_group),
        metrics_statement(names.metrics_namespace),
    ]
    return {DETECTION_JOB_ROLE: detection, GROUPING_JOB_ROLE: grouping}


def iam_resources(config: StackConfig, queues: Queues) -> Json:
    managed = "arn:${AWS::Partition}:iam::aws:policy/service-role/"
    resources: Json = {
        "InstanceRole": {
            "Type": "AWS::IAM::Role",
            "Properties": {
                "AssumeRolePolicyDocument": assume_role("ec2.amazonaws.com"),
                # ECS agent, image pulls from ECR and the awslogs driver run with this role.
                "ManagedPolicyArns": [sub(managed + "AmazonEC2ContainerServiceforEC2Role")],
                "Tags": tag_list(config),
            },
        },
        "InstanceProfile": {
            "Type": "AWS::IAM::InstanceProfile",
            "Properties": {"Roles": [ref("InstanceRole")]},
        },
        EXECUTION_ROLE: {
            "Type": "AWS::IAM::Role",
            "Properties": {
                "AssumeRolePolicyDocument": assume_role("ecs-tasks.amazonaws.com"),
                "Policies": [
                    {
                        "PolicyName": "read-mongodb-secrets",
                        "PolicyDocument": policy_document(
                            [
                                statement(
                                    ["secretsmanager:GetSecretValue"],
                                    list(secret_arns(config).values()),
                                ),
                                _logs_statement(config.names.log_group),
                            ]
                        ),
                    }
                ],
                "Tags": tag_list(config),
            },
        },
    }
    for role, statements in _job_policies(config, queues).items():
        resources[role] = {
            "Type": "AWS::IAM::Role",
            "Properties": {
                "AssumeRolePolicyDocument": assume_role("ecs-tasks.amazonaws.com"),
                "Policies": [
                    {
                        "PolicyName": "facefleet-worker",
                        "PolicyDocument": policy_document(statements),
                    }
                ],
                "Tags": tag_list(config),
            },
        }
    return resources
