"""Deploying the stack to the moto server: every resource moto emulates, with its properties;
idempotent applies; change sets for updates; failed creates rolled back; destroy; the CLI.

moto's CloudFormation does not create AWS::SecretsManager::Secret, AWS::S3::BucketPolicy,
AWS::SQS::QueuePolicy or AWS::SNS::TopicPolicy, nor S3 versioning/public-access settings; those
are covered by the template tests instead.
"""

from __future__ import annotations

import ast
import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from facefleet.common.names import RETRYABLE_EXIT_CODE
from facefleet.infra import deploy, lambda_package
from facefleet.infra.stack_config import StackConfig, local_stack_config, worker_environment
from facefleet.infra.template.batch import compute_environment_name, queue_environments
from facefleet.tools import cli
from tests.conftest import ServerEnv


def local_config(env: ServerEnv, **overrides: Any) -> StackConfig:
    return local_stack_config(env.names, env.aws, **overrides)


def aws(env: ServerEnv, service: str) -> Any:
    return env.aws.client(service)


def inline_policy(env: ServerEnv, role_arn: str) -> dict[str, Any]:
    iam = aws(env, "iam")
    role = role_arn.rsplit("/", 1)[-1]
    statements: list[dict[str, Any]] = []
    for name in iam.list_role_policies(RoleName=role)["PolicyNames"]:
        document = iam.get_role_policy(RoleName=role, PolicyName=name)["PolicyDocument"]
        if isinstance(document, str):
            # moto stores a CloudFormation-made inline policy as the Python repr of the dict.
            document = ast.literal_eval(document)
        statements.extend(document["Statement"])
    return {"Statement": statements}


