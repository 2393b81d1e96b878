"""Deploy wait logic against the status sequences CloudFormation really returns (moto completes
change sets at once, so only botocore's Stubber with AWS's responses shows the pending states).

AWS: a change set starts CREATE_PENDING, goes CREATE_IN_PROGRESS and ends CREATE_COMPLETE, or
FAILED with "The submitted information didn't contain changes..." when it is empty; a stack a
change set creates sits in REVIEW_IN_PROGRESS until execution starts.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber

from facefleet.common.aws import AwsTarget
from facefleet.infra import deploy, stack_waits
from facefleet.infra.stack_config import StackConfig

STACK = "facefleet"
STACK_ID = f"arn:aws:cloudformation:ap-south-1:123456789012:stack/{STACK}/abc"
CHANGE_SET_ID = "arn:aws:cloudformation:ap-south-1:123456789012:changeSet/facefleet-1/def"
NO_CHANGES = (
    "The submitted information didn't contain changes. Submit different information to create "
    "a change set."
)
BODY = json.dumps({"Resources": {}, "Outputs": {"Region": {"Value": "x"}}})
CONFIG = StackConfig(
    vpc_id="vpc-1",
    subnet_ids=("subnet-1",),
    gallery_mongo_uri="mongodb://gallery",
    huemn_mongo_uri="mongodb://huemn",
    router_lambda=False,  # its zip upload is not under test here
    gallery_notification_events=(),  # nor the bucket notification after the apply
)
NOW = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)


@dataclass(frozen=True)
class StubbedTarget(AwsTarget):
    """An AwsTarget whose CloudFormation client is the stubbed one (every retry profile), and
    whose IAM client (apply checks the Batch service-linked role) is stubbed too."""

    stubbed: Any = None
    iam: Any = None

    def client(self, service: str, retries: str = "default") -> Any:  # type: ignore[override]
        if service == "iam" and self.iam is not None:
            return self.iam
        assert service == "cloudformation", service
        return self.stubbed


@pytest.fixture
def cloudformation(monkeypatch: pytest.MonkeyPatch) -> tuple[Stubber, StubbedTarget]:
    client = boto3.client(
        "cloudformation",
        region_name="ap-south-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    # The template is not under test here (cfn-lint has its own tests).
    monkeypatch.setattr(deploy, "render_checked", lambda config, region: (BODY, ()))
    with Stubber(client) as stubber:
        yield stubber, StubbedTarget("ap-south-1", None, client)
        stubber.assert_no_pending_responses()


def _change_set(status: str, reason: str = "", execution: str = "UNAVAILABLE") -> dict[str, Any]:
    response: dict[str, Any] = {
        "ChangeSetName": "facefleet-1",
        "ChangeSetId": CHANGE_SET_ID,
        "StackId": STACK_ID,
        "StackName": STACK,
        "Status": status,
        "ExecutionStatus": execution,
        "Changes": [],
    }
    if reason:
        response["StatusReason"] = reason
    return response


def _stack(status: str) -> dict[str, Any]:
    return {
        "Stacks": [
            {
                "StackName": STACK,
                "StackId": STACK_ID,
                "CreationTime": NOW,
                "StackStatus": status,
                "Parameters": [{"ParameterKey": "GalleryImagesMongoUri", "ParameterValue": "****"}],
                "Outputs": [{"OutputKey": "Region", "OutputValue": "ap-south-1"}],
            }
        ]
    }


def _no_stack(stubber: Stubber) -> None:
    stubber.add_client_error(
        "describe_stacks",
        service_error_code="ValidationError",
        service_message=f"Stack with id {STACK} does not exist",
        http_status_code=400,
    )


def _create_change_set(stubber: Stubber) -> None:
    stubber.add_response("create_change_set", {"Id": CHANGE_SET_ID, "StackId": STACK_ID})


def test_first_plan_waits_through_create_pending_for_the_changes(cloudformation: Any) -> None:
    stubber, aws = cloudformation
    _no_stack(stubber)
    _create_change_set(stubber)
    describe = {"ChangeSetName": CHANGE_SET_ID}
    stubber.add_response("describe_change_set", _change_set("CREATE_PENDING"), describe)
    stubber.add_response("describe_change_set", _change_set("CREATE_IN_PROGRESS"), describe)
    stubber.add_response(
        "describe_change_set", _change_set("CREATE_COMPLETE", execution="AVAILABLE"), describe
    )
    complete = _change_set("CREATE_COMPLETE", execution="AVAILABLE")
    complete["Changes"] = [
        {
            "Type": "Resource",
            "ResourceChange": {
                "Action": "Add",
                "LogicalResourceId": "IndexingQueue",
                "ResourceType": "AWS::SQS::Queue",
            },
        }
    ]
    stubber.add_response("describe_change_set", complete, describe)

    plan = deploy.plan(CONFIG, aws)

    assert plan.change_set_type == "CREATE" and plan.change_set_id == CHANGE_SET_ID
    assert [c.logical_id for c in plan.changes] == ["IndexingQueue"]


def test_an_empty_change_set_fails_late_and_is_no_changes(cloudformation: Any) -> None:
    stubber, aws = cloudformation
    stubber.add_response("describe_stacks", _stack("UPDATE_COMPLETE"), {"StackName": STACK})
    _create_change_set(stubber)
    describe = {"ChangeSetName": CHANGE_SET_ID}
    stubber.add_response("describe_change_set", _change_set("CREATE_PENDING"), describe)
    stubber.add_response("describe_change_set", _change_set("CREATE_IN_PROGRESS"), describe)
    stubber.add_response("describe_change_set", _change_set("FAILED", NO_CHANGES), describe)
    stubber.add_response("delete_change_set", {}, describe)

    plan = deploy.plan(CONFIG, aws)

    assert plan.no_changes and plan.change_set_type == "UPDATE"


def test_a_failed_change_set_with_another_reason_is_an_error(cloudformation: Any) -> None:
    stubber, aws = cloudformation
    stubber.add_response("describe_stacks", _stack("UPDATE_COMPLETE"), {"StackName": STACK})
    _create_change_set(stubber)
    describe = {"ChangeSetName": CHANGE_SET_ID}
    stubber.add_response("describe_change_set", _change_set("CREATE_PENDING"), describe)
    reason = "Parameters: [SubnetIds] must have values"
    stubber.add_response("describe_change_set", _change_set("FAILED", reason), describe)
    stubber.add_response("delete_change_set", {}, describe)

    with pytest.raises(deploy.DeployError, match="must have values"):
        deploy.plan(CONFIG, aws)


def test_apply_waits_from_review_in_progress_to_create_complete(cloudformation: Any) -> None:
    stubber, aws = cloudformation
    iam = boto3.client(
        "iam", region_name="ap-south-1", aws_access_key_id="t", aws_secret_access_key="t"
    )
    aws = StubbedTarget("ap-south-1", None, aws.stubbed, iam)
    role = {
        "Path": "/aws-service-role/batch.amazonaws.com/",
        "RoleName": "AWSServiceRoleForBatch",
        "RoleId": "AROAEXAMPLEEXAMPLE123",
        "Arn": "arn:aws:iam::111122223333:role/aws-service-role/batch.amazonaws.com/"
        "AWSServiceRoleForBatch",
        "CreateDate": NOW,
    }
    iam_stubber = Stubber(iam)
    iam_stubber.add_response("get_role", {"Role": role}, {"RoleName": "AWSServiceRoleForBatch"})
    iam_stubber.activate()
    plan = deploy.Plan(STACK, "CREATE", CHANGE_SET_ID, (), (), BODY)
    stubber.add_response("execute_change_set", {}, {"ChangeSetName": CHANGE_SET_ID})
    by_name = {"StackName": STACK}
    for status in ("REVIEW_IN_PROGRESS", "CREATE_IN_PROGRESS", "CREATE_COMPLETE"):
        stubber.add_response("describe_stacks", _stack(status), by_name)
    stubber.add_response("describe_stacks", _stack("CREATE_COMPLETE"), by_name)  # outputs check
    stubber.add_response("describe_stacks", _stack("CREATE_COMPLETE"), by_name)  # outputs

    outputs = deploy.apply(CONFIG, aws, plan=plan)

    assert outputs == {"Region": "ap-south-1"}
    iam_stubber.assert_no_pending_responses()  # the existing role was looked up, not created


def test_the_wait_states_are_botocores_waiter_states() -> None:
    """The change set states are those of botocore's `change_set_create_complete` waiter: its
    success and failure states end the wait, every other documented state continues it."""
    waiter = boto3.client("cloudformation", region_name="us-east-1").get_waiter(
        "change_set_create_complete"
    )
    acceptors = waiter.config.acceptors
    ends = {
        a.expected for a in acceptors if a.matcher == "path" and a.state in ("success", "failure")
    }
    assert ends == {"CREATE_COMPLETE", "FAILED"}
    for status in ends:
        assert not stack_waits.change_set_pending(status)
    for status in ("CREATE_PENDING", "CREATE_IN_PROGRESS"):
        assert stack_waits.change_set_pending(status)
