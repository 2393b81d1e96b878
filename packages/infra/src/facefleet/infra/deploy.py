"""Deploy the FaceFleet stack with CloudFormation change sets: plan, apply, destroy.

Three calls, each taking a `StackConfig` and an `AwsTarget` (with the moto server's endpoint
locally; none on AWS):

    from facefleet.infra import deploy
    from facefleet.infra.stack_config import local_stack_config

    config = local_stack_config(names, aws)
    p = deploy.plan(config, aws)    # render, cfn-lint, change set; prints it
    outputs = deploy.apply(config, aws, plan=p)   # {"IndexingQueueUrl": ...}
    deploy.destroy(config, aws)

- `plan` renders the template, fails on any cfn-lint error, uploads the dispatcher zip when the
  fallback dispatcher is on, and creates a change set. When nothing differs from the deployed
  stack it deletes CloudFormation's empty (FAILED) change set and returns a plan with
  `no_changes` set, so applying twice is a no-op rather than an error.
- `apply` executes the plan's change set (making one when not given), waits, and returns the
  stack outputs. A failed update is rolled back by CloudFormation; a failed first create leaves a
  ROLLBACK_COMPLETE stack, which `apply` deletes so the next attempt starts clean. Either way
  it raises DeployError with the failed resources and their reasons.
- `destroy` deletes the stack and waits; data kept by `retain_data` (model bucket, image
  repository) stays.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError, ClientError
from botocore.parsers import ResponseParserError

from facefleet.common.aws import AwsTarget
from facefleet.infra import lambda_package, template
from facefleet.infra.account import (
    configure_gallery_notifications,
    ensure_batch_service_linked_role,
)
from facefleet.infra.stack_config import StackConfig, StackConfigError
from facefleet.infra.stack_waits import (
    STACK_WAITERS,
    WAITER_SUCCESS,
    DeployError,
    describe_stack,
    wait_change_set,
    wait_stack,
)

if TYPE_CHECKING:
    from mypy_boto3_cloudformation.client import CloudFormationClient
    from mypy_boto3_cloudformation.literals import CapabilityType, ChangeSetTypeType
    from mypy_boto3_cloudformation.type_defs import ParameterTypeDef

log = logging.getLogger(__name__)

CAPABILITIES: list[CapabilityType] = ["CAPABILITY_IAM"]
MAX_TEMPLATE_BODY = 51_200
NO_CHANGES = ("didn't contain changes", "No updates are to be performed")
GONE_STATES = {"REVIEW_IN_PROGRESS", "ROLLBACK_COMPLETE", "ROLLBACK_FAILED"}
STABLE_OK = {"CREATE_COMPLETE", "UPDATE_COMPLETE", "IMPORT_COMPLETE"}


@dataclass(frozen=True)
class Change:
    action: str  # Add | Modify | Remove | Import | Dynamic
    logical_id: str
    resource_type: str
    replacement: str = ""  # True | False | Conditional (Modify only)


@dataclass(frozen=True)
class Plan:
    stack_name: str
    change_set_type: str  # CREATE | UPDATE
    change_set_id: str | None
    changes: tuple[Change, ...] = ()
    lint_warnings: tuple[str, ...] = ()
    template_body: str = field(default="", repr=False)

    @property
    def no_changes(self) -> bool:
        return self.change_set_id is None

    def summary(self) -> str:
        if self.no_changes:
            return f"stack {self.stack_name}: no changes"
        lines = [
            f"stack {self.stack_name}: {self.change_set_type} with {len(self.changes)} change(s)"
        ]
        for change in self.changes:
            replace = f" (replacement: {change.replacement})" if change.replacement else ""
            lines.append(
                f"  {change.action:<7} {change.logical_id:<32} {change.resource_type}{replace}"
            )
        lines.extend(f"  warning: {warning}" for warning in self.lint_warnings)
        return "\n".join(lines)


def lint(template_body: str, region: str) -> tuple[list[str], list[str]]:
    """cfn-lint the template: (errors, warnings), each as 'RULE path: message'."""
    from cfnlint.api import lint as cfn_lint  # imported here: it loads the AWS specs (slow)

    errors: list[str] = []
    warnings: list[str] = []
    for match in cfn_lint(template_body, regions=[region]):
        text = f"{match.rule.id} {'/'.join(str(p) for p in match.path)}: {match.message}"
        (errors if match.rule.id.startswith("E") else warnings).append(text)
    return errors, warnings


def render_checked(config: StackConfig, region: str) -> tuple[str, tuple[str, ...]]:
    """The template body after cfn-lint; raise DeployError on any lint error."""
    package = lambda_package.build() if config.fallback_dispatcher else None
    router = lambda_package.build_router() if config.router and config.router_lambda else None
    body = template.to_json(template.render(config, package, router))
    errors, warnings = lint(body, region)
    if errors:
        raise DeployError("cfn-lint rejected the template:\n  " + "\n  ".join(errors))
    if len(body) > MAX_TEMPLATE_BODY:
        body = json.dumps(json.loads(body), separators=(",", ":"), sort_keys=True)
    if len(body) > MAX_TEMPLATE_BODY:
        raise DeployError(f"template is {len(body)} bytes, over CloudFormation's inline limit")
    return body, tuple(warnings)


def _account_id(aws: AwsTarget) -> str:
    return str(aws.client("sts").get_caller_identity()["Account"])


def artifact_bucket_name(config: StackConfig, aws: AwsTarget) -> str:
    if config.artifact_bucket:
        return config.artifact_bucket
    return f"{config.names.prefix}-artifacts-{_account_id(aws)}-{aws.region}"


def upload_dispatcher(
    config: StackConfig, aws: AwsTarget, package: lambda_package.LambdaPackage | None = None
) -> str:
    """Put a Lambda zip (default: the dispatcher's) at its content-addressed key (created
    once; the bucket too)."""
    package = package or lambda_package.build()
    bucket = artifact_bucket_name(config, aws)
    s3 = aws.client("s3")
    try:
        s3.head_bucket(Bucket=bucket)
    except ClientError:
        log.info("creating artifact bucket", extra={"bucket": bucket})
        kwargs: dict[str, Any] = {"Bucket": bucket}
        if aws.region != "us-east-1":
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": aws.region}
        s3.create_bucket(**kwargs)
        s3.put_public_access_block(
            Bucket=bucket,
            PublicAccessBlockConfiguration={
                "BlockPublicAcls": True,
                "IgnorePublicAcls": True,
                "BlockPublicPolicy": True,
                "RestrictPublicBuckets": True,
            },
        )
    try:
        s3.head_object(Bucket=bucket, Key=package.key)
    except ClientError:
        log.info("uploading dispatcher", extra={"bucket": bucket, "key": package.key})
        s3.put_object(Bucket=bucket, Key=package.key, Body=package.data)
    return f"s3://{bucket}/{package.key}"


def _parameters(config: StackConfig, existing: dict[str, Any] | None) -> list[ParameterTypeDef]:
    deployed = {p["ParameterKey"] for p in (existing or {}).get("Parameters", [])}
    parameters: list[ParameterTypeDef] = []
    for key, value in template.parameter_values(config).items():
        if value is not None:
            parameters.append({"ParameterKey": key, "ParameterValue": value})
        elif key in deployed:
            parameters.append({"ParameterKey": key, "UsePreviousValue": True})
        else:
            raise StackConfigError(
                f"{key} is needed for the first deploy of this stack "
                "(a MongoDB URI, or the ARN of an existing secret)"
            )
    return parameters


def _describe_changes(pages: Sequence[Mapping[str, Any]]) -> tuple[Change, ...]:
    changes: list[Change] = []
    for response in pages:
        for item in response.get("Changes", []):
            change = item.get("ResourceChange", {})
            changes.append(
                Change(
                    action=change.get("Action", ""),
                    logical_id=change.get("LogicalResourceId", ""),
                    resource_type=change.get("ResourceType", ""),
                    replacement=change.get("Replacement", "") or "",
                )
            )
    return tuple(sorted(changes, key=lambda c: (c.action, c.logical_id)))


def plan(
    config: StackConfig,
    aws: AwsTarget,
    *,
    timeout_s: float = 300.0,
) -> Plan:
    """Render, cfn-lint and create a change set for `config`'s stack; log its summary."""
    config.validate(deploying=True)
    body, warnings = render_checked(config, aws.region)
    if config.fallback_dispatcher:
        upload_dispatcher(config, aws)
    if config.router and config.router_lambda:
        upload_dispatcher(config, aws, lambda_package.build_router())
    cloudformation = aws.client("cloudformation")
    stack_name = config.names.stack_name
    existing = describe_stack(cloudformation, stack_name)
    if (
        existing
        and existing["StackStatus"].endswith("_IN_PROGRESS")
        and (existing["StackStatus"] != "REVIEW_IN_PROGRESS")
    ):
        raise DeployError(f"stack {stack_name} is busy ({existing['StackStatus']}); retry later")
    if existing and existing["StackStatus"] in GONE_STATES:
        # A stack that never finished its first create holds nothing worth keeping.
        log.info("deleting stack left by a failed create", extra={"stack": stack_name})
        _delete(cloudformation, stack_name, timeout_s)
        existing = None
    change_set_type: ChangeSetTypeType = "UPDATE" if existing else "CREATE"
    name = f"facefleet-{int(time.time() * 1000)}"
    log.info("creating change set", extra={"stack": stack_name, "type": change_set_type})
    response = cloudformation.create_change_set(
        StackName=stack_name,
        ChangeSetName=name,
        ChangeSetType=change_set_type,
        TemplateBody=body,
        Parameters=_parameters(config, existing),
        Capabilities=CAPABILITIES,
        Tags=[{"Key": k, "Value": v} for k, v in sorted(config.tags.items())],
        Description=f"facefleet infra plan ({config.names.prefix})",
    )
    change_set_id = response["Id"]
    failed = wait_change_set(cloudformation, change_set_id, f"change set {name}", timeout_s)
    if failed is not None:
        reason = failed.get("StatusReason", "")
        cloudformation.delete_change_set(ChangeSetName=change_set_id)
        if any(marker in reason for marker in NO_CHANGES):
            result = Plan(stack_name, change_set_type, None, (), warnings, body)
            log.info(result.summary())
            return result
        raise DeployError(f"change set for {stack_name} failed: {reason}")
    # Its pages (botocore's paginator) say whether it can run, and list the changes.
    pages = list(
        cloudformation.get_paginator("describe_change_set").paginate(ChangeSetName=change_set_id)
    )
    described = pages[0]
    if described.get("ExecutionStatus", "AVAILABLE") != "AVAILABLE":
        raise DeployError(
            f"change set for {stack_name} is {described['Status']} but cannot be executed "
            f"({described.get('ExecutionStatus')}: {described.get('StatusReason', '')})"
        )
    result = Plan(
        stack_name,
        change_set_type,
        change_set_id,
        _describe_changes(pages),
        warnings,
        body,
    )
    log.info(result.summary())
    return result


