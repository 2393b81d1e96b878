"""`facefleet infra doctor`: a read-only preflight before the first deploy (and any later one).

Each check reads the account (never writes) and ends `ok` or `todo` with what to do:

- Spot vCPU quota for G instances in the region (Service Quotas L-3819A6DF, "All G and VT Spot
  Instance Requests") against what the compute environments may launch;
- every subnet has a way out: a default route to an internet or NAT gateway, or every VPC
  endpoint a container instance needs (ecs, ecs-agent, ecs-telemetry, ecr.api, ecr.dkr, logs,
  secretsmanager, sqs, monitoring, and the S3 gateway on the subnet's route table);
- AWS Batch's service-linked role (apply creates it when absent);
- the MongoDB secrets (existing ARNs) are there, or the URIs to create them are set;
- the alerts topic has a confirmed subscription (an email one stays PendingConfirmation until
  someone clicks the link);
- the gallery bucket sends the events deploy configures (`gallery_notification_events`:
  deletions only by default) to the indexing queue;
- the model pack is in the model bucket;
- the image tag the job definitions run is in ECR;
- an existing queue in another account has a queue policy that admits this account's job
  roles (a cross-account receive needs both the role's policy and the queue's);
- the existing ingress queue the router reads: its policy admits this account, its key lets a
  function in this account read it (never the AWS managed key across accounts; a customer key
  needs kms:Decrypt for the router role), its visibility timeout covers the router's timeout;
- the existing ECS service's task role may consume the ECS queue `move-ecs-queue` points it at;
- before a first create, every fixed name the template claims is free (ECR repositories,
  buckets including the global model bucket name, topics, queues, tables, log groups, secrets).

Every call is a read (Describe, Get, List, Head); role policies are read, not simulated.

Also printed: the command that reads the memory ECS really registers on a running instance, the
one figure of the instance facts table only a real instance can confirm.
"""

from __future__ import annotations

import fnmatch
import json
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from facefleet.common.aws import AwsTarget, topic_arn_by_name
from facefleet.common.config import Settings
from facefleet.infra import template
from facefleet.infra.lambda_package import ROUTER_HANDLER, LambdaPackage
from facefleet.infra.stack_config import MONGO_URI_ENV, QueueRef, StackConfig
from facefleet.infra.template.batch import BATCH_SERVICE_LINKED_ROLE
from facefleet.infra.template.router import ROUTER_ROLE

G_SPOT_QUOTA = ("ec2", "L-3819A6DF")  # All G and VT Spot Instance Requests (vCPUs)
# What a container instance and its jobs reach when a subnet has no default route out (Amazon
# ECS developer guide, "Amazon ECS interface VPC endpoints": ecs, ecs-agent, ecs-telemetry for
# the agent; ECR API and Docker endpoints plus the S3 gateway for image layers; logs for the
# awslogs driver; secretsmanager for injected secrets) and what the workers call (sqs, and
# monitoring for their metrics). Without them an instance never joins: jobs sit RUNNABLE.
INTERFACE_ENDPOINTS = (
    "ecs",
    "ecs-agent",
    "ecs-telemetry",
    "ecr.api",
    "ecr.dkr",
    "logs",
    "secretsmanager",
    "sqs",
    "monitoring",
)
GATEWAY_ENDPOINTS = ("s3",)
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
        missing = missing_endpoints(
            endpoints, aws.region, {t["RouteTableId"] for t in tables if "RouteTableId" in t}
        )
        if missing:
            checks.append(
                Check(
                    name,
                    False,
                    "no default route to an internet or NAT gateway, and no VPC endpoint for "
                    f"{', '.join(missing)}: add a NAT gateway route or those endpoints "
                    "(container instances never join the cluster without them: jobs sit "
                    "RUNNABLE; MongoDB needs a path too)",
                )
            )
        else:
            every = INTERFACE_ENDPOINTS + GATEWAY_ENDPOINTS
            checks.append(Check(name, True, "VPC endpoints for " + ", ".join(every)))
    return checks


