"""The rendered CloudFormation template, without any server: cfn-lint, least privilege, names
shared with the dispatch policy, the job definitions' contract, the Lambda zip, the image."""

from __future__ import annotations

import json
import re
import zipfile
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest

from facefleet.common.names import NAMES, RETRYABLE_EXIT_CODE, Names
from facefleet.control.policy import DispatchInputs, PolicyParams, QueueDepth, decide
from facefleet.infra import deploy, lambda_package, template
from facefleet.infra.stack_config import (
    DEFAULT_MAX_RECEIVE_COUNT,
    QueueRef,
    StackConfig,
    StackConfigError,
)

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "packages" / "infra" / "docker" / "Dockerfile"
EXISTING_QUEUE = "https://sqs.eu-west-1.amazonaws.com/111122223333/face-recognition-indexing"
EXISTING_SECRET = "arn:aws:secretsmanager:eu-west-1:111122223333:secret:gallery-AbCdEf"

BASE = StackConfig(vpc_id="vpc-1", subnet_ids=("subnet-1",))
FULL = StackConfig(
    vpc_id="vpc-1",
    subnet_ids=("subnet-1", "subnet-2"),
    security_group_ids=("sg-1",),
    indexing_queue=EXISTING_QUEUE,
    gallery_mongo_secret_arn=EXISTING_SECRET,
    fallback_dispatcher=True,
    alert_email="ops@example.com",
    max_receive_count=3,
    prefect_api_url="https://prefect.example.com/api",
    ingress_queue="https://sqs.us-east-1.amazonaws.com/123456789012/legacy-indexing",
)


def resources(rendered: dict[str, Any], kind: str) -> dict[str, dict[str, Any]]:
    return {k: v for k, v in rendered["Resources"].items() if v["Type"] == kind}