def _failure_events(cloudformation: Any, stack_id: str, since: float) -> list[str]:
    """The failed resources' reasons since `since` (events come newest first, paged)."""
    reasons: list[str] = []
    pages = cloudformation.get_paginator("describe_stack_events").paginate(StackName=stack_id)
    try:
        for page in pages:
            for event in page["StackEvents"]:
                if event["Timestamp"].timestamp() < since - 5:
                    return reasons
                if event["ResourceStatus"].endswith("_FAILED"):
                    reasons.append(
                        f"{event['LogicalResourceId']} ({event['ResourceType']}): "
                        f"{event.get('ResourceStatusReason', '')}"
                    )
    except ClientError:
        pass
    return reasons


def apply(
    config: StackConfig,
    aws: AwsTarget,
    *,
    plan: Plan | None = None,
    timeout_s: float = 3600.0,
) -> dict[str, str]:
    """Execute `plan` (or a fresh one), wait for the stack, return its outputs."""
    current = plan if plan is not None else globals()["plan"](config, aws)
    cloudformation = aws.client("cloudformation")
    if current.no_changes:
        found = outputs(config, aws)
        configure_gallery_notifications(config, aws, found)
        return found
    ensure_batch_service_linked_role(aws)
    started = time.time()
    log.info(
        "executing change set", extra={"stack": current.stack_name, "changes": len(current.changes)}
    )
    assert current.change_set_id is not None  # a plan with changes has its change set
    try:
        _single_attempt_client(aws).execute_change_set(ChangeSetName=current.change_set_id)
    except (ClientError, BotoCoreError, ResponseParserError) as error:
        # moto applies synchronously and reports a failing resource here (as a JSON body that
        # botocore cannot parse as XML); AWS reports it through the stack status below.
        _roll_back_failed_create(cloudformation, current, timeout_s)
        raise DeployError(f"deploying {current.stack_name} failed: {error}") from error
    status, stack_id = wait_stack(
        cloudformation,
        current.stack_name,
        STACK_WAITERS[current.change_set_type],
        timeout_s,
    )
    status = status or WAITER_SUCCESS[current.change_set_type]
    if status not in STABLE_OK:
        reasons = _failure_events(cloudformation, stack_id, started) if stack_id else []
        _roll_back_failed_create(cloudformation, current, timeout_s)
        raise DeployError(
            f"deploying {current.stack_name} ended {status}"
            + ("; rolled back. Failures:\n  " + "\n  ".join(reasons) if reasons else "")
        )
    _refresh_outputs(cloudformation, current)
    found = outputs(config, aws)
    configure_gallery_notifications(config, aws, found)
    return found