def missing_endpoints(
    endpoints: Iterable[Mapping[str, Any]], region: str, route_tables: set[str]
) -> list[str]:
    """The services of INTERFACE_ENDPOINTS / GATEWAY_ENDPOINTS with no usable endpoint: an
    interface endpoint that is not failed, or a gateway endpoint on one of `route_tables`."""
    have: set[str] = set()
    for endpoint in endpoints:
        if endpoint.get("State", "available").lower() in ("failed", "deleted", "rejected"):
            continue
        service = endpoint["ServiceName"].split(f"{region}.", 1)[-1]
        if endpoint.get("VpcEndpointType", "Interface") == "Gateway":
            if route_tables & set(endpoint.get("RouteTableIds", [])):
                have.add(f"gateway:{service}")
        else:
            have.add(service)
    missing = [s for s in INTERFACE_ENDPOINTS if s not in have]
    missing += [f"{s} (gateway)" for s in GATEWAY_ENDPOINTS if f"gateway:{s}" not in have]
    return missing


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
    topic_arn = topic_arn_by_name(aws, config.names.alerts_topic)
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


def _covers(configured: Iterable[str], event: str) -> bool:
    """Does one of the configured S3 event types cover `event` (`s3:ObjectRemoved:*` covers
    `s3:ObjectRemoved:Delete`)?"""
    return any(c == event or (c.endswith(":*") and event.startswith(c[:-1])) for c in configured)


