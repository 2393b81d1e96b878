"""Waiting on CloudFormation: botocore's change set and stack waiters, and what their ends mean.

Change sets and stacks settle asynchronously; `deploy` waits on them here and reads a failure's
reason from the waiter's last response rather than polling by hand.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from botocore.exceptions import ClientError, WaiterError


class DeployError(RuntimeError):
    """A template failed validation or a stack operation failed; the message says which and why."""


def describe_stack(cloudformation: Any, stack_name: str) -> dict[str, Any] | None:
    try:
        stacks = cloudformation.describe_stacks(StackName=stack_name)["Stacks"]
    except ClientError as error:
        if "does not exist" in str(error):
            return None
        raise
    return stacks[0] if stacks else None


# Change set statuses (DescribeChangeSet `Status`): a new one starts CREATE_PENDING, then
# CREATE_IN_PROGRESS, and ends CREATE_COMPLETE or FAILED; an empty one ends FAILED with a
# "didn't contain changes" reason, some seconds after it was created.
CHANGE_SET_PENDING = frozenset(
    {"CREATE_PENDING", "CREATE_IN_PROGRESS", "DELETE_PENDING", "DELETE_IN_PROGRESS"}
)
CHANGE_SET_DONE = frozenset({"CREATE_COMPLETE", "FAILED", "DELETE_COMPLETE", "DELETE_FAILED"})


def stack_pending(status: str) -> bool:
    """Every transitional stack status ends in _IN_PROGRESS (UPDATE_COMPLETE_CLEANUP_IN_PROGRESS,
    REVIEW_IN_PROGRESS until an executed change set starts, ...)."""
    return status.endswith("_IN_PROGRESS")


def change_set_pending(status: str) -> bool:
    if status in CHANGE_SET_PENDING:
        return True
    if status in CHANGE_SET_DONE:
        return False
    raise DeployError(f"unknown change set status {status!r}")


def waiter_config(timeout_s: float, poll_s: float) -> dict[str, int]:
    return {"Delay": max(1, round(poll_s)), "MaxAttempts": max(1, int(timeout_s // poll_s) + 1)}


def wait_change_set(
    cloudformation: Any, change_set_id: str, what: str, timeout_s: float
) -> Mapping[str, Any] | None:
    """botocore's `change_set_create_complete` waiter. Its failure state, FAILED, is also how an
    empty change set ends ("didn't contain changes", some seconds after CREATE_PENDING), so a
    FAILED change set is returned for the caller to read the reason; None: it completed."""
    try:
        cloudformation.get_waiter("change_set_create_complete").wait(
            ChangeSetName=change_set_id, WaiterConfig=waiter_config(timeout_s, 1.0)
        )
    except WaiterError as error:
        last = error.last_response or {}
        if last.get("Status") == "FAILED":
            return last
        status = last.get("Status") or last.get("Error", {}).get("Message", "")
        raise DeployError(f"{what} did not complete ({status}): {error}") from error
    return None


# botocore's stack waiters per change set type; each ends at the stack's stable status.
STACK_WAITERS = {"CREATE": "stack_create_complete", "UPDATE": "stack_update_complete"}
WAITER_SUCCESS = {"CREATE": "CREATE_COMPLETE", "UPDATE": "UPDATE_COMPLETE"}


def wait_stack(
    cloudformation: Any, stack_name: str, waiter: str, timeout_s: float
) -> tuple[str, str | None]:
    """(the status the stack ended in, its id when known) after botocore's `waiter`; "DELETED"
    when the stack is gone. Success returns no response: its status is the waiter's."""
    try:
        cloudformation.get_waiter(waiter).wait(
            StackName=stack_name, WaiterConfig=waiter_config(timeout_s, 5.0)
        )
    except WaiterError as error:
        last: dict[str, Any] = dict(error.last_response or {})
        stacks: list[Any] = last.get("Stacks") or []
        if not stacks:
            return "DELETED", None
        status = str(stacks[0]["StackStatus"])
        if stack_pending(status):
            raise DeployError(
                f"stack {stack_name} still {status} after {timeout_s:.0f} s"
            ) from error
        return status, str(stacks[0]["StackId"])
    return "", None
