"""The fallback dispatcher: the Lambda function, its role and its EventBridge schedule; and the
dispatch lease table both dispatchers (the Prefect flow and the Lambda) take a tick's lease in
(facefleet.control.lease: no reserved Lambda concurrency is needed or used)."""

from __future__ import annotations

from typing import Any

from facefleet.infra.lambda_package import HANDLER, LambdaPackage
from facefleet.infra.stack_config import StackConfig
from facefleet.infra.template.base import (
    DISPATCH_ROLE,
    GROUP_FACE_QUEUE,
    INDEXING_QUEUE,
    LAMBDA_RUNTIME,
    Json,
    arn,
    assume_role,
    get_att,
    policy_document,
    ref,
    statement,
    sub,
    tag_list,
)
from facefleet.infra.template.iam import metrics_statement
from facefleet.infra.template.queues import Queues


def artifact_bucket(config: StackConfig) -> Any:
    """The bucket holding the Lambda zip (deploy creates it; one per account and region)."""
    if config.artifact_bucket:
        return config.artifact_bucket
    return sub(f"{config.names.prefix}-artifacts-${{AWS::AccountId}}-${{AWS::Region}}")


LEASE_TABLE = "DispatchLeaseTable"


def lease_table(config: StackConfig) -> Json:
    """The dispatch lease (one item; on-demand billing: a few writes a minute)."""
    return {
        LEASE_TABLE: {
            "Type": "AWS::DynamoDB::Table",
            "Properties": {
                "TableName": config.names.dispatch_lease_table,
                "BillingMode": "PAY_PER_REQUEST",
                "AttributeDefinitions": [{"AttributeName": "lease", "AttributeType": "S"}],
                "KeySchema": [{"AttributeName": "lease", "KeyType": "HASH"}],
                "SSESpecification": {"SSEEnabled": True},
                "Tags": tag_list(config),
            },
        }
    }


def dispatcher_resources(config: StackConfig, queues: Queues, package: LambdaPackage) -> Json:
    names = config.names
    function = names.dispatch_function
    job_queue_arns = [ref("PrimaryJobQueue"), ref("SecondaryJobQueue")]
    job_definition_arns = [
        arn("batch", f"job-definition/{spec.name}") for spec in names.job_definitions
    ] + [arn("batch", f"job-definition/{spec.name}:*") for spec in names.job_definitions]
    statements = [
        statement(
            ["sqs:GetQueueAttributes", "sqs:GetQueueUrl"],
            [queues.arn(INDEXING_QUEUE), queues.arn(GROUP_FACE_QUEUE)],
        ),
        statement(["batch:SubmitJob"], job_queue_arns + job_definition_arns),
        # ListJobs, DescribeJobs and GetMetricStatistics take no resource-level permissions.
        statement(
            ["batch:DescribeJobs", "batch:ListJobs", "cloudwatch:GetMetricStatistics"], ["*"]
        ),
        statement(["dynamodb:PutItem", "dynamodb:DeleteItem"], [get_att(LEASE_TABLE, "Arn")]),
        statement(
            ["ssm:GetParameter", "ssm:PutParameter"],
            [arn("ssm", f"parameter{names.dispatch_parameter_prefix}/state")],
        ),
        statement(
            ["logs:CreateLogStream", "logs:PutLogEvents"],
            [arn("logs", f"log-group:/aws/lambda/{function}:*")],
        ),
        metrics_statement(names.metrics_namespace),
    ]
    return {
        "DispatchLogGroup": {
            "Type": "AWS::Logs::LogGroup",
            "Properties": {
                "LogGroupName": f"/aws/lambda/{function}",
                "RetentionInDays": config.log_retention_days,
            },
        },
        DISPATCH_ROLE: {
            "Type": "AWS::IAM::Role",
            "Properties": {
                "AssumeRolePolicyDocument": assume_role("lambda.amazonaws.com"),
                "Policies": [
                    {
                        "PolicyName": "facefleet-dispatch",
                        "PolicyDocument": policy_document(statements),
                    }
                ],
                "Tags": tag_list(config),
            },
        },
        "DispatchFunction": {
            "Type": "AWS::Lambda::Function",
            "DependsOn": ["DispatchLogGroup"],
            "Properties": {
                "FunctionName": function,
                "Description": "FaceFleet fallback dispatcher (same policy as the Prefect flow)",
                "Runtime": LAMBDA_RUNTIME,
                "Handler": HANDLER,
                "Code": {"S3Bucket": artifact_bucket(config), "S3Key": package.key},
                "Role": get_att(DISPATCH_ROLE, "Arn"),
                "Timeout": 60,
                "MemorySize": 256,
                # One tick at a time is the dispatch lease's job, not reserved concurrency
                # (which fails to create where the account's limit leaves none to reserve).
                "Environment": {
                    "Variables": {
                        "FACEFLEET_PREFIX": names.prefix,
                        "FACEFLEET_GROUPING_PREFIX": names.grouping_prefix,
                        "QUEUE_URL": queues.url(INDEXING_QUEUE),
                        "GROUP_FACE_QUEUE_URL": queues.url(GROUP_FACE_QUEUE),
                        "METRICS_NAMESPACE": names.metrics_namespace,
                    }
                },
                "Tags": tag_list(config),
            },
        },
        "DispatchSchedule": {
            "Type": "AWS::Events::Rule",
            "Properties": {
                "Name": names.dispatch_schedule_rule,
                "Description": "FaceFleet fallback dispatcher tick",
                "ScheduleExpression": config.dispatch_schedule,
                "State": "ENABLED",
                "Targets": [{"Id": "dispatch", "Arn": get_att("DispatchFunction", "Arn")}],
            },
        },
        "DispatchPermission": {
            "Type": "AWS::Lambda::Permission",
            "Properties": {
                "FunctionName": ref("DispatchFunction"),
                "Action": "lambda:InvokeFunction",
                "Principal": "events.amazonaws.com",
                "SourceArn": get_att("DispatchSchedule", "Arn"),
            },
        },
    }