def test_deploy_creates_every_emulated_resource(env: ServerEnv) -> None:
    config = local_config(env, max_receive_count=3)
    names = config.names
    plan = deploy.plan(config, env.aws)
    assert plan.change_set_type == "CREATE"
    assert {c.logical_id for c in plan.changes} >= {
        "IndexingQueue",
        "GroupFaceQueue",
        "PrimaryComputeEnvironment",
        "DetectionJobDefinition",
    }
    outputs = deploy.apply(config, env.aws, plan=plan)

    # SQS: both queues with DLQ + redrive, visibility 1800, SSE.
    sqs = aws(env, "sqs")
    for queue, output in (
        (names.indexing_queue, "IndexingQueueUrl"),
        (names.group_face_queue, "GroupFaceQueueUrl"),
    ):
        url = sqs.get_queue_url(QueueName=queue)["QueueUrl"]
        assert url.rsplit("/", 1)[-1] == outputs[output].rsplit("/", 1)[-1]
        attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
        assert attributes["VisibilityTimeout"] == "1800"
        assert attributes["ReceiveMessageWaitTimeSeconds"] == "20"
        assert attributes["SqsManagedSseEnabled"] == "true"
        redrive = json.loads(attributes["RedrivePolicy"])
        assert int(redrive["maxReceiveCount"]) == config.max_receive_count
        assert redrive["deadLetterTargetArn"].endswith(f":{names.dead_letter_queue(queue)}")

    # S3 model bucket, encrypted.
    s3 = aws(env, "s3")
    encryption = s3.get_bucket_encryption(Bucket=names.model_bucket)
    rule = encryption["ServerSideEncryptionConfiguration"]["Rules"][0]
    assert rule["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"
    assert outputs["ModelBucketName"] == names.model_bucket

    # ECR repository (moto keeps ImageScanningConfiguration in CloudFormation casing and
    # answers {} for it, and ignores LifecyclePolicy: both are checked in the template tests).
    repository = aws(env, "ecr").describe_repositories(repositoryNames=[names.ecr_repository])[
        "repositories"
    ][0]
    assert outputs["ImageUri"] == f"{repository['repositoryUri']}:latest"

    # Batch: compute environments, job queues and job definitions exactly as `Names` says.
    batch = aws(env, "batch")
    deployed = {
        spec.name: compute_environment_name(spec, config) for spec in names.compute_environments
    }
    environments = {
        ce["computeEnvironmentName"]: ce
        for ce in batch.describe_compute_environments(computeEnvironments=list(deployed.values()))[
            "computeEnvironments"
        ]
    }
    assert set(environments) == set(deployed.values())
    for spec in names.compute_environments:
        ce = environments[deployed[spec.name]]
        resources = ce["computeResources"]
        assert ce["type"] == "MANAGED" and resources["type"] == "SPOT"
        assert resources["maxvCpus"] == spec.max_vcpus
        assert resources["minvCpus"] == spec.min_vcpus
        assert resources["instanceTypes"] == list(spec.instance_types)
        assert resources["allocationStrategy"] == spec.allocation_strategy
        assert resources["subnets"] == list(config.subnet_ids)
        assert resources["securityGroupIds"] == [outputs["WorkerSecurityGroupId"]]
        assert ":instance-profile/" in resources["instanceRole"]
        assert ":role/" in ce["serviceRole"]
    queues = {
        q["jobQueueName"]: q
        for q in batch.describe_job_queues(jobQueues=[q.name for q in names.job_queues])[
            "jobQueues"
        ]
    }
    for queue_spec in names.job_queues:
        assert queues[queue_spec.name]["priority"] == queue_spec.priority
        order = queues[queue_spec.name]["computeEnvironmentOrder"]
        wanted = queue_environments(names)[queue_spec.name]
        assert [o["computeEnvironment"] for o in sorted(order, key=lambda o: o["order"])] == [
            environments[deployed[name]]["computeEnvironmentArn"] for name in wanted
        ]
    assert outputs["PrimaryJobQueueName"] == names.primary_queue.name
    for job_spec in names.job_definitions:
        found = batch.describe_job_definitions(jobDefinitionName=job_spec.name, status="ACTIVE")[
            "jobDefinitions"
        ]
        assert len(found) == 1, job_spec.name
        definition = found[0]
        container = definition["containerProperties"]
        assert container["command"] == list(job_spec.command)
        assert container["image"] == outputs["ImageUri"]
        retry = definition["retryStrategy"]
        assert retry["attempts"] == job_spec.attempts
        # moto answers the action in lower case.
        evaluate = [
            {k.lower(): v.upper() if k.lower() == "action" else v for k, v in e.items()}
            for e in retry["evaluateOnExit"]
        ]
        assert {"onstatusreason": "Host EC2*", "action": "RETRY"} in evaluate
        assert {"onexitcode": str(RETRYABLE_EXIT_CODE), "action": "RETRY"} in evaluate
        env_vars = {
            (e.get("name") or e.get("Name")): (e.get("value") or e.get("Value"))
            for e in container["environment"]
        }
        assert env_vars["QUEUE_URL"] == outputs["IndexingQueueUrl"]
        assert env_vars["FACE_GROUP_BUCKET_NAME"] == config.face_group_bucket
        assert env_vars["SERVICE_TYPE"] == job_spec.service_type
        assert not any("MONGO" in name for name in env_vars)
        # The job role is the deployed one, scoped to exactly this stack's queues.
        statements = inline_policy(env, container["jobRoleArn"])["Statement"]
        consumed = (
            names.indexing_queue
            if job_spec.service_type == "detection"
            else (names.group_face_queue)
        )
        receive = [s for s in statements if "sqs:ReceiveMessage" in s["Action"]]
        assert [s["Resource"] for s in receive] == [
            [
                outputs[
                    "IndexingQueueArn"
                    if job_spec.service_type == "detection"
                    else "GroupFaceQueueArn"
                ]
            ]
        ]
        assert receive[0]["Resource"][0].endswith(f":{consumed}")
        assert names.log_group in json.dumps(statements)
        for statement in statements:
            assert not any(a in ("sqs:*", "s3:*", "*") for a in statement["Action"])
    assert outputs["DetectionJobDefinitionName"] == names.detection_job.name
    assert outputs["GroupingJobDefinitionName"] == names.grouping_job.name

    # Log group, alerts topic, EventBridge rules targeting it.
    groups = aws(env, "logs").describe_log_groups(logGroupNamePrefix=names.log_group)
    assert [g["logGroupName"] for g in groups["logGroups"]] == [names.log_group]
    assert outputs["AlertsTopicArn"].endswith(f":{names.alerts_topic}")
    events = aws(env, "events")
    failed = events.describe_rule(Name=names.job_failed_rule)
    pattern = json.loads(failed["EventPattern"])
    assert pattern["detail"]["status"] == ["FAILED"]
    assert set(pattern["detail"]["jobQueue"]) == {q["jobQueueArn"] for q in queues.values()}
    spot = json.loads(events.describe_rule(Name=names.spot_interruption_rule)["EventPattern"])
    assert spot["source"] == ["aws.batch"]  # the stack's own jobs, not every EC2 Spot warning
    assert set(spot["detail"]["jobQueue"]) == {q["jobQueueArn"] for q in queues.values()}
    for rule in (names.job_failed_rule, names.spot_interruption_rule):
        targets = events.list_targets_by_rule(Rule=rule)["Targets"]
        assert [t["Arn"] for t in targets] == [outputs["AlertsTopicArn"]]

    # The worker environment contract from the outputs.
    worker = worker_environment(outputs)
    assert worker["QUEUE_URL"] == outputs["IndexingQueueUrl"]
    assert worker["GROUP_FACE_QUEUE_URL"] == outputs["GroupFaceQueueUrl"]
    assert worker["BUCKET_NAME"] == config.gallery_bucket
    assert worker["FACE_GROUP_BUCKET_NAME"] == config.face_group_bucket
    assert worker["LOG_GROUP"] == names.log_group
    assert worker["MODEL_BUCKET"] == names.model_bucket

    # Applying the same config again changes nothing, and is not an error.
    again = deploy.plan(config, env.aws)
    assert again.no_changes and again.summary().endswith("no changes")
    assert deploy.apply(config, env.aws) == outputs


def test_update_is_a_change_set_of_just_what_changed(env: ServerEnv) -> None:
    config = local_config(env)
    deploy.apply(config, env.aws)
    changed = dataclasses.replace(config, queue_visibility_timeout_s=900)
    plan = deploy.plan(changed, env.aws)
    assert plan.change_set_type == "UPDATE"
    assert {(c.action, c.logical_id) for c in plan.changes} == {
        ("Modify", "IndexingQueue"),
        ("Modify", "GroupFaceQueue"),
        # The cutover router's queues take the same visibility timeout.
        ("Modify", "IngressQueue"),
        ("Modify", "EcsIndexingQueue"),
    }
    assert "Modify" in plan.summary()
    deploy.apply(changed, env.aws, plan=plan)
    sqs = aws(env, "sqs")
    url = sqs.get_queue_url(QueueName=config.names.indexing_queue)["QueueUrl"]
    attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["VisibilityTimeout"])
    assert attributes["Attributes"]["VisibilityTimeout"] == "900"
    assert deploy.plan(changed, env.aws).no_changes
    # MongoDB URIs left unset on an existing stack keep the deployed secret values.
    unchanged = dataclasses.replace(changed, gallery_mongo_uri=None, huemn_mongo_uri=None)
    assert deploy.plan(unchanged, env.aws).no_changes


