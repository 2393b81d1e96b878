"""Least privilege by enforcement: the template's role policies resolved to plain JSON, the AWS
calls a real run makes (recorded through botocore's event hooks), the IAM request each call is
(action, resource ARN, condition keys), and an evaluator of identity policies over them.

Why an evaluator beside moto's own IAM enforcement: moto (5.x) authorizes with the request's real
resource ARN only for SQS (the queue ARN), S3 (bucket/key ARNs), IAM and STS. For every other
service it authorizes against `Resource: "*"`, so a statement scoped to an ARN (batch:SubmitJob on
the job queue and definition, ssm:GetParameter on the state parameter, dynamodb:PutItem on the
lease table) never matches and is refused, and it evaluates conditions without any request
context, so `cloudwatch:PutMetricData` under the `cloudwatch:namespace` condition is refused too.
Those calls therefore go to a moto server without authorization and are judged here instead, from
the calls recorded in the same run; the SQS and S3 calls are judged by both, which must agree.
Not modelled by either: resource policies (the existing queues' policies in their owner accounts,
bucket policies), SCPs, permission boundaries, KMS key policies.
"""

from __future__ import annotations

import fnmatch
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from facefleet.common import aws as common_aws


@dataclass(frozen=True)
class Context:
    """What the intrinsic functions resolve to in one account and region."""

    region: str
    account: str
    partition: str = "aws"
    refs: Mapping[str, str] = field(default_factory=dict)  # logical id -> Ref value
    attributes: Mapping[str, str] = field(default_factory=dict)  # "Id.Attr" -> value

    def pseudo(self) -> dict[str, str]:
        return {
            "AWS::Region": self.region,
            "AWS::AccountId": self.account,
            "AWS::Partition": self.partition,
            "AWS::URLSuffix": "amazonaws.com",
        }


def resolve(value: Any, context: Context) -> Any:
    """Ref, Fn::GetAtt, Fn::Sub, Fn::Join, Fn::Split and Fn::Base64 as CloudFormation does."""
    if isinstance(value, list):
        return [resolve(v, context) for v in value]
    if not isinstance(value, dict):
        return value
    if len(value) == 1:
        ((key, argument),) = value.items()
        if key == "Ref":
            pseudo = context.pseudo()
            if argument in pseudo:
                return pseudo[argument]
            if argument not in context.refs:
                raise KeyError(f"no value for Ref {argument}")
            return context.refs[argument]
        if key == "Fn::GetAtt":
            name = ".".join(argument) if isinstance(argument, list) else argument
            if name not in context.attributes:
                raise KeyError(f"no value for Fn::GetAtt {name}")
            return context.attributes[name]
        if key == "Fn::Sub":
            text = argument if isinstance(argument, str) else argument[0]

            def substitute(match: re.Match[str]) -> str:
                name = match.group(1)
                if "." in name:
                    return str(resolve({"Fn::GetAtt": name.split(".", 1)}, context))
                return str(resolve({"Ref": name}, context))

            return re.sub(r"\$\{([^}!]+)\}", substitute, text)
        if key == "Fn::Join":
            separator, items = argument
            return separator.join(str(i) for i in resolve(items, context))
        if key == "Fn::Split":
            separator, text = argument
            return str(resolve(text, context)).split(separator)
        if key == "Fn::Base64":
            return resolve(argument, context)
    return {k: resolve(v, context) for k, v in value.items()}


def role_policy(rendered: Mapping[str, Any], role: str, context: Context) -> dict[str, Any]:
    """The role's inline policies as one resolved policy document (managed policies excluded:
    the job and dispatcher roles have none)."""
    properties = rendered["Resources"][role]["Properties"]
    assert not properties.get("ManagedPolicyArns"), f"{role} has managed policies"
    statements: list[Any] = []
    for policy in properties.get("Policies", []):
        statements.extend(resolve(policy["PolicyDocument"], context)["Statement"])
    return {"Version": "2012-10-17", "Statement": statements}


# -- recorded calls --------------------------------------------------------------------------


@dataclass(frozen=True)
class Call:
    principal: str  # the role the call ran as
    service: str  # botocore service name (sqs, s3, batch, ...)
    operation: str  # API operation (ReceiveMessage, ...)
    params: Mapping[str, Any]
    region: str


@dataclass
class Recorder:
    """Every AWS call made through `AwsTarget` clients while installed, per principal."""

    calls: list[Call] = field(default_factory=list)
    principal: str = "setup"

    def _hook(self, params: Mapping[str, Any], model: Any, **_: Any) -> None:
        client_region = self._regions.get(id(model.service_model), "us-east-1")
        self.calls.append(
            Call(
                self.principal,
                model.service_model.service_name,
                model.name,
                json.loads(json.dumps(params, default=str)),
                client_region,
            )
        )

    def install(self, monkeypatch: Any) -> None:
        self._regions: dict[int, str] = {}
        original = common_aws._client.__wrapped__

        def client(service: str, region: str, endpoint_url: str | None, retries: str) -> Any:
            built = original(service, region, endpoint_url, retries)
            self._regions[id(built.meta.service_model)] = region
            built.meta.events.register("before-parameter-build.*.*", self._hook)
            return built

        monkeypatch.setattr(common_aws, "_client", client)

    def of(self, principal: str) -> list[Call]:
        return [c for c in self.calls if c.principal == principal]