def policy_statements(rendered: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(role logical id, statement) for every identity policy in the template."""
    found: list[tuple[str, dict[str, Any]]] = []
    for role_id, role in resources(rendered, "AWS::IAM::Role").items():
        for policy in role["Properties"].get("Policies", []):
            found.extend((role_id, s) for s in policy["PolicyDocument"]["Statement"])
    return found


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def test_cfn_lint_passes_on_default_and_full_templates() -> None:
    for config in (BASE, FULL):
        errors, warnings = deploy.lint(template.to_json(template.render(config)), "us-east-1")
        assert errors == [] and warnings == []


def test_cfn_lint_is_really_checking() -> None:
    rendered = template.render(BASE)
    rendered["Resources"]["IndexingQueue"]["Properties"]["VisibilityTimeout"] = "soon"
    errors, _ = deploy.lint(template.to_json(rendered), "us-east-1")
    assert errors and any("VisibilityTimeout" in e for e in errors)


def test_render_is_deterministic() -> None:
    assert template.to_json(template.render(FULL)) == template.to_json(template.render(FULL))


def test_batch_resources_come_from_names() -> None:
    names = NAMES
    rendered = template.render(BASE)
    environments = {
        r["Properties"]["ComputeEnvironmentName"].rsplit("-", 1)[0]: r["Properties"]
        for r in resources(rendered, "AWS::Batch::ComputeEnvironment").values()
    }
    assert set(environments) == {"face-recognition-primary", "face-recognition-secondary"}
    for spec in names.compute_environments:
        compute = environments[spec.name]["ComputeResources"]
        assert compute["Type"] == "SPOT"
        assert compute["AllocationStrategy"] == spec.allocation_strategy
        assert (compute["MinvCpus"], compute["MaxvCpus"]) == (spec.min_vcpus, spec.max_vcpus)
        assert compute["InstanceTypes"] == list(spec.instance_types)
        assert compute["BidPercentage"] == 100
    assert environments["face-recognition-primary"]["ComputeResources"]["MaxvCpus"] == 16
    assert (
        environments["face-recognition-secondary"]["ComputeResources"]["AllocationStrategy"]
        == "SPOT_PRICE_CAPACITY_OPTIMIZED"
    )
    queues = {
        r["Properties"]["JobQueueName"]: r["Properties"]["Priority"]
        for r in resources(rendered, "AWS::Batch::JobQueue").values()
    }
    assert queues == {"face-recognition-primary-queue": 100, "face-recognition-secondary-queue": 50}
    definitions = {
        r["Properties"]["JobDefinitionName"]
        for r in resources(rendered, "AWS::Batch::JobDefinition").values()
    }
    assert definitions == {"face-recognition-job", "face-grouping-job"}
    assert "face-detection-job" not in definitions


def test_dispatch_policy_submits_only_to_what_the_template_creates() -> None:
    names = Names.for_prefix("acme")
    rendered = template.render(StackConfig(names=names))
    definitions = {
        r["Properties"]["JobDefinitionName"]
        for r in resources(rendered, "AWS::Batch::JobDefinition").values()
    }
    job_queues = {
        r["Properties"]["JobQueueName"]
        for r in resources(rendered, "AWS::Batch::JobQueue").values()
    }
    submitted = set()
    for backlog in (5, 500, 5_000, 50_000):
        inputs = DispatchInputs(QueueDepth(backlog), QueueDepth(backlog))
        for submission in decide(inputs, PolicyParams(), names).submissions:
            assert submission.job_definition in definitions
            assert submission.job_queue in job_queues
            submitted.add(submission.job_definition)
    assert submitted == definitions  # both kinds were exercised


def test_job_definitions_contract() -> None:
    rendered = template.render(BASE)
    detection = rendered["Resources"]["DetectionJobDefinition"]["Properties"]
    grouping = rendered["Resources"]["GroupingJobDefinition"]["Properties"]
    for props, spec in ((detection, NAMES.detection_job), (grouping, NAMES.grouping_job)):
        container = props["ContainerProperties"]
        assert container["Command"] == list(spec.command)
        requirements = {r["Type"]: r["Value"] for r in container["ResourceRequirements"]}
        # Below what ECS registers on every allowed type (tests/contract/test_instance_fit.py).
        assert requirements == {
            "VCPU": str(spec.vcpus),
            "MEMORY": str(spec.memory_mib),
            "GPU": "1",
        }
        assert spec.memory_mib < 16384
        assert props["Timeout"]["AttemptDurationSeconds"] == spec.timeout_s
        retry = props["RetryStrategy"]
        assert retry["Attempts"] == spec.attempts
        assert retry["EvaluateOnExit"] == [
            {"OnStatusReason": "Host EC2*", "Action": "RETRY"},
            {"OnExitCode": str(RETRYABLE_EXIT_CODE), "Action": "RETRY"},
            {"OnReason": "*", "Action": "EXIT"},
        ]
        env = {e["Name"]: e["Value"] for e in container["Environment"]}
        assert env["SERVICE_TYPE"] == spec.service_type
        assert env["MESSAGE_VISIBILITY_TIMEOUT"] == "1800"
        assert env["BATCH_SIZE"] == "5" and env["MAX_FACE_WORKERS"] == "4"
        assert env["QUEUE_URL"] == {"Ref": "IndexingQueue"}
        assert env["GROUP_FACE_QUEUE_URL"] == {"Ref": "GroupFaceQueue"}
        assert env["BUCKET_NAME"] == "gallery-images"
        assert env["FACE_GROUP_BUCKET_NAME"] == "face-group-images"
        assert env["LOG_GROUP"] == NAMES.log_group
        assert env["MODEL_BUCKET"] == NAMES.model_bucket
        # MongoDB URIs are secrets, never plain environment values.
        assert not any("MONGO" in name for name in env)
        assert not any("mongodb://" in json.dumps(v) for v in env.values())
        secrets = {s["Name"]: s["ValueFrom"] for s in container["Secrets"]}
        assert secrets["GALLERY_IMAGES_MONGO_URI"] == {"Ref": "GalleryMongoSecret"}
        assert container["LogConfiguration"]["Options"]["awslogs-group"] == {"Ref": "LogGroup"}
    assert "HUEMN_MONGO_URI" in {s["Name"] for s in grouping["ContainerProperties"]["Secrets"]}


def test_mongo_uris_travel_only_as_noecho_parameters() -> None:
    config = StackConfig(
        vpc_id="vpc-1", subnet_ids=("subnet-1",), gallery_mongo_uri="mongodb://user:pw@db/gallery"
    )
    rendered = template.render(config)
    assert "pw@db" not in template.to_json(rendered)
    assert rendered["Parameters"][template.GALLERY_URI_PARAMETER]["NoEcho"] is True
    assert template.parameter_values(config)[template.GALLERY_URI_PARAMETER] == (
        "mongodb://user:pw@db/gallery"
    )


S3_OR_SQS = re.compile(r"^(s3|sqs):")


def test_least_privilege() -> None:
    for config in (BASE, FULL):
        rendered = template.render(config)
        statements = policy_statements(rendered)
        assert statements
        for role, stmt in statements:
            assert stmt["Effect"] == "Allow"
            actions = as_list(stmt["Action"])
            for action in actions:
                assert "*" not in action, f"{role}: wildcard action {action}"
                # The plan's "MongoDB policy" with network-interface actions is not IAM's job.
                assert "NetworkInterface" not in action, f"{role}: {action}"
            resources_ = as_list(stmt["Resource"])
            if any(S3_OR_SQS.match(a) for a in actions):
                assert all(S3_OR_SQS.match(a) for a in actions), f"{role}: mixed statement"
                for resource in resources_:
                    assert resource != "*", f"{role}: {actions} on every resource"
                    text = json.dumps(resource)
                    # Exact ARNs: a bucket's objects (bucket/*) is the only wildcard allowed.
                    assert "*" not in text.replace("/*", ""), f"{role}: {text}"
            if resources_ == ["*"]:
                allowed = {
                    "cloudwatch:PutMetricData",
                    "batch:DescribeJobs",
                    "batch:ListJobs",
                    "cloudwatch:GetMetricStatistics",
                    # Flows runtime: account-wide calls with no resource-level permission.
                    "ecr:GetAuthorizationToken",
                    "ecs:DescribeTaskDefinition",
                    "ecs:RegisterTaskDefinition",
                    "ec2:DescribeSecurityGroups",
                    "ec2:DescribeSubnets",
                    "ec2:DescribeVpcs",
                    # The savings flow: Spot and on-demand prices are not resources.
                    "ec2:DescribeSpotPriceHistory",
                    "pricing:GetProducts",
                }
                assert set(actions) <= allowed, f"{role}: {actions} on *"
            if "cloudwatch:PutMetricData" in actions:
                assert stmt["Condition"] == {
                    "StringEquals": {"cloudwatch:namespace": NAMES.metrics_namespace}
                }
        # No AWS managed "FullAccess" policies on the roles the jobs run as.
        for role_resource in resources(rendered, "AWS::IAM::Role").values():
            for managed in role_resource["Properties"].get("ManagedPolicyArns", []):
                assert "FullAccess" not in json.dumps(managed)


def _role_grants(rendered: dict[str, Any], role: str) -> dict[str, list[str]]:
    grants: dict[str, list[str]] = {}
    for role_id, stmt in policy_statements(rendered):
        if role_id == role:
            for action in as_list(stmt["Action"]):
                grants.setdefault(action, []).extend(
                    json.dumps(r, sort_keys=True) for r in as_list(stmt["Resource"])
                )
    return grants


def test_job_roles_reach_exactly_their_queues_buckets_and_secrets() -> None:
    rendered = template.render(BASE)
    detection = _role_grants(rendered, template.DETECTION_JOB_ROLE)
    grouping = _role_grants(rendered, template.GROUPING_JOB_ROLE)
    indexing_arn = json.dumps({"Fn::GetAtt": ["IndexingQueue", "Arn"]}, sort_keys=True)
    group_face_arn = json.dumps({"Fn::GetAtt": ["GroupFaceQueue", "Arn"]}, sort_keys=True)
    assert detection["sqs:ReceiveMessage"] == [indexing_arn]
    assert detection["sqs:SendMessage"] == [group_face_arn]
    assert grouping["sqs:ReceiveMessage"] == [group_face_arn]
    assert "sqs:SendMessage" not in grouping
    assert "gallery-images/*" in detection["s3:GetObject"][0]
    assert "face-group-images/*" in detection["s3:PutObject"][0]
    assert not any("gallery-images" in r for r in grouping.get("s3:GetObject", []))
    # Forgetting faces (deleted photos, erased users) deletes only face-group objects: crops and
    # covers, never a gallery photo.
    for grants in (detection, grouping):
        assert [r for r in grants["s3:DeleteObject"] if "face-group-images/*" in r] == grants[
            "s3:DeleteObject"
        ]
        assert grants["s3:DeleteObject"]
        assert not any("gallery-images" in r for r in grants["s3:DeleteObject"])
        assert any("face-group-images" in r for r in grants["s3:ListBucket"])
    assert any(NAMES.log_group in r for r in detection["logs:PutLogEvents"])
    # Secrets are read by the execution role (the agent injects them), not by the job's code.
    execution = _role_grants(rendered, template.EXECUTION_ROLE)
    assert sorted(execution["secretsmanager:GetSecretValue"]) == sorted(
        json.dumps({"Ref": s}) for s in (template.GALLERY_SECRET, template.HUEMN_SECRET)
    )
    assert "secretsmanager:GetSecretValue" not in detection


def test_existing_queues_and_secrets_are_referenced_not_created() -> None:
    rendered = template.render(FULL)
    queues = resources(rendered, "AWS::SQS::Queue")
    assert "IndexingQueue" not in queues and "IndexingQueueDeadLetter" not in queues
    assert queues["GroupFaceQueue"]["Properties"]["RedrivePolicy"]["maxReceiveCount"] == 3
    existing_arn = "arn:aws:sqs:eu-west-1:111122223333:face-recognition-indexing"
    assert QueueRef.parse(EXISTING_QUEUE, "us-east-1").arn == existing_arn
    detection = _role_grants(rendered, template.DETECTION_JOB_ROLE)
    assert detection["sqs:ReceiveMessage"] == [json.dumps(existing_arn)]
    env = {
        e["Name"]: e["Value"]
        for e in rendered["Resources"]["DetectionJobDefinition"]["Properties"][
            "ContainerProperties"
        ]["Environment"]
    }
    assert env["QUEUE_URL"] == EXISTING_QUEUE
    assert template.GALLERY_SECRET not in rendered["Resources"]
    assert template.GALLERY_URI_PARAMETER not in rendered["Parameters"]
    execution = _role_grants(rendered, template.EXECUTION_ROLE)
    assert json.dumps(EXISTING_SECRET) in execution["secretsmanager:GetSecretValue"]


def test_queues_model_bucket_repository_and_alerts() -> None:
    rendered = template.render(BASE)
    queues = resources(rendered, "AWS::SQS::Queue")
    for name in ("IndexingQueue", "GroupFaceQueue"):
        props = queues[name]["Properties"]
        assert props["VisibilityTimeout"] == 1800
        assert props["SqsManagedSseEnabled"] is True
        assert props["RedrivePolicy"] == {
            "deadLetterTargetArn": {"Fn::GetAtt": [f"{name}DeadLetter", "Arn"]},
            "maxReceiveCount": DEFAULT_MAX_RECEIVE_COUNT,
        }
        assert queues[f"{name}DeadLetter"]["Properties"]["SqsManagedSseEnabled"] is True
    bucket = rendered["Resources"]["ModelBucket"]
    assert bucket["Properties"]["VersioningConfiguration"] == {"Status": "Enabled"}
    assert all(bucket["Properties"]["PublicAccessBlockConfiguration"].values())
    assert bucket["DeletionPolicy"] == "RetainExceptOnCreate"
    tls = rendered["Resources"]["ModelBucketPolicy"]["Properties"]["PolicyDocument"]
    assert tls["Statement"][0]["Effect"] == "Deny"
    assert tls["Statement"][0]["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    repo = rendered["Resources"]["WorkerImageRepository"]["Properties"]
    assert repo["RepositoryName"] == "face-recognition"
    assert repo["ImageScanningConfiguration"] == {"ScanOnPush": True}
    assert json.loads(repo["LifecyclePolicy"]["LifecyclePolicyText"])["rules"]
    rules = resources(rendered, "AWS::Events::Rule")
    patterns = {r["Properties"]["Name"]: r["Properties"]["EventPattern"] for r in rules.values()}
    assert patterns[NAMES.job_failed_rule]["detail"]["status"] == ["FAILED"]
    assert patterns[NAMES.spot_interruption_rule]["detail-type"] == ["Batch Job State Change"]
    assert "DispatchFunction" not in rendered["Resources"]  # fallback dispatcher off by default


def test_fallback_dispatcher_resources() -> None:
    rendered = template.render(FULL)
    function = rendered["Resources"]["DispatchFunction"]["Properties"]
    assert function["Handler"] == "facefleet.control.lambda_dispatch.handler"
    assert function["Environment"]["Variables"]["FACEFLEET_PREFIX"] == NAMES.prefix
    assert function["Code"]["S3Key"] == lambda_package.build().key
    schedule = rendered["Resources"]["DispatchSchedule"]["Properties"]
    assert schedule["State"] == "ENABLED" and schedule["Name"] == NAMES.dispatch_schedule_rule
    grants = _role_grants(rendered, template.DISPATCH_ROLE)
    assert any("job-definition/face-recognition-job" in r for r in grants["batch:SubmitJob"])


def test_lambda_package_holds_the_handler_and_only_facefleet_code() -> None:
    package = lambda_package.build()
    assert package.sha256 == lambda_package.build().sha256  # reproducible
    names = set(zipfile.ZipFile(BytesIO(package.data)).namelist())
    assert {
        "facefleet/control/lambda_dispatch.py",
        "facefleet/control/policy.py",
        "facefleet/control/observe.py",
        "facefleet/common/names.py",
        "facefleet/common/aws.py",
    } <= names
    assert not any(n.startswith("facefleet/worker") for n in names)
    assert "facefleet/tools/cli.py" not in names
    # The Lambda zip is control + common only.
    assert all(n.startswith(("facefleet/control/", "facefleet/common/")) for n in names)


def test_invalid_configs_name_the_field() -> None:
    with pytest.raises(StackConfigError, match="max_receive_count"):
        template.render(StackConfig(max_receive_count=0))
    with pytest.raises(StackConfigError, match="indexing_queue"):
        template.render(StackConfig(indexing_queue="not-a-queue"))
    with pytest.raises(StackConfigError, match="subnet_ids"):
        StackConfig(vpc_id="vpc-1").validate(deploying=True)


def test_dockerfile_entrypoints_exist_and_match_job_definitions() -> None:
    text = DOCKERFILE.read_text()
    assert re.search(r"^FROM \$\{CUDA_IMAGE\}", text, re.M)
    assert "nvidia/cuda" in text and "--extra gpu" in text
    assert re.search(r"^USER (?!root)\w+", text, re.M)
    workdir = re.findall(r"^WORKDIR (\S+)", text, re.M)[-1]
    assert workdir == template.CONTAINER_WORKDIR
    for spec in NAMES.job_definitions:
        script = spec.command[-1]
        assert script in text, f"the image does not copy {script}"
        path = ROOT / script
        assert path.is_file(), f"{script} is missing from the repository"
        module = re.search(r"^from (facefleet\.[\w.]+) import main", path.read_text(), re.M)
        assert module, f"{script} does not run a facefleet main()"
        source = ROOT / "packages" / "worker" / "src" / Path(*module.group(1).split("."))
        assert source.with_suffix(".py").is_file() or (source / "__init__.py").is_file()


def test_worker_settings_reach_the_job_definitions_and_unknown_names_are_refused() -> None:
    local = StackConfig(worker_settings={"MODEL_DIR": "/srv/models/dev", "IDLE_EXIT_SECONDS": "20"})
    rendered = template.render(local)
    for name in ("DetectionJobDefinition", "GroupingJobDefinition"):
        container = rendered["Resources"][name]["Properties"]["ContainerProperties"]
        env = {e["Name"]: e["Value"] for e in container["Environment"]}
        assert env["MODEL_DIR"] == "/srv/models/dev" and env["IDLE_EXIT_SECONDS"] == "20"
    default = template.render(BASE)["Resources"]["DetectionJobDefinition"]["Properties"]
    env = {e["Name"]: e["Value"] for e in default["ContainerProperties"]["Environment"]}
    assert env["MODEL_DIR"].endswith("/models/buffalo_l")
    with pytest.raises(StackConfigError, match="MODEL_DIRECTORY"):
        template.render(StackConfig(worker_settings={"MODEL_DIRECTORY": "/x"}))


def test_stack_config_from_env_precedence() -> None:
    from facefleet.common.aws import AwsTarget

    aws = AwsTarget()
    environ = {"GALLERY_IMAGES_MONGO_URI": "mongodb://env/g", "HUEMN_MONGO_URI": "mongodb://env/h"}
    from_env = StackConfig.from_env(NAMES, aws, environ=environ)
    assert (from_env.gallery_mongo_uri, from_env.huemn_mongo_uri) == (
        "mongodb://env/g",
        "mongodb://env/h",
    )
    overridden = StackConfig.from_env(
        NAMES,
        aws,
        overrides={
            "gallery_mongo_uri": "mongodb://flag/g",
            "huemn_mongo_secret_arn": "arn:aws:secretsmanager:us-east-1:1:secret:h",
            "subnet_ids": ["subnet-1"],
        },
        environ=environ,
    )
    assert overridden.gallery_mongo_uri == "mongodb://flag/g"  # an explicit value wins
    assert overridden.huemn_mongo_uri is None  # an existing secret: the env URI is not used
    assert overridden.subnet_ids == ("subnet-1",)
    assert StackConfig.from_env(NAMES, aws, environ={}).gallery_mongo_uri is None


def test_invalid_flags_end_in_an_error_line_not_a_traceback(capsys: Any) -> None:
    """`facefleet infra render` (the console script, as an operator runs it) with flags no stack
    can have: exit 2 and one line naming each problem; plan and doctor alike."""
    import subprocess
    import sys

    from facefleet.tools import cli

    same = "https://sqs.ap-south-1.amazonaws.com/111122223333/indexing"
    command = [str(Path(sys.executable).parent / "facefleet"), "infra", "render"]
    command += ["--max-receive-count", "0", "--ingress-queue", same, "--indexing-queue", same]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("facefleet infra render: error: ")
    assert "max_receive_count=0" in line and "ingress_queue must differ" in line

    for argv, problem in (
        (["infra", "plan", "--subnet-ids", "subnet-1"], "vpc_id is required"),
        (["infra", "doctor", "--indexing-queue", "not-a-queue"], "not an SQS queue URL"),
    ):
        assert cli.main(argv) == 2
        err = capsys.readouterr().err
        assert f"facefleet infra {argv[1]}: error: " in err and problem in err


def test_a_few_spot_interruptions_cannot_dead_letter_a_good_message(env) -> None:
    """SQS counts every receive towards maxReceiveCount, released or not. A good message caught
    in work by as many Spot interruptions as a job has attempts (each releases it, visibility 0),
    and by as many hard kills or outage releases, is still delivered, not dead-lettered, on the
    queue as the template configures it (moto's redrive)."""
    spot_releases = NAMES.detection_job.attempts  # one per job attempt the retry strategy allows
    redrive = template.render(BASE)["Resources"]["IndexingQueue"]["Properties"]["RedrivePolicy"]
    sqs = env.aws.client("sqs")
    dlq = sqs.create_queue(QueueName=f"{env.names.prefix}-good-dlq")["QueueUrl"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    policy = {"deadLetterTargetArn": dlq_arn, "maxReceiveCount": redrive["maxReceiveCount"]}
    queue = sqs.create_queue(
        QueueName=f"{env.names.prefix}-good",
        Attributes={"RedrivePolicy": json.dumps(policy), "VisibilityTimeout": "30"},
    )["QueueUrl"]
    sqs.send_message(QueueUrl=queue, MessageBody="{}")
    for _ in range(2 * spot_releases - 1):  # each ended by a release, never a delete
        (message,) = sqs.receive_message(QueueUrl=queue, WaitTimeSeconds=1)["Messages"]
        sqs.change_message_visibility(
            QueueUrl=queue, ReceiptHandle=message["ReceiptHandle"], VisibilityTimeout=0
        )
    delivered = sqs.receive_message(QueueUrl=queue, WaitTimeSeconds=1).get("Messages", [])
    assert len(delivered) == 1, "dead-lettered after a few Spot releases"
    assert sqs.receive_message(QueueUrl=dlq, WaitTimeSeconds=0).get("Messages", []) == []