def test_fallback_dispatcher_deploys_lambda_and_schedule(env: ServerEnv) -> None:
    config = local_config(env, fallback_dispatcher=True)
    outputs = deploy.apply(config, env.aws)
    names = config.names
    function = aws(env, "lambda").get_function(FunctionName=names.dispatch_function)
    settings = function["Configuration"]
    assert settings["Handler"] == "facefleet.control.lambda_dispatch.handler"
    assert settings["Environment"]["Variables"]["FACEFLEET_PREFIX"] == names.prefix
    assert outputs["DispatchFunctionName"] == names.dispatch_function
    rule = aws(env, "events").describe_rule(Name=names.dispatch_schedule_rule)
    assert rule["ScheduleExpression"] == config.dispatch_schedule
    assert rule["State"] == "ENABLED"
    targets = aws(env, "events").list_targets_by_rule(Rule=names.dispatch_schedule_rule)
    assert targets["Targets"][0]["Arn"] == settings["FunctionArn"]
    bucket = deploy.artifact_bucket_name(config, env.aws)
    key = lambda_package.build().key
    assert aws(env, "s3").head_object(Bucket=bucket, Key=key)["ContentLength"] > 0
    assert deploy.plan(config, env.aws).no_changes


def test_failed_create_is_rolled_back(env: ServerEnv) -> None:
    config = local_config(env, subnet_ids=("subnet-00000000deadbeef0",))
    with pytest.raises(deploy.DeployError, match="subnet"):
        deploy.apply(config, env.aws)
    cloudformation = aws(env, "cloudformation")
    with pytest.raises(cloudformation.exceptions.ClientError, match="does not exist"):
        cloudformation.describe_stacks(StackName=config.names.stack_name)
    # The next attempt with a good config starts clean.
    good = local_config(env)
    assert deploy.apply(good, env.aws)["IndexingQueueUrl"]


def test_destroy_removes_the_stack(env: ServerEnv) -> None:
    config = local_config(env)
    deploy.apply(config, env.aws)
    assert deploy.destroy(config, env.aws) is True
    sqs = aws(env, "sqs")
    with pytest.raises(sqs.exceptions.ClientError):
        sqs.get_queue_url(QueueName=config.names.indexing_queue)
    assert deploy.destroy(config, env.aws) is False


def test_cli_apply_local_writes_outputs(
    env: ServerEnv, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "outputs.json"
    args = [
        "infra",
        "apply",
        "--local",
        "--prefix",
        env.names.prefix,
        "--stack-name",
        env.names.stack_name,
        "--out",
        str(out),
    ]
    assert cli.main(args) == 0
    data = json.loads(out.read_text())
    assert data["worker_environment"]["QUEUE_URL"].endswith(f"/{env.names.indexing_queue}")
    assert "CREATE" in capsys.readouterr().out
    assert cli.main(args) == 0
    assert "no changes" in capsys.readouterr().out
    assert (
        cli.main(
            ["infra", "destroy", "--prefix", env.names.prefix, "--stack-name", env.names.stack_name]
        )
        == 0
    )
    assert "deleted" in capsys.readouterr().out
