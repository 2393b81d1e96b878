"""The ECS service's task role and the ECS queue: the grant the move puts on the role (or prints for
the role's owner to add), its removal, and how the role's access is judged (the move's inline
policy, IAM policy simulation, or the operator's confirmation recorded by `--task-role-granted`).
"""

from __future__ import annotations

import json
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError
from botocore.parsers import ResponseParserError

from facefleet.common.aws import AwsTarget
from facefleet.common.names import Names
from facefleet.control import router

GRANT_POLICY = "facefleet-ecs-queue"  # the inline policy the move puts on the ECS task role
# What a queue consumer does: receive, extend, delete, read depth.
CONSUMER_ACTIONS = (
    "sqs:ChangeMessageVisibility",
    "sqs:DeleteMessage",
    "sqs:GetQueueAttributes",
    "sqs:GetQueueUrl",
    "sqs:ReceiveMessage",
)
DENIED = ("AccessDenied", "AccessDeniedException", "UnauthorizedOperation", "403")


def granted_parameter(names: Names) -> str:
    """Where `--task-role-granted` records the operator's word: {"role": ARN, "queue": ARN}."""
    return router.parameter(names, "ecs-task-role-granted")


def grant_policy(arn: str) -> dict[str, Any]:
    return {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": list(CONSUMER_ACTIONS), "Resource": arn}],
    }


def _role_name(role_arn: str) -> str:
    return role_arn.rsplit("/", 1)[-1]


def error_code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


def _account(arn: str) -> str:
    return arn.split(":")[4]


def _caller_account(aws: AwsTarget) -> str:
    return str(aws.client("sts").get_caller_identity()["Account"])


def put_grant(role_arn: str | None, arn: str, aws: AwsTarget) -> tuple[str, bool]:
    if not role_arn:
        return "the task definition has no task role: nothing to grant", False
    document = json.dumps(grant_policy(arn))
    owner = _account(role_arn)
    if owner != _caller_account(aws):
        # A role of the same name here is another role: never put the policy on it.
        return (
            f"{role_arn} is in account {owner}: its owner adds this inline policy "
            f"({GRANT_POLICY}), then run this again with --task-role-granted: {document}",
            False,
        )
    try:
        aws.client("iam").put_role_policy(
            RoleName=_role_name(role_arn), PolicyName=GRANT_POLICY, PolicyDocument=document
        )
    except ClientError as error:
        if error_code(error) not in (*DENIED, "NoSuchEntity"):
            raise
        return (
            f"add this inline policy ({GRANT_POLICY}) to {role_arn}, then run this again with "
            f"--task-role-granted: {document}",
            False,
        )
    return f"put {GRANT_POLICY} on {role_arn}", True


def remove_grant(role_arn: str | None, aws: AwsTarget) -> str:
    if not role_arn:
        return "no task role"
    try:
        aws.client("iam").delete_role_policy(RoleName=_role_name(role_arn), PolicyName=GRANT_POLICY)
    except ClientError as error:
        if error_code(error) not in (*DENIED, "NoSuchEntity"):
            raise
        return f"remove {GRANT_POLICY} from {role_arn} if it was added by hand"
    return f"removed {GRANT_POLICY} from {role_arn}"


def role_access(
    names: Names, role_arn: str | None, arn: str, aws: AwsTarget
) -> tuple[bool | None, str]:
    """Whether the task role may consume `arn`, and how that was judged: the move's inline
    policy; else IAM policy simulation (principals of this account, when the caller may);
    else the operator's `--task-role-granted` for this role and queue (None: not verifiable
    here); else not granted (False) or not readable (None)."""
    if not role_arn:
        return None, "no task role"
    local = _account(role_arn) == _caller_account(aws)
    inline = role_may_consume(role_arn, arn, aws) if local else False
    if inline:
        return True, f"{GRANT_POLICY} on the role"
    simulated = _simulate(role_arn, arn, aws)
    if simulated is not None:
        return simulated, "IAM policy simulation"
    if _confirmed(names, role_arn, arn, aws):
        return None, "operator-confirmed (--task-role-granted); not verifiable from this account"
    if inline is None:
        return None, "the role's policies are not readable here"
    return False, "not granted: add the policy move-ecs-queue prints, then --task-role-granted"


def _simulate(role_arn: str, arn: str, aws: AwsTarget) -> bool | None:
    """iam:SimulatePrincipalPolicy of the consumer actions on `arn` (identity policies only);
    None where the call is not permitted or not possible (a role in another account)."""
    try:
        results = aws.client("iam").simulate_principal_policy(
            PolicySourceArn=role_arn, ActionNames=list(CONSUMER_ACTIONS), ResourceArns=[arn]
        )["EvaluationResults"]
    except (ClientError, BotoCoreError, ResponseParserError):
        # Denied, a principal of another account, or a server without it (moto answers 500).
        return None
    return all(r.get("EvalDecision") == "allowed" for r in results) and bool(results)


def _confirmed(names: Names, role_arn: str, arn: str, aws: AwsTarget) -> bool:
    try:
        value = aws.client("ssm").get_parameter(Name=granted_parameter(names))["Parameter"]["Value"]
    except ClientError as error:
        if error_code(error) in ("ParameterNotFound", *DENIED):
            return False
        raise
    return bool(json.loads(value) == {"role": role_arn, "queue": arn})


def record_granted(names: Names, role_arn: str, arn: str, aws: AwsTarget) -> None:
    aws.client("ssm").put_parameter(
        Name=granted_parameter(names),
        Value=json.dumps({"role": role_arn, "queue": arn}),
        Type="String",
        Overwrite=True,
    )


def role_may_consume(role_arn: str | None, arn: str, aws: AwsTarget) -> bool | None:
    """Whether the move's policy on the task role grants consuming `arn` (None: the role is
    not readable here)."""
    if not role_arn:
        return None
    try:
        document = aws.client("iam").get_role_policy(
            RoleName=_role_name(role_arn), PolicyName=GRANT_POLICY
        )["PolicyDocument"]
    except ClientError as error:
        if error_code(error) == "NoSuchEntity":
            return False
        if error_code(error) in DENIED:
            return None
        raise
    if isinstance(document, str):
        document = json.loads(document)
    for statement in document.get("Statement", []):
        resources = statement.get("Resource", [])
        resources = resources if isinstance(resources, list) else [resources]
        actions = statement.get("Action", [])
        actions = actions if isinstance(actions, list) else [actions]
        if arn in resources and "sqs:ReceiveMessage" in actions:
            return True
    return False
