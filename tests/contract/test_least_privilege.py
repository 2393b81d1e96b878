"""Least privilege by enforcement: the workers' and the dispatcher's real code paths run under
credentials that carry exactly the template's policy for their role, against a dedicated moto
server with IAM authorization on (INITIAL_NO_AUTH_ACTION_COUNT: off for the set-up, then 0), and
every call succeeds; calls outside the policy are denied.

The stack is the production rendering (ap-south-1, the existing service's queues in two other
accounts) with only the queue URLs swapped for moto's queues of the same names: the test checks
that the two templates differ in nothing else, then judges the recorded calls again against the
production rendering's policies (its ARNs, its region and accounts).

What moto enforces here: SQS (queue ARNs) and S3 (bucket and object ARNs). What it cannot (see
iam_support's docstring: Batch, SSM, DynamoDB and CloudWatch are authorized against "*" and
without condition keys) runs on a second dedicated moto server without authorization, and the
calls recorded in the same run are judged by `iam_support.allowed`. Only a real account proves
the resource policies on the other side: the existing queues' policies in their owner accounts
(`facefleet infra doctor` checks them read-only), bucket policies and KMS keys.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from facefleet.common.aws import AwsTarget
from facefleet.common.config import Settings
from facefleet.common.messages import DetectionRequest
from facefleet.common.names import NAMES
from facefleet.common.s3keys import cover_key, image_key
from facefleet.embedded import servers as local
from facefleet.infra import lambda_package, template
from facefleet.worker.detection.service import DetectionService
from facefleet.worker.grouping import writeback as grouping_writeback
from facefleet.worker.privacy.worker import build_service
from facefleet.worker.runtime.consumer import Consumer, ConsumerConfig
from tests.conftest import FACES_DIR, MODELS_DIR
from tests.contract.conftest import EXISTING_GROUP_FACE, EXISTING_INDEXING, PRODUCTION
from tests.contract.iam_support import (
    Call,
    Context,
    Recorder,
    denied_requests,
    resolve,
    role_policy,
)
from tests.flows_support import create_batch

REGION = "us-east-1"
ACCOUNT = "123456789012"  # moto's
PRODUCTION_ACCOUNT = "111122223333"  # the account the stack is deployed in
ROLES = {
    "dispatch": template.DISPATCH_ROLE,
    "detection": template.DETECTION_JOB_ROLE,
    "grouping": template.GROUPING_JOB_ROLE,
}
MODELS = MODELS_DIR
USER = "lp-user"
# Services moto authorizes faithfully go to the authorizing server; the others to a plain one.
ENFORCED = ("sqs", "s3")
JUDGED = ("batch", "ssm", "dynamodb", "cloudwatch", "cloudformation", "logs", "secretsmanager")


def _queue_name(url: str) -> str:
    return url.rstrip("/").rsplit("/", 1)[-1]


@dataclass
class Run:
    rendered: dict[str, Any]
    production: dict[str, Any]
    policies: dict[str, dict[str, Any]]
    recorder: Recorder
    moto_queue_urls: dict[str, str]
    denied: dict[str, str] = field(default_factory=dict)  # what -> error code
    results: dict[str, Any] = field(default_factory=dict)


def _post(url: str, body: bytes) -> None:
    request = urllib.request.Request(
        url, data=body, method="POST", headers={"Content-Type": "application/octet-stream"}
    )
    with urllib.request.urlopen(request, timeout=10):
        pass


def _client(service: str, endpoint: str) -> Any:
    return boto3.client(
        service,
        region_name=REGION,
        endpoint_url=endpoint,
        aws_access_key_id="setup",
        aws_secret_access_key="setup",
    )


def _jpeg(faces_dir: Path) -> list[bytes]:
    # Two photos of one person (one face each): grouping makes a person with a cover.
    person = next(
        p for p in sorted((faces_dir / "lfw").iterdir()) if len(list(p.glob("*.jpg"))) > 2
    )
    photos = sorted(person.glob("*.jpg"))[:3]
    assert photos, f"no LFW photos under {faces_dir}"
    return [p.read_bytes() for p in photos]


def _code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, local_servers: local.StackState) -> Iterator[Run]:
    state = tmp_path_factory.mktemp("least-privilege")
    with pytest.MonkeyPatch.context() as mp:
        # Set-up calls are unauthenticated ("inf"); /moto-api/reset-auth turns it on below.
        mp.setenv("INITIAL_NO_AUTH_ACTION_COUNT", "inf")
        enforcing = local.start_service("moto", state)
    (state / "judged").mkdir()
    judged = local.start_service("moto", state / "judged")
    try:
        with pytest.MonkeyPatch.context() as mp:
            for name, value in local.LOCAL_AWS_ENV.items():  # the set-up's (any) credentials
                mp.setenv(name, value)
            mp.delenv("AWS_ENDPOINT_URL", raising=False)
            yield _run(state, enforcing, judged, local_servers)
    finally:
        local.stop_service(enforcing)
        local.stop_service(judged)


def _run(
    state: Path,
    enforcing_server: local.ServiceProcess,
    judged_server: local.ServiceProcess,
    servers: local.StackState,
) -> Run:
    enforcing = f"http://{local.LOOPBACK}:{enforcing_server.port}"
    judged = f"http://{local.LOOPBACK}:{judged_server.port}"
    sqs, s3, iam = (_client(s, enforcing) for s in ("sqs", "s3", "iam"))

    # Production's existing queues, under their own names (not the prefix's).
    moto_urls = {
        url: sqs.create_queue(QueueName=_queue_name(url))["QueueUrl"]
        for url in (EXISTING_INDEXING, EXISTING_GROUP_FACE)
    }
    config = replace(
        PRODUCTION,
        indexing_queue=moto_urls[EXISTING_INDEXING],
        group_face_queue=moto_urls[EXISTING_GROUP_FACE],
    )
    package = lambda_package.build()
    rendered = template.render(config, package)
    production = template.render(PRODUCTION, package)
    for bucket in (config.gallery_bucket, config.face_group_bucket, config.model_bucket_name):
        s3.create_bucket(Bucket=bucket)
    for path in MODELS.glob("*.onnx"):
        s3.put_object(
            Bucket=config.model_bucket_name,
            Key=f"facefleet-dev/{path.name}",
            Body=path.read_bytes(),
        )

    # Batch, the lease table and the rest on the judged server (as the stack would create them).
    judged_aws = AwsTarget(REGION, judged)
    create_batch(NAMES, judged_aws)
    batch = judged_aws.client("batch")
    job_queues = {
        q["jobQueueName"]: q["jobQueueArn"]
        for q in batch.describe_job_queues(jobQueues=[q.name for q in NAMES.job_queues])[
            "jobQueues"
        ]
    }
    lease_arn = judged_aws.client("dynamodb").describe_table(TableName=NAMES.dispatch_lease_table)[
        "Table"
    ]["TableArn"]
    context = Context(
        REGION,
        ACCOUNT,
        refs={
            "PrimaryJobQueue": job_queues[NAMES.primary_queue.name],
            "SecondaryJobQueue": job_queues[NAMES.secondary_queue.name],
            "LogGroup": NAMES.log_group,
            "ModelBucket": config.model_bucket_name,
            template.GALLERY_SECRET: f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:g-AbCdEf",
            template.HUEMN_SECRET: f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:h-AbCdEf",
        },
        attributes={"DispatchLeaseTable.Arn": lease_arn},
    )
    policies = {who: role_policy(rendered, role, context) for who, role in ROLES.items()}
    keys = {}
    for who, policy in policies.items():
        iam.create_user(UserName=f"role-{who}")
        iam.put_user_policy(
            UserName=f"role-{who}", PolicyName="template", PolicyDocument=json.dumps(policy)
        )
        keys[who] = iam.create_access_key(UserName=f"role-{who}")["AccessKey"]

    # Work for the run: two photos and their detection requests on the existing indexing queue.
    indexing_url = moto_urls[EXISTING_INDEXING]
    for index, data in enumerate(_jpeg(FACES_DIR)):
        image_id = f"photo{index}"
        key = image_key(USER, image_id)
        s3.put_object(Bucket=config.gallery_bucket, Key=key, Body=data)
        sqs.send_message(
            QueueUrl=indexing_url,
            MessageBody=DetectionRequest(USER, image_id, config.gallery_bucket, key).to_body(),
        )

    _post(f"{enforcing}/moto-api/reset-auth", b"0")  # authorization on, from the next request

    recorder = Recorder()
    result = Run(rendered, production, policies, recorder, moto_urls)
    with pytest.MonkeyPatch.context() as mp:
        recorder.install(mp)
        mp.delenv("AWS_ENDPOINT_URL", raising=False)
        mp.delenv("AWS_SESSION_TOKEN", raising=False)
        mp.setenv("AWS_DEFAULT_REGION", REGION)
        for service in ENFORCED:
            mp.setenv(f"AWS_ENDPOINT_URL_{service.upper()}", enforcing)
        for service in JUDGED:
            mp.setenv(f"AWS_ENDPOINT_URL_{service.upper()}", judged)

        def become(who: str) -> None:
            recorder.principal = who
            key = keys[who.split(":", 1)[0]]
            mp.setenv("AWS_ACCESS_KEY_ID", key["AccessKeyId"])
            mp.setenv("AWS_SECRET_ACCESS_KEY", key["SecretAccessKey"])

        mongo = f"{servers.mongo_uri}"
        _dispatch_tick(result, become, mp)
        _detection_batch(result, become, mongo, state)
        _grouping_batch(result, become, mongo)
        recorder.principal = "done"
    return result


def _job_environment(rendered: dict[str, Any], logical_id: str, context: Context) -> dict[str, str]:
    container = rendered["Resources"][logical_id]["Properties"]["ContainerProperties"]
    return {e["Name"]: str(e["Value"]) for e in resolve(container["Environment"], context)}


def _context() -> Context:
    return Context(REGION, ACCOUNT, refs={"LogGroup": NAMES.log_group, "ModelBucket": ""})


def _dispatch_tick(result: Run, become: Any, mp: pytest.MonkeyPatch) -> None:
    from facefleet.control.lambda_dispatch import handler

    function = result.rendered["Resources"]["DispatchFunction"]["Properties"]
    variables = resolve(function["Environment"]["Variables"], _context())
    for name, value in variables.items():
        mp.setenv(name, str(value))
    become("dispatch")
    result.results["dispatch"] = handler({}, None)
    for name in variables:
        mp.delenv(name)
    become("dispatch:outside")
    sqs = AwsTarget(REGION).client("sqs")
    try:
        sqs.receive_message(QueueUrl=result.moto_queue_urls[EXISTING_INDEXING])
    except ClientError as error:
        result.denied["dispatch receives from the indexing queue"] = _code(error)


def _worker_settings(result: Run, logical_id: str, mongo: str, **extra: str) -> Settings:
    environment = _job_environment(result.rendered, logical_id, _context())
    environment.update(
        {
            "GALLERY_IMAGES_MONGO_URI": f"{mongo}/lp_gallery",
            "HUEMN_MONGO_URI": f"{mongo}/lp_huemn",
            "METRICS_TO_CLOUDWATCH": "true",
            "POLL_WAIT_SECONDS": "1",
            "IDLE_EXIT_SECONDS": "2",
            "SPOT_NOTICE_POLL_SECONDS": "0",
            **extra,
        }
    )
    return Settings.from_env(environment)


def _detection_batch(result: Run, become: Any, mongo: str, state: Path) -> None:
    become("detection")
    settings = _worker_settings(
        result,
        "DetectionJobDefinition",
        mongo,
        MODEL_PACK="facefleet-dev",
        MODEL_DIR=str(state / "models" / "facefleet-dev"),  # synced from the model bucket
    )
    service = DetectionService.from_settings(settings)
    try:
        config = ConsumerConfig.from_settings(settings, settings.queue_url)
        result.results["detection_exit"] = Consumer(config, service.handle).run()
    finally:
        service.close()
    become("detection:outside")
    s3 = AwsTarget(REGION).client("s3")
    try:
        s3.delete_object(Bucket=settings.bucket_name, Key=image_key(USER, "photo0"))
    except ClientError as error:
        result.denied["detection deletes a gallery photo"] = _code(error)


def _grouping_batch(result: Run, become: Any, mongo: str) -> None:
    become("grouping")
    settings = _worker_settings(result, "GroupingJobDefinition", mongo)
    service = build_service(settings)
    config = ConsumerConfig.from_settings(settings, settings.group_face_queue_url)
    result.results["grouping_exit"] = Consumer(config, service.handle).run()
    s3 = settings.aws.client("s3")
    bucket = settings.face_group_bucket_name
    assert bucket
    # The store's own calls for a missing crop and a removed person's cover.
    missing = grouping_writeback._copy_crop(USER, 999, f"faces/{USER}/gone/0.jpg", s3, bucket)
    result.results["missing_crop_cover"] = missing
    covers = s3.list_objects_v2(Bucket=bucket, Prefix=f"people/{USER}/").get("Contents", [])
    result.results["covers"] = [c["Key"] for c in covers]
    if covers:
        s3.delete_object(Bucket=bucket, Key=covers[0]["Key"])
    else:  # no cover was written: delete the key a cover would have
        s3.delete_object(Bucket=bucket, Key=cover_key(USER, 1, "x.jpg"))
    become("grouping:outside")
    sqs = AwsTarget(REGION).client("sqs")
    try:
        sqs.send_message(QueueUrl=result.moto_queue_urls[EXISTING_INDEXING], MessageBody="{}")
    except ClientError as error:
        result.denied["grouping sends to the indexing queue"] = _code(error)
    # Grouping may delete crops and covers (forgetting deleted photos, erasing users), never
    # a gallery photo.
    try:
        s3.delete_object(Bucket=settings.bucket_name or "gallery", Key=image_key(USER, "photo0"))
    except ClientError as error:
        result.denied["grouping deletes a gallery photo"] = _code(error)


# -- the assertions --------------------------------------------------------------------------


def test_the_tested_stack_is_the_production_stack_but_for_the_queue_urls(run: Run) -> None:
    text = template.to_json(run.rendered)
    for production_url, moto_url in run.moto_queue_urls.items():
        name = _queue_name(production_url)
        account = production_url.rstrip("/").split("/")[-2]
        text = text.replace(moto_url, production_url)
        text = text.replace(
            f"arn:aws:sqs:{REGION}:{ACCOUNT}:{name}", f"arn:aws:sqs:ap-south-1:{account}:{name}"
        )
    assert text == template.to_json(run.production)


def test_every_real_call_succeeded_under_the_template_policy(run: Run) -> None:
    dispatched = run.results["dispatch"]
    assert dispatched["job_ids"], dispatched  # the tick saw the backlog and submitted
    assert run.results["detection_exit"] == 0  # drained the indexing queue, idle exit
    assert run.results["grouping_exit"] == 0
    assert run.results["missing_crop_cover"] is None  # NoSuchKey, tolerated (not AccessDenied)
    assert run.results["covers"], "grouping wrote no cover"
    operations = {(c.service, c.operation) for c in run.recorder.calls if ":" not in c.principal}
    for wanted in [
        ("sqs", "ReceiveMessage"),
        ("sqs", "DeleteMessageBatch"),
        ("sqs", "SendMessage"),
        ("sqs", "GetQueueAttributes"),
        ("s3", "GetObject"),
        ("s3", "PutObject"),
        ("s3", "CopyObject"),
        ("s3", "DeleteObject"),
        ("s3", "ListObjectsV2"),
        ("batch", "SubmitJob"),
        ("ssm", "PutParameter"),
        ("dynamodb", "PutItem"),
        ("cloudwatch", "PutMetricData"),
    ]:
        assert wanted in operations, f"the run never made {wanted}"


DENIED_CODES = {"AccessDenied", "AccessDeniedException", "403"}  # S3 / JSON / moto's SQS


def test_calls_outside_the_policy_are_denied_by_moto(run: Run) -> None:
    assert set(run.denied) == {
        "dispatch receives from the indexing queue",
        "detection deletes a gallery photo",
        "grouping sends to the indexing queue",
        "grouping deletes a gallery photo",
    }
    assert set(run.denied.values()) <= DENIED_CODES, run.denied


@pytest.mark.parametrize("who", sorted(ROLES))
def test_the_evaluator_allows_every_recorded_call(run: Run, who: str) -> None:
    calls = run.recorder.of(who)
    assert calls
    assert list(denied_requests(run.policies[who], calls, ACCOUNT)) == []


@pytest.mark.parametrize("who", sorted(ROLES))
def test_the_evaluator_agrees_with_moto_on_the_calls_outside(run: Run, who: str) -> None:
    outside = run.recorder.of(f"{who}:outside")
    assert outside
    denied = list(denied_requests(run.policies[who], outside, ACCOUNT))
    assert len({id(call) for call, _ in denied}) == len(outside)


def _to_production(call: Call, moto_urls: dict[str, str]) -> Call:
    """The same call as the production stack makes it: existing queues' URLs, its region."""
    params = json.loads(json.dumps(call.params))
    for production_url, moto_url in moto_urls.items():
        if params.get("QueueUrl") == moto_url:
            params["QueueUrl"] = production_url
    for key in ("jobQueue", "jobDefinition"):
        if key in params and params[key].startswith("arn:"):
            params[key] = params[key].replace(
                f":{REGION}:{ACCOUNT}:", f":ap-south-1:{PRODUCTION_ACCOUNT}:"
            )
    return replace(call, params=params, region="ap-south-1")