def _refresh_outputs(cloudformation: Any, current: Plan) -> None:
    """moto never recomputes a stack's outputs after a change set runs (AWS always does): when
    declared outputs are missing, re-submit the same template as a plain update, which moto
    treats as no resource change but which rebuilds the outputs. Never triggers on AWS."""
    declared = set(json.loads(current.template_body).get("Outputs", {}))
    stack = describe_stack(cloudformation, current.stack_name)
    if stack is None or declared <= {o["OutputKey"] for o in stack.get("Outputs") or []}:
        return
    # moto refuses an update whose body is byte-identical to the stack's ("No updates are to be
    # performed"): send the same template in another layout than the change set's.
    document = json.loads(current.template_body)
    body = json.dumps(document, separators=(",", ":"), sort_keys=True)
    if body == current.template_body:
        body = json.dumps(document, indent=1, sort_keys=True)
    try:
        cloudformation.update_stack(
            StackName=current.stack_name,
            TemplateBody=body,
            Capabilities=CAPABILITIES,
            Parameters=[
                {"ParameterKey": p["ParameterKey"], "UsePreviousValue": True}
                for p in stack.get("Parameters", [])
            ],
        )
    except ClientError as error:
        if not any(marker in str(error) for marker in NO_CHANGES):
            raise


def _single_attempt_client(aws: AwsTarget) -> CloudFormationClient:
    # Executing a change set is not retried blindly: a retry after a half-applied attempt would
    # report the wrong error (and moto's errors look like parse failures, which botocore
    # retries).
    return aws.client("cloudformation", retries="single")


