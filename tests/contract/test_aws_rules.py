"""Rules AWS enforces at deploy or run time that moto does not judge, on three renderings of the
stack for ap-south-1: minimal (the stack creates its queues), the production one with the
existing queues and the fallback dispatcher, and the full cutover topology (existing ingress
queue, Prefect worker, ECS service, existing secrets). Each test names the AWS documentation it
encodes.

Proven here: what the template says. Only a real account proves that Batch accepts the
service-linked role's ARN before the role exists (deploy creates it first), and that Batch emits
a RUNNABLE job state change for each retry.
"""

from __future__ import annotations

import fnmatch
import functools
from collections.abc import Iterator, Mapping
from dataclasses import replace
from typing import Any

import pytest

from facefleet.common.names import RETRYABLE_EXIT_CODE
from facefleet.infra import lambda_package, template
from facefleet.infra.account import ensure_batch_service_linked_role
from facefleet.infra.stack_config import StackConfig
from facefleet.infra.template.batch import compute_environment_name
from tests.contract.conftest import PRODUCTION, PRODUCTION_REGION
from tests.contract.event_patterns import matches
from tests.contract.iam_support import Context, permissive_context, resolve

ACCOUNT = "111122223333"
OTHER_ACCOUNT_QUEUE = "https://sqs.ap-south-1.amazonaws.com/992382426603/ve-inhouse-indexing-in"
MINIMAL = StackConfig(vpc_id="vpc-0abc", subnet_ids=("subnet-0a",))
FULL = replace(
    PRODUCTION,
    ingress_queue=OTHER_ACCOUNT_QUEUE,
    prefect_api_url="https://prefect.example.com/api",
    prefect_api_key_secret_arn=f"arn:aws:secretsmanager:ap-south-1:{ACCOUNT}:secret:prefect-key",
    ecs_service_arn=f"arn:aws:ecs:ap-south-1:{ACCOUNT}:service/indexing/ve-indexing",
    gallery_mongo_secret_arn=f"arn:aws:secretsmanager:ap-south-1:{ACCOUNT}:secret:gallery",
    huemn_mongo_secret_arn=f"arn:aws:secretsmanager:ap-south-1:{ACCOUNT}:secret:huemn",
)
VARIANTS = {"minimal": MINIMAL, "production": PRODUCTION, "full": FULL}


@functools.cache
def _rendered(variant: str) -> dict[str, Any]:
    return template.render(VARIANTS[variant], lambda_package.build(), lambda_package.build_router())


def _context(rendered: Mapping[str, Any]) -> Context:
    return permissive_context(
        rendered,
        PRODUCTION_REGION,
        ACCOUNT,
        AlertsTopic=f"arn:aws:sns:{PRODUCTION_REGION}:{ACCOUNT}:alerts",
        PrimaryJobQueue=f"arn:aws:batch:{PRODUCTION_REGION}:{ACCOUNT}:job-queue/primary",
        SecondaryJobQueue=f"arn:aws:batch:{PRODUCTION_REGION}:{ACCOUNT}:job-queue/secondary",
    )


def _resolved(variant: str) -> dict[str, Any]:
    rendered = _rendered(variant)
    resolved: dict[str, Any] = resolve(rendered["Resources"], _context(rendered))
    return resolved


def _of_type(resources: Mapping[str, Any], kind: str) -> dict[str, Any]:
    return {k: v for k, v in resources.items() if v["Type"] == kind}


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


@pytest.mark.parametrize("variant", VARIANTS)
def test_compute_environments_run_on_the_batch_service_linked_role(variant: str) -> None:
    """AWS Batch user guide, "Perform infrastructure updates": instance types, launch template,
    subnets, security groups and AMI change in place only for an environment on the
    AWSServiceRoleForBatch service-linked role with a BEST_FIT_PROGRESSIVE or SPOT_*
    allocation strategy (otherwise blue/green). Batch API reference, UpdateComputeEnvironment
    serviceRole: a regular role can never be switched to the service-linked role."""
    resources = _resolved(variant)
    linked = (
        f"arn:aws:iam::{ACCOUNT}:role/aws-service-role/batch.amazonaws.com/AWSServiceRoleForBatch"
    )
    environments = _of_type(resources, "AWS::Batch::ComputeEnvironment")
    assert len(environments) == 2
    for props in (e["Properties"] for e in environments.values()):
        assert props["ServiceRole"] == linked
        assert props["ComputeResources"]["AllocationStrategy"] in {
            "BEST_FIT_PROGRESSIVE",
            "SPOT_CAPACITY_OPTIMIZED",
            "SPOT_PRICE_CAPACITY_OPTIMIZED",
        }
        assert props["ReplaceComputeEnvironment"] is False
    # No regular Batch service role is left behind.
    for role in _of_type(resources, "AWS::IAM::Role").values():
        trusted = [
            s["Principal"].get("Service")
            for s in role["Properties"]["AssumeRolePolicyDocument"]["Statement"]
        ]
        assert "batch.amazonaws.com" not in trusted


