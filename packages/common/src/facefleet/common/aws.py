"""The one place boto3 clients are built: the AWS target (region and endpoint), retries, types.

`AwsTarget` is built once per process (`Settings.aws`, or `AwsTarget.from_env()` where there are
no service settings) and passed down; nothing else reads AWS_DEFAULT_REGION or AWS_ENDPOINT_URL.
An endpoint points every client at the local moto server. `AwsTarget.client("sqs")` returns the
boto3-stubs type of that service (`SQSClient`), so a wrong call is a type error.

Retry profiles: `default` (adaptive, 8 attempts: a burst of Batch submissions or SQS calls hits
throttling), `single` (one attempt: executing a change set must not be retried blindly) and
`quick` (2 attempts, short timeouts: an optional endpoint that may not be there, the Pricing API).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Literal, overload

import boto3
from botocore.config import Config

if TYPE_CHECKING:
    from mypy_boto3_batch.client import BatchClient
    from mypy_boto3_cloudformation.client import CloudFormationClient
    from mypy_boto3_cloudwatch.client import CloudWatchClient
    from mypy_boto3_ec2.client import EC2Client
    from mypy_boto3_ecr.client import ECRClient
    from mypy_boto3_ecs.client import ECSClient
    from mypy_boto3_events.client import EventBridgeClient
    from mypy_boto3_iam.client import IAMClient
    from mypy_boto3_lambda.client import LambdaClient
    from mypy_boto3_logs.client import CloudWatchLogsClient
    from mypy_boto3_pricing.client import PricingClient
    from mypy_boto3_s3.client import S3Client
    from mypy_boto3_secretsmanager.client import SecretsManagerClient
    from mypy_boto3_sns.client import SNSClient
    from mypy_boto3_sqs.client import SQSClient
    from mypy_boto3_ssm.client import SSMClient
    from mypy_boto3_sts.client import STSClient

DEFAULT_REGION = "us-east-1"
Retries = Literal["default", "single", "quick"]

RETRY_CONFIG = Config(
    retries={"max_attempts": 8, "mode": "adaptive"},
    connect_timeout=5,
    read_timeout=60,
)
_CONFIGS: Mapping[str, Config] = {
    "default": RETRY_CONFIG,
    "single": Config(retries={"total_max_attempts": 1}, read_timeout=300),
    "quick": Config(
        retries={"max_attempts": 2, "mode": "standard"}, connect_timeout=3, read_timeout=10
    ),
}


@lru_cache(maxsize=64)
def _client(service: str, region: str, endpoint_url: str | None, retries: str) -> Any:
    session = boto3.session.Session()
    return session.client(  # type: ignore[call-overload]
        service, region_name=region, endpoint_url=endpoint_url, config=_CONFIGS[retries]
    )


@dataclass(frozen=True)
class AwsTarget:
    """Where AWS calls go: a region and, for the local stack, an endpoint override.

    >>> AwsTarget.from_env({"AWS_DEFAULT_REGION": "eu-west-1"})
    AwsTarget(region='eu-west-1', endpoint_url=None)
    """

    region: str = DEFAULT_REGION
    endpoint_url: str | None = None

    @classmethod
    def from_env(
        cls,
        environ: Mapping[str, str] | None = None,
        *,
        region: str | None = None,
        endpoint_url: str | None = None,
    ) -> AwsTarget:
        """Explicit values first, then AWS_DEFAULT_REGION (or AWS_REGION, which Lambda sets) and
        AWS_ENDPOINT_URL, then us-east-1 and the real endpoints."""
        source = os.environ if environ is None else environ
        return cls(
            region=region
            or source.get("AWS_DEFAULT_REGION")
            or source.get("AWS_REGION")
            or DEFAULT_REGION,
            endpoint_url=endpoint_url or source.get("AWS_ENDPOINT_URL") or None,
        )

    def in_region(self, region: str) -> AwsTarget:
        """The same endpoint in another region (the Pricing API lives in few regions)."""
        return replace(self, region=region)

    @overload
    def client(self, service: Literal["batch"], retries: Retries = ...) -> BatchClient: ...
    @overload
    def client(
        self, service: Literal["cloudformation"], retries: Retries = ...
    ) -> CloudFormationClient: ...
    @overload
    def client(
        self, service: Literal["cloudwatch"], retries: Retries = ...
    ) -> CloudWatchClient: ...
    @overload
    def client(self, service: Literal["ec2"], retries: Retries = ...) -> EC2Client: ...
    @overload
    def client(self, service: Literal["ecr"], retries: Retries = ...) -> ECRClient: ...
    @overload
    def client(self, service: Literal["ecs"], retries: Retries = ...) -> ECSClient: ...
    @overload
    def client(self, service: Literal["events"], retries: Retries = ...) -> EventBridgeClient: ...
    @overload
    def client(self, service: Literal["iam"], retries: Retries = ...) -> IAMClient: ...
    @overload
    def client(self, service: Literal["lambda"], retries: Retries = ...) -> LambdaClient: ...
    @overload
    def client(self, service: Literal["logs"], retries: Retries = ...) -> CloudWatchLogsClient: ...
    @overload
    def client(self, service: Literal["pricing"], retries: Retries = ...) -> PricingClient: ...
    @overload
    def client(self, service: Literal["s3"], retries: Retries = ...) -> S3Client: ...
    @overload
    def client(
        self, service: Literal["secretsmanager"], retries: Retries = ...
    ) -> SecretsManagerClient: ...
    @overload
    def client(self, service: Literal["sns"], retries: Retries = ...) -> SNSClient: ...
    @overload
    def client(self, service: Literal["sqs"], retries: Retries = ...) -> SQSClient: ...
    @overload
    def client(self, service: Literal["ssm"], retries: Retries = ...) -> SSMClient: ...
    @overload
    def client(self, service: Literal["sts"], retries: Retries = ...) -> STSClient: ...
    @overload
    def client(self, service: str, retries: Retries = ...) -> Any: ...

    def client(self, service: str, retries: Retries = "default") -> Any:
        """A cached, thread-safe boto3 client for `service` at this target."""
        return _client(service, self.region, self.endpoint_url, retries)


def queue_name(queue_url: str) -> str:
    """The queue name at the end of an SQS queue URL."""
    return queue_url.rstrip("/").rsplit("/", 1)[-1]


def topic_arn_by_name(aws: AwsTarget, topic_name: str) -> str | None:
    """The ARN of the SNS topic named `topic_name` in this target's account and region (the
    name is the ARN's last field), or None. Needs sns:ListTopics."""
    for page in aws.client("sns").get_paginator("list_topics").paginate():
        for topic in page.get("Topics", []):
            if topic["TopicArn"].rsplit(":", 1)[-1] == topic_name:
                return topic["TopicArn"]
    return None