def _roll_back_failed_create(cloudformation: Any, current: Plan, timeout_s: float) -> None:
    if current.change_set_type != "CREATE":
        return  # CloudFormation rolls a failed update back itself.
    stack = describe_stack(cloudformation, current.stack_name)
    if stack is not None and not stack["StackStatus"].startswith("DELETE"):
        _delete(cloudformation, current.stack_name, timeout_s)


def _delete(cloudformation: Any, stack_name: str, timeout_s: float) -> None:
    cloudformation.delete_stack(StackName=stack_name)
    # Success: DELETE_COMPLETE, or the stack no longer described (ValidationError).
    status, _ = wait_stack(cloudformation, stack_name, "stack_delete_complete", timeout_s)
    if status not in ("", "DELETED", "DELETE_COMPLETE"):
        raise DeployError(f"deleting {stack_name} ended {status}")


def outputs(config: StackConfig, aws: AwsTarget) -> dict[str, str]:
    """The deployed stack's outputs (OutputKey -> OutputValue)."""
    cloudformation = aws.client("cloudformation")
    stack = describe_stack(cloudformation, config.names.stack_name)
    if stack is None:
        raise DeployError(f"stack {config.names.stack_name} does not exist")
    return {o["OutputKey"]: str(o["OutputValue"]) for o in stack.get("Outputs", [])}


def destroy(
    config: StackConfig,
    aws: AwsTarget,
    *,
    timeout_s: float = 3600.0,
) -> bool:
    """Delete the stack and wait; False when there was none."""
    cloudformation = aws.client("cloudformation")
    stack_name = config.names.stack_name
    if describe_stack(cloudformation, stack_name) is None:
        return False
    log.info("deleting stack", extra={"stack": stack_name})
    _delete(cloudformation, stack_name, timeout_s)
    return True