def test_the_switch_to_the_service_linked_role_is_one_replacement() -> None:
    """The same page: an environment on a regular role is replaced, not updated, to move to the
    service-linked role. The role kind is part of the name digest, so the environments the
    regular-role template created (names below) are each replaced once, under a new name that
    CloudFormation accepts; later infrastructure changes keep the new names."""
    regular_role_names = {
        "face-recognition-primary-b69dd4a9",
        "face-recognition-secondary-b69dd4a9",
    }
    names = {compute_environment_name(s, PRODUCTION) for s in PRODUCTION.names.compute_environments}
    assert names.isdisjoint(regular_role_names)
    changed = replace(
        PRODUCTION, root_volume_gib=200, names=replace(PRODUCTION.names, secondary_max_vcpus=512)
    )
    assert names == {
        compute_environment_name(s, changed) for s in changed.names.compute_environments
    }


def _fixed_name(props: Mapping[str, Any]) -> bool:
    keys = ("BucketName", "RepositoryName", "QueueName", "TopicName", "TableName", "Name")
    return any(isinstance(props.get(k), str) for k in keys)


@pytest.mark.parametrize("variant", VARIANTS)
def test_retained_fixed_name_resources_are_dropped_when_their_create_fails(variant: str) -> None:
    """CloudFormation user guide, "DeletionPolicy attribute": RetainExceptOnCreate keeps a
    resource when the stack is deleted, but deletes it when the operation that created it rolls
    back. With plain Retain, a failed first create leaves the fixed-name model bucket and image
    repository behind and every retry fails with "already exists"."""
    resources = _resolved(variant)
    retained = {k: v for k, v in resources.items() if v.get("DeletionPolicy", "Delete") != "Delete"}
    assert {"ModelBucket", "WorkerImageRepository"} <= set(retained)
    for logical_id, resource in resources.items():
        if _fixed_name(resource.get("Properties", {})):
            assert resource.get("DeletionPolicy") != "Retain", logical_id
    for resource in retained.values():
        assert resource["DeletionPolicy"] == "RetainExceptOnCreate"
        # UpdateReplacePolicy knows no RetainExceptOnCreate (Delete, Retain, Snapshot).
        assert resource["UpdateReplacePolicy"] == "Retain"


@pytest.mark.parametrize("variant", VARIANTS)
def test_no_repository_the_stack_deletes_blocks_destroy(variant: str) -> None:
    """Amazon ECR API reference, DeleteRepository: a repository that holds images is refused
    (RepositoryNotEmptyException) unless forced; CloudFormation's AWS::ECR::Repository forces it
    only with EmptyOnDelete. The flows image is rebuilt from source, so its repository goes
    with the stack; a retained repository never blocks the delete."""
    for variant_config, retain_data in ((VARIANTS[variant], True), (MINIMAL, False)):
        config = replace(variant_config, retain_data=retain_data)
        rendered = template.render(config, lambda_package.build(), lambda_package.build_router())
        for logical_id, repo in _of_type(rendered["Resources"], "AWS::ECR::Repository").items():
            if repo.get("DeletionPolicy", "Delete") == "Delete":
                assert repo["Properties"].get("EmptyOnDelete") is True, logical_id


def _publish_admitted(policy: Mapping[str, Any], service: str, source_arn: str) -> bool:
    for stmt in policy["Statement"]:
        principal = stmt.get("Principal", {})
        if stmt["Effect"] != "Allow" or service not in _as_list(principal.get("Service", [])):
            continue
        if "sns:Publish" not in _as_list(stmt["Action"]):
            continue
        holds = True
        for operator, keys in stmt.get("Condition", {}).items():
            for key, wanted in keys.items():
                value = {"aws:SourceArn": source_arn, "aws:SourceAccount": ACCOUNT}[key]
                if operator in ("ArnLike", "ArnEquals", "StringLike"):
                    holds &= any(fnmatch.fnmatchcase(value, w) for w in _as_list(wanted))
                elif operator == "StringEquals":
                    holds &= value in _as_list(wanted)
                else:
                    raise AssertionError(f"condition {operator} not modelled")
        if holds:
            return True
    return False


