"""The rehearsal's account: one moto server with IAM authorization on, an operator (admin) user,
and every actor acting with its own role's credentials.

How calls are judged (see iam_support's docstring for why two judges): an actor's SQS and S3
calls carry its role's own credentials (an STS session of the deployed role), so moto's
enforcement refuses anything the role's policy does not allow. Its other calls (Batch, SSM,
DynamoDB, CloudWatch, CloudFormation, ECS, Lambda, SNS, ...) reach moto with the operator's
credentials, because moto authorizes those against `Resource: "*"` and would refuse every
scoped statement; each is recorded under the actor and judged by `iam_support.allowed` against
the same deployed policy. Either way, a call the role may not make fails the rehearsal.

The policy judged is the one deployed: read back from IAM (moto keeps a CloudFormation-made
inline policy as a Python repr; it is put back as JSON, unchanged, so moto can enforce it).
"""

from __future__ import annotations

import ast
import contextlib
import json
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import boto3

from facefleet.common import aws as common_aws
from tests.contract.iam_support import Call

ENFORCED = ("sqs", "s3")
ADMIN_POLICY = json.dumps(
    {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
)


MOTO_BATCH_ACTIONS = {
    "sqs:SendMessage": "sqs:SendMessageBatch",
    "sqs:DeleteMessage": "sqs:DeleteMessageBatch",
    "sqs:ChangeMessageVisibility": "sqs:ChangeMessageVisibilityBatch",
}


def enforceable(policy: dict[str, Any]) -> dict[str, Any]:
    """The policy as moto can enforce it, where moto's names differ from AWS's: moto asks for
    sqs:SendMessageBatch (AWS: sqs:SendMessage) and the like, so each granted action's batch
    name is granted on the same queues; and it authorizes sqs:GetQueueUrl against "*" (the
    request names no queue URL), so that is granted there. The evaluator judges every call by
    AWS's names and ARNs."""
    statements = []
    for statement in policy["Statement"]:
        actions = statement["Action"]
        actions = actions if isinstance(actions, list) else [actions]
        batch = [MOTO_BATCH_ACTIONS[a] for a in actions if a in MOTO_BATCH_ACTIONS]
        statements.append({**statement, "Action": [*actions, *batch]})
    statements.append({"Effect": "Allow", "Action": "sqs:GetQueueUrl", "Resource": "*"})
    return {**policy, "Statement": statements}


@dataclass(frozen=True)
class Credentials:
    key: str
    secret: str
    token: str | None = None


@dataclass
class Account:
    endpoint: str
    region: str
    admin: Credentials | None = None
    actors: dict[str, Credentials] = field(default_factory=dict)
    policies: dict[str, dict[str, Any]] = field(default_factory=dict)  # actor -> policy
    roles: dict[str, str] = field(default_factory=dict)  # actor -> role name
    calls: list[Call] = field(default_factory=list)
    acting: str = "operator"
    _clients: dict[tuple[str, str, str, str], Any] = field(default_factory=dict)

    def _post(self, path: str, body: bytes) -> None:
        request = urllib.request.Request(
            f"{self.endpoint}{path}",
            data=body,
            method="POST",
            headers={"Content-Type": "application/octet-stream"},
        )
        with urllib.request.urlopen(request, timeout=10):
            pass

    def setup_client(self, service: str) -> Any:
        """A client for the set-up, before authorization is on (any credentials)."""
        return boto3.client(
            service,
            region_name=self.region,
            endpoint_url=self.endpoint,
            aws_access_key_id="setup",
            aws_secret_access_key="setup",
        )

    def enforce(self) -> None:
        """Create the operator (every action allowed), then turn authorization on."""
        iam = self.setup_client("iam")
        iam.create_user(UserName="operator")
        iam.put_user_policy(UserName="operator", PolicyName="admin", PolicyDocument=ADMIN_POLICY)
        key = iam.create_access_key(UserName="operator")["AccessKey"]
        self.admin = Credentials(key["AccessKeyId"], key["SecretAccessKey"])
        self._post("/moto-api/reset-auth", b"0")

    def credentials(self, service: str) -> Credentials:
        assert self.admin is not None, "enforce() first"
        if self.acting in self.actors and service in ENFORCED:
            return self.actors[self.acting]
        return self.admin

    def client(self, service: str) -> Any:
        """A client as the current actor would build it (the `AwsTarget` path)."""
        return self._build(service, self.region, self.endpoint, "default")

    def _build(self, service: str, region: str, endpoint: str | None, retries: str) -> Any:
        key = (self.acting, service, region, retries)
        if key not in self._clients:
            self._clients[key] = self._new_client(service, region, retries)
        return self._clients[key]

    def _new_client(self, service: str, region: str, retries: str) -> Any:
        credentials = self.credentials(service)
        session = boto3.session.Session(
            aws_access_key_id=credentials.key,
            aws_secret_access_key=credentials.secret,
            aws_session_token=credentials.token,
        )
        built = session.client(
            service,
            region_name=region,
            endpoint_url=self.endpoint,
            config=common_aws._CONFIGS[retries],
        )
        principal = self.acting
        service_name = built.meta.service_model.service_name

        def record(params: Any, model: Any, **_: Any) -> None:
            self.calls.append(
                Call(
                    principal,
                    service_name,
                    model.name,
                    json.loads(json.dumps(params, default=str)),
                    region,
                )
            )

        built.meta.events.register("before-parameter-build.*.*", record)
        if service_name == "lambda":
            # moto's server cannot verify the signature of Lambda's REST calls: the operator's
            # (recorded) Lambda calls pass unauthenticated, one request at a time.
            assert self.acting == "operator", f"{self.acting} calls Lambda"
            built.meta.events.register("before-send.lambda.*", self._one_unauthenticated)
        return built

    def _one_unauthenticated(self, **_: Any) -> None:
        self._post("/moto-api/reset-auth", b"1")

    def install(self, monkeypatch: Any) -> None:
        """Every `AwsTarget` client from now on is built for the current actor."""
        monkeypatch.setattr(common_aws, "_client", self._build)

    @contextlib.contextmanager
    def as_actor(self, actor: str) -> Iterator[None]:
        previous, self.acting = self.acting, actor
        try:
            yield
        finally:
            self.acting = previous

    def deployed_policy(self, role: str) -> dict[str, Any]:
        """The role's inline policies as deployed, one document (JSON)."""
        iam = self.setup_client_as_admin("iam")
        statements: list[Any] = []
        for name in iam.list_role_policies(RoleName=role)["PolicyNames"]:
            document = iam.get_role_policy(RoleName=role, PolicyName=name)["PolicyDocument"]
            if isinstance(document, str):
                document = ast.literal_eval(document)
            statements.extend(document["Statement"])
        return {"Version": "2012-10-17", "Statement": statements}

    def setup_client_as_admin(self, service: str) -> Any:
        assert self.admin is not None
        return boto3.client(
            service,
            region_name=self.region,
            endpoint_url=self.endpoint,
            aws_access_key_id=self.admin.key,
            aws_secret_access_key=self.admin.secret,
        )

    def assume(self, actor: str, role: str) -> None:
        """`actor` acts with an STS session of `role`, whose inline policies moto enforces."""
        iam = self.setup_client_as_admin("iam")
        policy = self.deployed_policy(role)
        for name in iam.list_role_policies(RoleName=role)["PolicyNames"]:
            iam.delete_role_policy(RoleName=role, PolicyName=name)
        iam.put_role_policy(
            RoleName=role, PolicyName="deployed", PolicyDocument=json.dumps(enforceable(policy))
        )
        arn = iam.get_role(RoleName=role)["Role"]["Arn"]
        # The harness stands in for the service that assumes the role (ECS tasks, Lambda,
        # Batch): moto checks the trust policy, so it admits the operator instead.
        operator = iam.get_user(UserName="operator")["User"]["Arn"]
        trust = {
            "Version": "2012-10-17",
            "Statement": [
                {"Effect": "Allow", "Principal": {"AWS": operator}, "Action": "sts:AssumeRole"}
            ],
        }
        iam.update_assume_role_policy(RoleName=role, PolicyDocument=json.dumps(trust))
        session = self.setup_client_as_admin("sts").assume_role(RoleArn=arn, RoleSessionName=actor)[
            "Credentials"
        ]
        self.actors[actor] = Credentials(
            session["AccessKeyId"], session["SecretAccessKey"], session["SessionToken"]
        )
        self.policies[actor] = policy
        self.roles[actor] = role
        self._clients = {k: v for k, v in self._clients.items() if k[0] != actor}

    def of(self, actor: str) -> list[Call]:
        return [c for c in self.calls if c.principal == actor]
