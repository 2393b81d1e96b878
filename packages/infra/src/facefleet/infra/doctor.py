"""`facefleet infra doctor`: a read-only preflight before the first deploy (and any later one).

Each check reads the account (never writes) and ends `ok` or `todo` with what to do:

- Spot vCPU quota for G instances in the region (Service Quotas L-3819A6DF, "All G and VT Spot
  Instance Requests") against what the compute environments may launch;
- every subnet has a way out (a default route to an internet or NAT gateway, or the VPC
  endpoints the workers need) to SQS, S3, ECR, CloudWatch and MongoDB;
- the MongoDB secrets (existing ARNs) are there, or the URIs to create them are set;
- the alerts topic has a confirmed subscription (an email one stays PendingConfirmation until
  someone clicks the link);
- the gallery bucket's event notification points at the indexing queue;
- the model pack is in the model bucket;
- the image tag the job definitions run is in ECR;
- an existing queue in another account has a queue policy that admits this account's job
  roles (a cross-account receive needs both the role's policy and the queue's).

Also printed: the command that reads the memory ECS really registers on a running instance, the
one figure of the instance facts table only a real instance can confirm.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from facefleet.common.aws import AwsTarget
from facefleet.common.config import Settings
from facefleet.infra.stack_config import MONGO_URI_ENV, QueueRef, StackConfig

G_SPOT_QUOTA = ("ec2", "L-3819A6DF")  # All G and VT Spot Instance Requests (vCPUs)
# What a worker reaches when a subnet has no default route out.
ENDPOINT_SERVICES = ("s3", "sqs", "ecr.api", "ecr.dkr", "logs")
# What a job role does on its queue (the queue policy of a queue in another account must allow).
CONSUME_ACTIONS = ("sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:ChangeMessageVisibility")


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str

    def line(self) -> str:
        return f"{'ok  ' if self.ok else 'todo'}  {self.name}: {self.detail}"


def _error(error: Exception) -> str:
    if isinstance(error, ClientError):
        return str(error.response.get("Error", {}).get("Code") or error)
    return str(error)


def spot_quota(config: StackConfig, aws: AwsTarget) -> Check:
    wanted = sum(env.max_vcpus for env in config.names.compute_environments)
    smallest = max(spec.vcpus for spec in config.names.job_definitions)
    name = "Spot vCPU quota (G instances)"
    try:
        quota = aws.client("service-quotas").get_service_quota(
            ServiceCode=G_SPOT_QUOTA[0], QuotaCode=G_SPOT_QUOTA[1]
        )["Quota"]
        value = float(quota["Value"])
    except (ClientError, BotoCoreError, KeyError) as error:
        return Check(
            name,
            False,
            f"could not read quota {G_SPOT_QUOTA[1]} ({_error(error)}): check it in the Service "
            f"Quotas console for {aws.region}; the compute environments may use {wanted} vCPUs",
        )
    if value < smallest:
        return Check(
            name,
            False,
            f"{value:.0f} vCPUs: no job can start; request at least {wanted} "
            f"(Service Quotas, EC2, {G_SPOT_QUOTA[1]})",
        )
    if value < wanted:
        return Check(
            name,
            False,
            f"{value:.0f} vCPUs of the {wanted} the compute environments may use: request "
            f"{wanted} (EC2 {G_SPOT_QUOTA[1]}), or lower the environments' max vCPUs",
        )
    return Check(name, True, f"{value:.0f} vCPUs (the environments may use {wanted})")


def subnets_route_out(config: StackConfig, aws: AwsTarget) -> list[Check]:
    if not config.subnet_ids:
        return [Check("subnets", False, "no subnets given: pass --subnet-ids")]
    ec2 = aws.client("ec2")
    checks = []
    try:
        subnets = {
            s["SubnetId"]: s
            for s in ec2.describe_subnets(SubnetIds=list(config.subnet_ids))["Subnets"]
        }
    except ClientError as error:
        return [Check("subnets", False, f"cannot describe {config.subnet_ids}: {_error(error)}")]
    for subnet_id in config.subnet_ids:
        name = f"subnet {subnet_id} route out"
        subnet = subnets.get(subnet_id)
        if subnet is None:
            checks.append(Check(name, False, "not found in this region"))
            continue
        vpc_id = subnet["VpcId"]
        tables = ec2.describe_route_tables(
            Filters=[{"Name": "association.subnet-id", "Values": [subnet_id]}]
        )["RouteTables"] or [
            t
            for t in ec2.describe_route_tables(Filters=[{"Name": "vpc-id", "Values": [vpc_id]}])[
                "RouteTables"
            ]
            if any(a.get("Main") for a in t.get("Associations", []))
        ]
        routes = [r for t in tables for r in t.get("Routes", [])]
        default = [
            r
            for r in routes
            if r.get("DestinationCidrBlock") == "0.0.0.0/0"
            and r.get("State", "active") == "active"
            and (
                r.get("GatewayId", "").startswith("igw-")
                or r.get("NatGatewayId")
                or r.get("TransitGatewayId")
                or r.get("NetworkInterfaceId")
            )
        ]
        if default:
            via = default[0].get("NatGatewayId") or default[0].get("GatewayId") or "a gateway"
            checks.append(Check(name, True, f"default route via {via}"))
            continue
        endpoints = ec2.describe_vpc_endpoints(Filters=[{"Name": "vpc-id", "Values": [vpc_id]}])[
            "VpcEndpoints"
        ]
        have = {e["ServiceName"].split(f"{aws.region}.", 1)[-1] for e in endpoints}
        missing = [s for s in ENDPOINT_SERVICES if s not in have]
        if missing:
            checks.append(
                Check(
                    name,
                    False,
                    "no default route to an internet or NAT gateway and no VPC endpoints for "
                    f"{', '.join(missing)}: add a NAT gateway route (MongoDB needs a path too)",
                )
            )
        else:
            checks.append(Check(name, True, "VPC endpoints for " + ", ".join(ENDPOINT_SERVICES)))
    return checks


def secrets(config: StackConfig, aws: AwsTarget, environ: Mapping[str, str]) -> list[Check]:
    checks = []
    client = aws.client("secretsmanager")
    for field_name, variable in MONGO_URI_ENV.items():
        arn = getattr(config, field_name.replace("_uri", "_secret_arn"))
        name = f"secret {variable}"
        if arn:
            try:
                client.describe_secret(SecretId=arn)
                checks.append(Check(name, True, f"{arn} exists"))
            except ClientError as error:
                checks.append(
                    Check(name, False, f"{arn}: {_error(error)}; create it or fix the ARN")
                )
            continue
        stack_secret = (
            config.names.gallery_mongo_secret
            if variable == "GALLERY_IMAGES_MONGO_URI"
            else config.names.huemn_mongo_secret
        )
        try:
            client.describe_secret(SecretId=stack_secret)
            checks.append(Check(name, True, f"the stack's secret {stack_secret} exists"))
            continue
        except ClientError:
            pass
        if getattr(config, field_name) or environ.get(variable):
            checks.append(Check(name, True, f"{variable} is set: the stack creates {stack_secret}"))
        else:
            checks.append(
                Check(
                    name,
                    False,
                    f"set {variable} for the first deploy, or pass an existing secret's ARN",
                )
            )
    return checks


def alerts_subscription(config: StackConfig, aws: AwsTarget) -> Check:
    name = "alerts subscription"
    sns = aws.client("sns")
    topic_arn = next(
        (
            t["TopicArn"]
            for page in sns.get_paginator("list_topics").paginate()
            for t in page.get("Topics", [])
            if t["TopicArn"].rsplit(":", 1)[-1] == config.names.alerts_topic
        ),
        None,
    )
    if topic_arn is None:
        if not config.alert_email:
            return Check(name, False, "no alerts topic yet and no --alert-email: pass one")
        return Check(
            name, False, f"after the deploy, confirm the email sent to {config.alert_email}"
        )
    subscriptions = sns.list_subscriptions_by_topic(TopicArn=topic_arn).get("Subscriptions", [])
    confirmed = [s for s in subscriptions if s["SubscriptionArn"].startswith("arn:")]
    if confirmed:
        return Check(name, True, f"{len(confirmed)} confirmed ({confirmed[0]['Protocol']})")
    if subscriptions:
        return Check(name, False, "pending confirmation: click the link in the email AWS sent")
    return Check(name, False, f"{topic_arn} has no subscription: subscribe the on-call address")


def _queue(value: str | None, region: str) -> QueueRef | None:
    return QueueRef.parse(value, region) if value else None


def gallery_notification(config: StackConfig, aws: AwsTarget, indexing_arn: str | None) -> Check:
    name = f"gallery bucket {config.gallery_bucket} notification"
    if indexing_arn is None:
        return Check(name, False, "indexing queue unknown (no stack yet): run doctor after deploy")
    try:
        notification = aws.client("s3").get_bucket_notification_configuration(
            Bucket=config.gallery_bucket
        )
    except ClientError as error:
        return Check(name, False, f"cannot read it ({_error(error)})")
    targets = [
        q
        for q in notification.get("QueueConfigurations", [])
        if q.get("QueueArn") == indexing_arn
        and any(e.startswith("s3:ObjectCreated") for e in q.get("Events", []))
    ]
    if targets:
        return Check(name, True, f"ObjectCreated -> {indexing_arn}")
    return Check(
        name,
        False,
        f"add an ObjectCreated event notification to {indexing_arn} (the queue policy must "
        "admit s3.amazonaws.com from this bucket)",
    )


def model_pack(config: StackConfig, aws: AwsTarget) -> Check:
    pack = config.worker_settings.get("MODEL_PACK", Settings().model_pack)
    bucket = config.model_bucket_name
    name = f"model pack {pack}"
    try:
        listed = aws.client("s3").list_objects_v2(Bucket=bucket, Prefix=f"{pack}/")
    except ClientError as error:
        return Check(name, False, f"s3://{bucket}/ not readable ({_error(error)}): deploy first")
    models = [o["Key"] for o in listed.get("Contents", []) if o["Key"].endswith(".onnx")]
    if models:
        return Check(name, True, f"{len(models)} model file(s) in s3://{bucket}/{pack}/")
    return Check(name, False, f"upload the pack's .onnx files to s3://{bucket}/{pack}/")


def image_tag(config: StackConfig, aws: AwsTarget) -> Check:
    repository, tag = config.names.ecr_repository, config.image_tag
    if config.image_uri:
        uri = config.image_uri
        if ".dkr.ecr." not in uri:
            return Check("worker image", True, f"{uri} (not in ECR: not checked)")
        path = uri.split("/", 1)[1]
        repository, _, tag = path.partition(":")
        tag = tag or "latest"
    name = f"image {repository}:{tag}"
    try:
        aws.client("ecr").describe_images(repositoryName=repository, imageIds=[{"imageTag": tag}])
    except ClientError as error:
        return Check(
            name,
            False,
            f"not in ECR ({_error(error)}): build and push it "
            "(packages/infra/docker/build-push.sh)",
        )
    return Check(name, True, "present in ECR")


def _principals(statement: Mapping[str, Any]) -> list[str]:
    principal = statement.get("Principal", {})
    if principal == "*":
        return ["*"]
    found = principal.get("AWS", []) if isinstance(principal, dict) else []
    return found if isinstance(found, list) else [found]


def _actions(statement: Mapping[str, Any]) -> list[str]:
    actions = statement.get("Action", [])
    return [a.lower() for a in (actions if isinstance(actions, list) else [actions])]


def queue_policy_admits(policy: Mapping[str, Any], account: str, actions: Iterable[str]) -> bool:
    """Does a queue policy allow `account`'s principals (its root, or any of its roles) the
    `actions`? Conditions are not evaluated (an honest preflight says so in docs/infra.md)."""
    wanted = {a.lower() for a in actions}
    granted: set[str] = set()
    for stmt in policy.get("Statement", []):
        if stmt.get("Effect") != "Allow":
            continue
        ours = any(p == "*" or p == account or f":{account}:" in p for p in _principals(stmt))
        if ours:
            for action in _actions(stmt):
                if action in ("sqs:*", "*"):
                    granted |= wanted
                granted.add(action)
    return wanted <= granted


def foreign_queues(config: StackConfig, aws: AwsTarget, account: str) -> list[Check]:
    checks = []
    sqs = aws.client("sqs")
    for label, value, actions in (
        ("indexing", config.indexing_queue, CONSUME_ACTIONS),
        ("GroupFace", config.group_face_queue, (*CONSUME_ACTIONS, "sqs:SendMessage")),
    ):
        queue = _queue(value, aws.region)
        if queue is None:
            continue
        owner = queue.arn.split(":")[4]
        name = f"{label} queue {queue.name} ({owner})"
        try:
            attributes = sqs.get_queue_attributes(
                QueueUrl=queue.url, AttributeNames=["Policy", "KmsMasterKeyId"]
            )["Attributes"]
        except ClientError as error:
            if owner == account:
                checks.append(Check(name, False, f"not readable ({_error(error)})"))
            else:
                checks.append(
                    Check(
                        name,
                        False,
                        f"owned by {owner}, policy not readable from {account} "
                        f"({_error(error)}): ask its owner to allow {', '.join(actions)} (and "
                        f"sqs:GetQueueAttributes) to arn:aws:iam::{account}:root or the job roles",
                    )
                )
            continue
        kms = attributes.get("KmsMasterKeyId")
        note = f"; SSE-KMS key {kms}: its key policy must allow kms:Decrypt" if kms else ""
        if owner == account:
            checks.append(Check(name, True, f"in this account (the role policies suffice){note}"))
            continue
        policy = json.loads(attributes.get("Policy") or "{}")
        if queue_policy_admits(policy, account, actions):
            checks.append(Check(name, True, f"queue policy admits account {account}{note}"))
        else:
            statement = {
                "Effect": "Allow",
                "Principal": {"AWS": f"arn:aws:iam::{account}:root"},
                "Action": [*actions, "sqs:GetQueueAttributes"],
                "Resource": queue.arn,
            }
            checks.append(
                Check(
                    name,
                    False,
                    f"owned by {owner}: its queue policy must admit {account}; add "
                    f"{json.dumps(statement)}{note}",
                )
            )
    return checks


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
    account = str(aws.client("sts").get_caller_identity()["Account"])
    outputs = _stack_outputs(config, aws)
    indexing = _queue(config.indexing_queue, aws.region)
    indexing_arn = indexing.arn if indexing else outputs.get("IndexingQueueArn")
    checks: list[Check] = []

    def add(found: Check | list[Check]) -> None:
        for check in found if isinstance(found, list) else [found]:
            checks.append(check)
            emit(check.line())

    emit(
        f"facefleet infra doctor: account {account}, region {aws.region}, stack "
        f"{config.names.stack_name} ({'deployed' if outputs else 'not deployed yet'})"
    )
    for step in (
        lambda: spot_quota(config, aws),
        lambda: subnets_route_out(config, aws),
        lambda: secrets(config, aws, source),
        lambda: alerts_subscription(config, aws),
        lambda: gallery_notification(config, aws, indexing_arn),
        lambda: model_pack(config, aws),
        lambda: image_tag(config, aws),
        lambda: foreign_queues(config, aws, account),
    ):
        try:
            add(step())
        except (ClientError, BotoCoreError) as error:  # a check that cannot run says so
            add(Check("check", False, f"could not run: {_error(error)}"))
    emit(
        f"info  registered memory on a running instance (the facts table's figure): "
        f"{REGISTERED_MEMORY_COMMAND}"
    )
    return checks