@pytest.mark.parametrize("who", sorted(ROLES))
def test_production_policies_allow_the_same_calls_on_the_existing_queues(
    run: Run, who: str
) -> None:
    batch_arn = f"arn:aws:batch:ap-south-1:{PRODUCTION_ACCOUNT}"
    context = Context(
        "ap-south-1",
        PRODUCTION_ACCOUNT,
        refs={
            "PrimaryJobQueue": f"{batch_arn}:job-queue/{NAMES.primary_queue.name}",
            "SecondaryJobQueue": f"{batch_arn}:job-queue/{NAMES.secondary_queue.name}",
            "LogGroup": NAMES.log_group,
            "ModelBucket": PRODUCTION.model_bucket_name,
        },
        attributes={
            "DispatchLeaseTable.Arn": (
                f"arn:aws:dynamodb:ap-south-1:{PRODUCTION_ACCOUNT}:"
                f"table/{NAMES.dispatch_lease_table}"
            )
        },
    )
    policy = role_policy(run.production, ROLES[who], context)
    calls = [_to_production(c, run.moto_queue_urls) for c in run.recorder.of(who)]
    queue_arns = {r for stmt in policy["Statement"] for r in stmt["Resource"] if ":sqs:" in r}
    assert queue_arns <= {
        "arn:aws:sqs:ap-south-1:992382426603:ve-inhouse-indexing",
        "arn:aws:sqs:ap-south-1:566073089169:GroupFace",
    }
    assert list(denied_requests(policy, calls, PRODUCTION_ACCOUNT)) == []