# -- calls as IAM requests -------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    action: str
    resource: str
    condition_keys: Mapping[str, str] = field(default_factory=dict)


def _queue_arn(url: str, region: str, partition: str = "aws") -> str:
    account, name = url.rstrip("/").split("/")[-2:]
    host = re.match(r"^https?://sqs\.([\w-]+)\.", url)
    return f"arn:{partition}:sqs:{host.group(1) if host else region}:{account}:{name}"


SQS_ACTIONS = {
    "ReceiveMessage": "ReceiveMessage",
    "DeleteMessage": "DeleteMessage",
    "DeleteMessageBatch": "DeleteMessage",
    "ChangeMessageVisibility": "ChangeMessageVisibility",
    "ChangeMessageVisibilityBatch": "ChangeMessageVisibility",
    "SendMessage": "SendMessage",
    "SendMessageBatch": "SendMessage",
    "GetQueueAttributes": "GetQueueAttributes",
}


def requests_for(call: Call, account: str) -> list[Request]:
    """The IAM request(s) AWS authorizes for `call` (Service Authorization Reference)."""
    p, region, op = call.params, call.region, call.operation
    if call.service == "sqs":
        if op == "GetQueueUrl":
            owner = p.get("QueueOwnerAWSAccountId", account)
            return [Request("sqs:GetQueueUrl", f"arn:aws:sqs:{region}:{owner}:{p['QueueName']}")]
        return [Request(f"sqs:{SQS_ACTIONS[op]}", _queue_arn(p["QueueUrl"], region))]
    if call.service == "s3":
        bucket = p.get("Bucket", "")
        if op in ("GetObject", "HeadObject"):
            return [Request("s3:GetObject", f"arn:aws:s3:::{bucket}/{p['Key']}")]
        if op in ("PutObject", "DeleteObject"):
            return [Request(f"s3:{op}", f"arn:aws:s3:::{bucket}/{p['Key']}")]
        if op == "CopyObject":
            source = p["CopySource"]
            source_arn = (
                f"arn:aws:s3:::{source['Bucket']}/{source['Key']}"
                if isinstance(source, dict)
                else f"arn:aws:s3:::{str(source).lstrip('/')}"
            )
            return [
                Request("s3:PutObject", f"arn:aws:s3:::{bucket}/{p['Key']}"),
                Request("s3:GetObject", source_arn),
            ]
        if op in ("ListObjectsV2", "ListObjects", "HeadBucket"):
            return [Request("s3:ListBucket", f"arn:aws:s3:::{bucket}")]
    if call.service == "batch":
        if op == "SubmitJob":
            queue, definition = p["jobQueue"], p["jobDefinition"]
            queue_arn = (
                queue
                if queue.startswith("arn:")
                else (f"arn:aws:batch:{region}:{account}:job-queue/{queue}")
            )
            definition_arn = (
                definition
                if definition.startswith("arn:")
                else (f"arn:aws:batch:{region}:{account}:job-definition/{definition}")
            )
            return [
                Request("batch:SubmitJob", queue_arn),
                Request("batch:SubmitJob", definition_arn),
            ]
        if op in ("ListJobs", "DescribeJobs", "DescribeJobDefinitions"):
            return [Request(f"batch:{op}", "*")]
    if call.service == "ssm" and op in ("GetParameter", "PutParameter"):
        return [Request(f"ssm:{op}", f"arn:aws:ssm:{region}:{account}:parameter{p['Name']}")]
    if call.service == "dynamodb" and op in ("PutItem", "DeleteItem", "GetItem", "UpdateItem"):
        return [
            Request(f"dynamodb:{op}", f"arn:aws:dynamodb:{region}:{account}:table/{p['TableName']}")
        ]
    if call.service == "cloudwatch":
        if op == "PutMetricData":
            return [
                Request("cloudwatch:PutMetricData", "*", {"cloudwatch:namespace": p["Namespace"]})
            ]
        if op == "GetMetricStatistics":
            return [Request("cloudwatch:GetMetricStatistics", "*")]
    if call.service == "cloudformation" and op == "DescribeStacks":
        return [
            Request(
                "cloudformation:DescribeStacks",
                f"arn:aws:cloudformation:{region}:{account}:stack/{p.get('StackName', '*')}/*",
            )
        ]
    raise AssertionError(f"no IAM mapping for {call.service}:{op}: add it to requests_for")


# -- the evaluator ---------------------------------------------------------------------------


