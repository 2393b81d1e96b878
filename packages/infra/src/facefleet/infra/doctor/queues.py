"""Existing queues in other accounts, and the ingress queue the router reads: queue policies,
keys and visibility timeout."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from botocore.exceptions import ClientError

from facefleet.common.aws import AwsTarget
from facefleet.infra.doctor.check import Check, _error, _queue
from facefleet.infra.doctor.roles import CONSUME_ACTIONS, role_allows
from facefleet.infra.stack_config import StackConfig


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
            ).get("Attributes", {})  # absent when the queue has neither (AWS and moto)
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
        statement = {
            "Effect": "Allow",
            "Principal": {"AWS": f"arn:aws:iam::{account}:root"},
            "Action": [*actions, "sqs:GetQueueAttributes"],
            "Resource": queue.arn,
        }
        if not attributes.get("Policy"):
            detail = (
                f"no queue policy: owned by {owner}, it needs one admitting {account}; add "
                f"{json.dumps(statement)}{note}"
            )
            checks.append(Check(name, False, detail))
        elif queue_policy_admits(json.loads(attributes["Policy"]), account, actions):
            checks.append(Check(name, True, f"queue policy admits account {account}{note}"))
        else:
            detail = (
                f"owned by {owner}: its queue policy must admit {account}; add "
                f"{json.dumps(statement)}{note}"
            )
            checks.append(Check(name, False, detail))
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
        attributes: dict[str, str] = {str(k): v for k, v in found.get("Attributes", {}).items()}
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