def test_reads_of_maybe_missing_keys_come_with_list_bucket(run: Run) -> None:
    """AWS answers a missing key with 403 (not NoSuchKey) unless the caller may s3:ListBucket:
    every role that reads a key that may be missing must hold ListBucket on its bucket."""
    from tests.contract.iam_support import Request, allowed, requests_for

    for who in ROLES:
        for call in run.recorder.of(who):
            for request in requests_for(call, ACCOUNT):
                if request.action != "s3:GetObject":
                    continue
                bucket = request.resource.split(":::", 1)[1].split("/", 1)[0]
                assert allowed(
                    run.policies[who], Request("s3:ListBucket", f"arn:aws:s3:::{bucket}")
                ), f"{who} reads {bucket} without s3:ListBucket"


def test_the_execution_role_reads_exactly_the_injected_secrets() -> None:
    rendered = template.render(PRODUCTION, lambda_package.build())
    context = Context(
        "ap-south-1",
        PRODUCTION_ACCOUNT,
        refs={
            template.GALLERY_SECRET: "arn:aws:secretsmanager:ap-south-1:111122223333:secret:g-1",
            template.HUEMN_SECRET: "arn:aws:secretsmanager:ap-south-1:111122223333:secret:h-1",
            "LogGroup": NAMES.log_group,
        },
    )
    from tests.contract.iam_support import Request, allowed

    execution = role_policy(rendered, template.EXECUTION_ROLE, context)
    for logical_id in ("DetectionJobDefinition", "GroupingJobDefinition"):
        container = rendered["Resources"][logical_id]["Properties"]["ContainerProperties"]
        for secret in resolve(container["Secrets"], context):
            assert allowed(execution, Request("secretsmanager:GetSecretValue", secret["ValueFrom"]))
    assert not allowed(
        execution,
        Request(
            "secretsmanager:GetSecretValue",
            "arn:aws:secretsmanager:ap-south-1:111122223333:secret:other-1",
        ),
    )