@pytest.mark.parametrize("variant", VARIANTS)
def test_alerts_topic_admits_cloudwatch_alarms_and_the_rules(variant: str) -> None:
    """Amazon SNS developer guide, access policy (and CloudWatch user guide, "Using Amazon
    CloudWatch alarms" with SNS): an AWS::SNS::TopicPolicy replaces the topic's default policy,
    and CloudWatch alarms publish as the service principal cloudwatch.amazonaws.com with the
    alarm as aws:SourceArn. Without a statement for it, every alarm notification is refused."""
    resources = _resolved(variant)
    (topic_policy,) = _of_type(resources, "AWS::SNS::TopicPolicy").values()
    policy = topic_policy["Properties"]["PolicyDocument"]
    alarm = f"arn:aws:cloudwatch:{PRODUCTION_REGION}:{ACCOUNT}:alarm:face-recognition-stuck"
    assert _publish_admitted(policy, "cloudwatch.amazonaws.com", alarm)
    foreign = f"arn:aws:cloudwatch:{PRODUCTION_REGION}:444455556666:alarm:anything"
    assert not _publish_admitted(policy, "cloudwatch.amazonaws.com", foreign)
    for rule in ("JobFailedRule", "SpotInterruptionRule"):
        assert _publish_admitted(
            policy,
            "events.amazonaws.com",
            f"arn:aws:resource:{PRODUCTION_REGION}:{ACCOUNT}:{rule}/Arn",
        )
    # Every alarm in the template notifies this topic.
    for alarm_props in _of_type(resources, "AWS::CloudWatch::Alarm").values():
        assert alarm_props["Properties"]["AlarmActions"] == [
            f"arn:aws:sns:{PRODUCTION_REGION}:{ACCOUNT}:alerts"
        ]


def _spot_warning(instance: str) -> dict[str, Any]:
    # EC2 user guide, "Spot Instance interruption notices": the EventBridge event.
    return {
        "source": "aws.ec2",
        "detail-type": "EC2 Spot Instance Interruption Warning",
        "account": ACCOUNT,
        "resources": [f"arn:aws:ec2:{PRODUCTION_REGION}:{ACCOUNT}:instance/{instance}"],
        "detail": {"instance-id": instance, "instance-action": "terminate"},
    }


def _job_event(queue: str, status: str, attempts: list[dict[str, Any]]) -> dict[str, Any]:
    # AWS Batch user guide, "Job state change events": detail is the DescribeJobs JobDetail.
    return {
        "source": "aws.batch",
        "detail-type": "Batch Job State Change",
        "account": ACCOUNT,
        "detail": {
            "jobQueue": f"arn:aws:batch:{PRODUCTION_REGION}:{ACCOUNT}:job-queue/{queue}",
            "status": status,
            "attempts": attempts,
        },
    }


def _host_lost(instance: str) -> dict[str, Any]:
    return {
        "container": {"exitCode": None, "reason": None},
        "statusReason": f"Host EC2 (instance {instance}) terminated.",
    }


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_spot_interruption_signal_counts_only_the_stacks_own_jobs(variant: str) -> None:
    """EventBridge user guide, "Event patterns": a rule sees every matching event of the
    account, and EC2's "Spot Instance Interruption Warning" carries no tags, only the instance.
    So the rule the cutover gate, the alarm and the alert emails count must match only the
    stack's own work: a job of its queues put back (RUNNABLE) after an attempt lost to Spot
    (AWS Batch user guide, "Job state change events"; the attempt's statusReason
    "Host EC2 (instance ...) terminated", or the worker's early-stop exit code)."""
    resources = _resolved(variant)
    rules = {
        r["Properties"]["Name"]: r["Properties"]
        for r in _of_type(resources, "AWS::Events::Rule").values()
    }
    pattern = rules[PRODUCTION.names.spot_interruption_rule]["EventPattern"]
    # Another team's Spot fleet, and EC2's warning for any instance at all: not counted.
    assert not matches(pattern, _spot_warning("i-0other"))
    assert not matches(pattern, _job_event("other-team-queue", "RUNNABLE", [_host_lost("i-1")]))
    # The stack's own jobs: counted once per retry caused by an interruption.
    for queue in ("primary", "secondary"):
        assert matches(pattern, _job_event(queue, "RUNNABLE", [_host_lost("i-0abc")]))
        early_stop = {
            "container": {"exitCode": RETRYABLE_EXIT_CODE},
            "statusReason": "Essential container in task exited",
        }
        assert matches(pattern, _job_event(queue, "RUNNABLE", [early_stop]))
        # Not: the first RUNNABLE (no attempt yet), a success, a plain failure.
        assert not matches(pattern, _job_event(queue, "RUNNABLE", []))
        assert not matches(pattern, _job_event(queue, "SUCCEEDED", [_host_lost("i-0abc")]))
        crashed = {
            "container": {"exitCode": 1},
            "statusReason": "Essential container in task exited",
        }
        assert not matches(pattern, _job_event(queue, "RUNNABLE", [crashed]))


