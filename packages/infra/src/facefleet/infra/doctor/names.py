"""Before a first create: every fixed name the template claims is free."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from botocore.exceptions import ClientError

from facefleet.common.aws import AwsTarget
from facefleet.infra.doctor.check import Check
from facefleet.infra.stack_config import StackConfig


def _fixed_names(rendered: Mapping[str, Any]) -> dict[str, list[str]]:
    """Resource type -> the fixed names the template gives (what a first create claims)."""
    keys = {
        "AWS::ECR::Repository": "RepositoryName",
        "AWS::S3::Bucket": "BucketName",
        "AWS::SNS::Topic": "TopicName",
        "AWS::SQS::Queue": "QueueName",
        "AWS::DynamoDB::Table": "TableName",
        "AWS::Logs::LogGroup": "LogGroupName",
        "AWS::SecretsManager::Secret": "Name",
    }
    found: dict[str, list[str]] = {}
    for resource in rendered["Resources"].values():
        key = keys.get(resource["Type"])
        value = resource.get("Properties", {}).get(key) if key else None
        if isinstance(value, str):
            found.setdefault(resource["Type"], []).append(value)
    return found


def _taken(kind: str, name: str, aws: AwsTarget) -> str | None:
    """Why `name` of `kind` cannot be created (None: free). Read-only calls."""
    try:
        if kind == "AWS::ECR::Repository":
            aws.client("ecr").describe_repositories(repositoryNames=[name])
        elif kind == "AWS::S3::Bucket":
            aws.client("s3").head_bucket(Bucket=name)
        elif kind == "AWS::SNS::Topic":
            account = str(aws.client("sts").get_caller_identity()["Account"])
            arn = f"arn:aws:sns:{aws.region}:{account}:{name}"
            aws.client("sns").get_topic_attributes(TopicArn=arn)
        elif kind == "AWS::SQS::Queue":
            aws.client("sqs").get_queue_url(QueueName=name)
        elif kind == "AWS::DynamoDB::Table":
            aws.client("dynamodb").describe_table(TableName=name)
        elif kind == "AWS::Logs::LogGroup":
            groups = aws.client("logs").describe_log_groups(logGroupNamePrefix=name)
            if not any(g["logGroupName"] == name for g in groups["logGroups"]):
                return None
        elif kind == "AWS::SecretsManager::Secret":
            aws.client("secretsmanager").describe_secret(SecretId=name)
    except ClientError as error:
        code = str(error.response.get("Error", {}).get("Code", ""))
        if kind == "AWS::S3::Bucket" and code in ("403", "AccessDenied", "Forbidden"):
            return "exists in another account (S3 names are global): pick --model-bucket"
        # 404, NoSuchBucket, NotFound, *NotFoundException, QueueDoesNotExist,
        # AWS.SimpleQueueService.NonExistentQueue: the name is free.
        if code == "404" or any(
            m in code for m in ("NotFound", "NoSuch", "NonExistent", "DoesNotExist")
        ):
            return None
        raise
    return "exists in this account"


def name_collisions(
    config: StackConfig, aws: AwsTarget, rendered: Mapping[str, Any]
) -> list[Check]:
    """Before a first create: every fixed name the template claims is free (CloudFormation
    refuses to create a named resource that exists, and the whole create rolls back)."""
    checks = []
    for kind, names in sorted(_fixed_names(rendered).items()):
        label = f"names free ({kind.split('::')[1]} {kind.split('::')[2]})"
        taken = [f"{n}: {why}" for n in names if (why := _taken(kind, n, aws))]
        if taken:
            checks.append(
                Check(label, False, "; ".join(taken) + " (delete or import it, or change --prefix)")
            )
        else:
            checks.append(Check(label, True, ", ".join(names)))
    return checks