def gallery_notification(config: StackConfig, aws: AwsTarget, indexing_arn: str | None) -> Check:
    """The events deploy configures (`gallery_notification_events`: deletions only by default,
    the existing service's notification keeps the creates) reach the Batch indexing queue."""
    name = f"gallery bucket {config.gallery_bucket} notification"
    wanted = config.gallery_notification_events
    if not wanted:
        return Check(name, True, "not FaceFleet's to configure (gallery_notification_events empty)")
    if indexing_arn is None:
        return Check(name, False, "indexing queue unknown (no stack yet): run doctor after deploy")
    try:
        notification = aws.client("s3").get_bucket_notification_configuration(
            Bucket=config.gallery_bucket
        )
    except ClientError as error:
        return Check(name, False, f"cannot read it ({_error(error)})")
    configured = [
        event
        for q in notification.get("QueueConfigurations", [])
        if q.get("QueueArn") == indexing_arn
        for event in q.get("Events", [])
    ]
    missing = [e for e in wanted if not _covers(configured, e)]
    if not missing:
        return Check(name, True, f"{', '.join(wanted)} -> {indexing_arn}")
    return Check(
        name,
        False,
        f"{', '.join(missing)} do not reach {indexing_arn}: `facefleet infra apply` sets them "
        "(the queue policy admits s3.amazonaws.com from this bucket)",
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


# What the router's event source mapping does on the ingress queue (Lambda developer guide,
# "Using Lambda with Amazon SQS": the execution role's permissions, which a queue in another
# account must also grant in its queue policy).
ROUTER_ACTIONS = ("sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:GetQueueAttributes")
AWS_MANAGED_SQS_KEY = "alias/aws/sqs"
# Lambda developer guide, "Configuring a queue to use with Lambda": visibility timeout at least
# the function timeout; six times is the recommendation (room for retries when throttled).
RECOMMENDED_VISIBILITY_FACTOR = 6


def ingress_queue(
    config: StackConfig,
    aws: AwsTarget,
    account: str,
    router_timeout_s: int | None,
    router_role_arn: str | None,
) -> list[Check]:
    """The existing queue the router Lambda will read: its policy admits this account, its
    encryption lets a function in this account read it, its visibility timeout fits."""
    queue = _queue(config.ingress_queue, aws.region)
    if not config.router or not config.router_lambda or queue is None:
        return []
    owner = queue.arn.split(":")[4]
    name = f"ingress queue {queue.name} ({owner})"
    try:
        found = aws.client("sqs").get_queue_attributes(QueueUrl=queue.url, AttributeNames=["All"])
        attributes: dict[str, str] = {str(k): v for k, v in found["Attributes"].items()}
    except ClientError as error:
        return [
            Check(
                name,
                False,
                f"not readable from {account} ({_error(error)}): its owner must allow "
                f"{', '.join(ROUTER_ACTIONS)} to arn:aws:iam::{account}:root or the router role",
            )
        ]
    checks: list[Check] = []
    policy = json.loads(attributes.get("Policy") or "{}")
    if owner == account:
        checks.append(Check(f"{name} policy", True, "in this account (the role policy suffices)"))
    elif queue_policy_admits(policy, account, ROUTER_ACTIONS):
        checks.append(Check(f"{name} policy", True, f"admits account {account}"))
    else:
        statement = {
            "Effect": "Allow",
            "Principal": {"AWS": f"arn:aws:iam::{account}:root"},
            "Action": list(ROUTER_ACTIONS),
            "Resource": queue.arn,
        }
        checks.append(
            Check(f"{name} policy", False, f"must admit the router: add {json.dumps(statement)}")
        )
    checks.append(_ingress_key(name, attributes, owner, account, aws, router_role_arn))
    checks.append(_ingress_visibility(name, attributes, router_timeout_s))
    return checks


def _ingress_key(
    name: str,
    attributes: Mapping[str, str],
    owner: str,
    account: str,
    aws: AwsTarget,
    router_role_arn: str | None,
) -> Check:
    key = attributes.get("KmsMasterKeyId")
    name = f"{name} encryption"
    if not key:
        how = "SSE-SQS" if attributes.get("SqsManagedSseEnabled") == "true" else "none"
        return Check(name, True, f"{how}: no KMS key to grant")
    if key == AWS_MANAGED_SQS_KEY or key.endswith(f":{AWS_MANAGED_SQS_KEY}"):
        if owner == account:
            return Check(name, True, "the AWS managed key, in this account")
        return Check(
            name,
            False,
            f"encrypted with the AWS managed key ({AWS_MANAGED_SQS_KEY}), which cannot trigger a "
            f"Lambda function in another account ({account}): its owner must switch the queue "
            "to SSE-SQS or a customer managed key",
        )
    wanted = f"kms:Decrypt on {key} for the router role (its policy and the key policy)"
    if router_role_arn is None:
        return Check(name, False, f"customer managed key: grant {wanted}")
    if role_allows(aws, router_role_arn, ("kms:Decrypt",), _key_arn(key, owner, aws.region)):
        return Check(name, True, f"the router role may kms:Decrypt {key} (key policy not read)")
    return Check(name, False, f"customer managed key: grant {wanted}")


def _key_arn(key: str, owner: str, region: str) -> str:
    if key.startswith("arn:"):
        return key
    kind = "" if key.startswith("alias/") else "key/"
    return f"arn:aws:kms:{region}:{owner}:{kind}{key}"


def _ingress_visibility(
    name: str, attributes: Mapping[str, str], router_timeout_s: int | None
) -> Check:
    name = f"{name} visibility timeout"
    visibility = int(attributes.get("VisibilityTimeout", "30"))
    if router_timeout_s is None:
        return Check(name, True, f"{visibility} s (no router function timeout to compare)")
    recommended = RECOMMENDED_VISIBILITY_FACTOR * router_timeout_s
    if visibility < router_timeout_s:
        return Check(
            name,
            False,
            f"{visibility} s is below the router function's {router_timeout_s} s timeout: Lambda "
            f"refuses the event source mapping; set it to {recommended} s (6x, AWS's advice)",
        )
    note = "" if visibility >= recommended else f"; AWS recommends {recommended} s (6x)"
    return Check(name, True, f"{visibility} s >= the {router_timeout_s} s function timeout{note}")


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


def batch_service_linked_role(aws: AwsTarget) -> Check:
    name = "Batch service-linked role"
    try:
        aws.client("iam").get_role(RoleName=BATCH_SERVICE_LINKED_ROLE)
    except ClientError as error:
        if error.response.get("Error", {}).get("Code") != "NoSuchEntity":
            raise
        return Check(
            name,
            True,
            f"{BATCH_SERVICE_LINKED_ROLE} absent: apply creates it (the deploying identity needs "
            "iam:CreateServiceLinkedRole for batch.amazonaws.com)",
        )
    return Check(name, True, f"{BATCH_SERVICE_LINKED_ROLE} exists")


def _rendered(config: StackConfig) -> dict[str, Any]:
    """The template `config` deploys; the Lambda zips' content does not matter here."""
    placeholder = LambdaPackage(b"", "0" * 64, ())
    return template.render(config, placeholder, placeholder)


def _router_timeout(rendered: Mapping[str, Any]) -> int | None:
    for resource in rendered["Resources"].values():
        props = resource.get("Properties", {})
        if resource["Type"] == "AWS::Lambda::Function" and props.get("Handler") == ROUTER_HANDLER:
            return int(props.get("Timeout", 3))
    return None


def _stack_resource(config: StackConfig, aws: AwsTarget, logical_id: str) -> str | None:
    """The physical id of one of the deployed stack's resources (None: not there)."""
    try:
        found = aws.client("cloudformation").describe_stack_resources(
            StackName=config.names.stack_name, LogicalResourceId=logical_id
        )["StackResources"]
    except ClientError:
        return None
    return next((str(r["PhysicalResourceId"]) for r in found if r.get("PhysicalResourceId")), None)


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
    rendered = _rendered(config)  # also validates the config
    account = str(aws.client("sts").get_caller_identity()["Account"])
    outputs = _stack_outputs(config, aws)
    indexing = _queue(config.indexing_queue, aws.region)
    indexing_arn = indexing.arn if indexing else outputs.get("IndexingQueueArn")
    wants_router_role = outputs and config.router_lambda and config.ingress_queue
    router_role = _stack_resource(config, aws, ROUTER_ROLE) if wants_router_role else None
    router_role_arn = f"arn:aws:iam::{account}:role/{router_role}" if router_role else None
    ecs_queue_arn = f"arn:aws:sqs:{aws.region}:{account}:{config.names.ecs_indexing_queue}"
    checks: list[Check] = []

    def add(found: Check | list[Check]) -> None:
        for check in found if isinstance(found, list) else [found]:
            checks.append(check)
            emit(check.line())

    emit(
        f"facefleet infra doctor: account {account}, region {aws.region}, stack "
        f"{config.names.stack_name} ({'deployed' if outputs else 'not deployed yet'})"
    )
    steps: list[Callable[[], Check | list[Check]]] = [
        lambda: spot_quota(config, aws),
        lambda: subnets_route_out(config, aws),
        lambda: batch_service_linked_role(aws),
        lambda: secrets(config, aws, source),
        lambda: alerts_subscription(config, aws),
        lambda: gallery_notification(config, aws, indexing_arn),
        lambda: model_pack(config, aws),
        lambda: image_tag(config, aws),
        lambda: foreign_queues(config, aws, account),
        lambda: ingress_queue(config, aws, account, _router_timeout(rendered), router_role_arn),
        lambda: ecs_task_role_access(config, aws, account, ecs_queue_arn),
    ]
    if not outputs:
        steps.append(lambda: name_collisions(config, aws, rendered))
    for step in steps:
        try:
            add(step())
        except (ClientError, BotoCoreError) as error:  # a check that cannot run says so
            add(Check("check", False, f"could not run: {_error(error)}"))
    emit(
        f"info  registered memory on a running instance (the facts table's figure): "
        f"{REGISTERED_MEMORY_COMMAND}"
    )
    return checks