def _policy_statements(resources: Mapping[str, Any]) -> Iterator[tuple[str, Mapping[str, Any]]]:
    for logical_id, resource in resources.items():
        props = resource.get("Properties", {})
        documents = [p["PolicyDocument"] for p in props.get("Policies", [])]
        if resource["Type"] in ("AWS::IAM::Policy", "AWS::IAM::ManagedPolicy"):
            documents.append(props["PolicyDocument"])
        for document in documents:
            for stmt in document["Statement"]:
                yield logical_id, stmt


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_pass_role_names_the_service_it_passes_to(variant: str) -> None:
    """IAM user guide, "Grant a user permissions to pass a role to an AWS service" and the
    iam:PassedToService condition key: without it a role allowed iam:PassRole may hand the
    role to any service that accepts one (Lambda, EC2, Glue...), not only to ECS tasks."""
    passes = 0
    for logical_id, stmt in _policy_statements(_resolved(variant)):
        actions = [a.lower() for a in _as_list(stmt.get("Action", []))]
        if stmt["Effect"] != "Allow" or not any(
            fnmatch.fnmatchcase("iam:passrole", a) for a in actions
        ):
            continue
        passes += 1
        services = stmt.get("Condition", {}).get("StringEquals", {}).get("iam:PassedToService")
        assert services, f"{logical_id}: iam:PassRole without iam:PassedToService"
        assert "*" not in "".join(_as_list(services))
    if variant == "full":
        assert passes  # the Prefect worker passes the flow runs' roles


def test_deploy_creates_the_batch_service_linked_role_once(env) -> None:
    """IAM user guide, "Using service-linked roles": an account that never ran Batch has no
    AWSServiceRoleForBatch; AWS creates it only for an environment that names no role, and the
    stack names it, so deploy creates it first (and leaves an existing one alone)."""
    ensure_batch_service_linked_role(env.aws)
    iam = env.aws.client("iam")
    role = iam.get_role(RoleName="AWSServiceRoleForBatch")["Role"]
    account = env.aws.client("sts").get_caller_identity()["Account"]
    assert role["Arn"] == (
        f"arn:aws:iam::{account}:role/aws-service-role/batch.amazonaws.com/AWSServiceRoleForBatch"
    )
    assert ensure_batch_service_linked_role(env.aws) is False


@pytest.mark.parametrize("variant", VARIANTS)
def test_queue_priorities_order_queues_that_share_an_environment(variant: str) -> None:
    """AWS Batch user guide, "Job queue parameters": a queue's priority orders it only against
    queues associated with the same compute environment; the scheduler tries a queue's
    environments in ascending `order` (at most 3, all of one provisioning model). So the
    priorities 100/50 must meet in a shared environment, and the bulk (lower) queue must not
    reach the primary pool."""
    environments = {
        lid: e["Properties"]
        for lid, e in _rendered(variant)["Resources"].items()
        if e["Type"] == "AWS::Batch::ComputeEnvironment"
    }
    queues = {
        q["Properties"]["Priority"]: q["Properties"]
        for q in _of_type(_rendered(variant)["Resources"], "AWS::Batch::JobQueue").values()
    }
    assert len(queues) == 2
    uses: dict[int, list[str]] = {}
    for priority, props in queues.items():
        ordered = sorted(props["ComputeEnvironmentOrder"], key=lambda o: o["Order"])
        assert len({o["Order"] for o in ordered}) == len(ordered) <= 3
        uses[priority] = [o["ComputeEnvironment"]["Ref"] for o in ordered]
        kinds = {environments[lid]["ComputeResources"]["Type"] for lid in uses[priority]}
        assert kinds == {"SPOT"}
    high, low = max(uses), min(uses)
    assert high > low
    assert set(uses[high]) & set(uses[low]), "the priorities never meet: they order nothing"
    # The primary queue starts on its own pool; the bulk queue never enters it.
    assert uses[high][0] not in uses[low]