def _glob(pattern: str, value: str, *, case: bool = True) -> bool:
    regex = fnmatch.translate(pattern)  # '*' and '?' as IAM wildcards ('[' is never used)
    return re.match(regex, value, 0 if case else re.IGNORECASE) is not None


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _conditions_hold(conditions: Mapping[str, Any], keys: Mapping[str, str]) -> bool:
    for operator, tests in conditions.items():
        for key, expected in tests.items():
            actual = keys.get(key)
            if actual is None:
                return False  # a missing key fails every operator we use (no ...IfExists)
            wanted = [str(e) for e in _as_list(expected)]
            if operator in ("StringEquals", "ArnEquals"):
                ok = actual in wanted
            elif operator in ("StringLike", "ArnLike"):
                ok = any(_glob(w, actual) for w in wanted)
            elif operator == "Bool":
                ok = actual.lower() in [w.lower() for w in wanted]
            else:
                raise AssertionError(f"condition operator {operator} not modelled")
            if not ok:
                return False
    return True


def allowed(policy: Mapping[str, Any], request: Request) -> bool:
    """Identity-policy evaluation: an explicit Deny wins, else some Allow must match."""
    verdict = False
    for stmt in _as_list(policy["Statement"]):
        actions = _as_list(stmt.get("Action", []))
        if not any(_glob(a, request.action, case=False) for a in actions):
            continue
        if not any(_glob(r, request.resource) for r in _as_list(stmt.get("Resource", []))):
            continue
        if not _conditions_hold(stmt.get("Condition", {}), request.condition_keys):
            continue
        if stmt["Effect"] == "Deny":
            return False
        verdict = True
    return verdict


def denied_requests(
    policy: Mapping[str, Any], calls: list[Call], account: str
) -> Iterator[tuple[Call, Request]]:
    for call in calls:
        for request in requests_for(call, account):
            if not allowed(policy, request):
                yield call, request


# -- more services (the rehearsal's actors) ---------------------------------------------------

UNSCOPED = {
    # Service Authorization Reference: these take no resource-level permission ("*").
    ("ecs", "DescribeTaskDefinition"),
    ("ecs", "RegisterTaskDefinition"),
    ("ec2", "DescribeSpotPriceHistory"),
    ("pricing", "GetProducts"),
    ("batch", "DescribeJobDefinitions"),
    ("sns", "ListTopics"),
    ("sts", "GetCallerIdentity"),
}


def requests_for_any(call: Call, account: str) -> list[Request]:
    """`requests_for`, and the ECS, Lambda, SNS, EC2, Pricing and Logs calls the rehearsal's
    actors make (resource ARNs as the Service Authorization Reference gives them)."""
    p, region, op = call.params, call.region, call.operation
    if (call.service, op) in UNSCOPED:
        return [Request(f"{call.service}:{op}", "*")]
    if call.service == "ecs" and op in ("DescribeServices", "UpdateService"):
        cluster = str(p.get("cluster", "default")).rsplit("/", 1)[-1]
        services = p.get("services") or [p.get("service")]
        return [
            Request(
                f"ecs:{op}",
                s
                if str(s).startswith("arn:")
                else f"arn:aws:ecs:{region}:{account}:service/{cluster}/{s}",
            )
            for s in services
        ]
    if call.service == "ecs" and op == "DescribeContainerInstances":
        return [Request("ecs:DescribeContainerInstances", arn) for arn in p["containerInstances"]]
    if call.service == "sns" and op == "Publish":
        return [Request("sns:Publish", p["TopicArn"])]
    if call.service == "logs" and op in ("CreateLogStream", "PutLogEvents"):
        group = p["logGroupName"]
        stream = p["logStreamName"]
        return [
            Request(
                f"logs:{op}",
                f"arn:aws:logs:{region}:{account}:log-group:{group}:log-stream:{stream}",
            )
        ]
    return requests_for(call, account)


class AnyAttribute(dict[str, str]):
    """Every Fn::GetAtt resolves: `<id>.<attribute>` to an ARN-shaped value naming it."""

    def __init__(self, region: str, account: str) -> None:
        super().__init__()
        self.prefix = f"arn:aws:resource:{region}:{account}"

    def __contains__(self, key: object) -> bool:
        return True

    def __getitem__(self, key: str) -> str:
        logical_id, attribute = key.split(".", 1)
        return f"{self.prefix}:{logical_id}/{attribute}"


def permissive_context(
    rendered: Mapping[str, Any], region: str, account: str, **refs: str
) -> Context:
    """A context where every logical id and parameter resolves (to `ref-<id>` unless given in
    `refs`) and every attribute to an ARN-shaped value: for checks that look at a policy's
    shape or at statements whose resources do not matter to them."""
    every = {k: f"ref-{k}" for k in (*rendered["Resources"], *rendered.get("Parameters", {}))}
    return Context(
        region, account, refs={**every, **refs}, attributes=AnyAttribute(region, account)
    )


def denied_any(
    policy: Mapping[str, Any], calls: list[Call], account: str
) -> Iterator[tuple[Call, Request]]:
    for call in calls:
        for request in requests_for_any(call, account):
            if not allowed(policy, request):
                yield call, request
