"""The production rehearsal: docs/infra.md's first-deploy runbook run as code, each step as an
operator would, in an account that already runs the ECS service, every actor under its own role.

The account before FaceFleet (`tests.contract.existing_account`): the existing indexing queue
with producers writing to it, the existing GroupFace queue, the existing ECS service (cluster,
service, a task definition with every field set, its own task role, step-scaling alarms on its
queue) and a stand-in of that service's consumer, which reads whatever QUEUE_URL the service's
current task definition names, with the service's task role.

Then, in order (the runbook's commands, `facefleet ...` run through the CLI's `main`):
doctor, plan, apply; move-ecs-queue (which enables the router's event source); flows deploy;
dispatch ticks (the dispatch flow and the fallback Lambda); cutover 10/25/50/75/100 %; a breach
and the rollback; resume; an update that changes the launch template and the secondary
instance types; destroy; and the move reversed.

Actors and their credentials (`tests.contract.rehearsal_account`: SQS and S3 judged by moto's
enforcement under the role's own STS session, everything else recorded and judged by
`iam_support.allowed` against the deployed policy): the dispatch, cutover, rollback, resume and
savings flows (FlowsTaskRole), the router (RouterFunctionRole, polling as its event source
mapping does), the fallback dispatcher (DispatchFunctionRole), the detection and grouping jobs
(their job roles), the jobs' execution role (the injected secrets), the ECS service's task
(its own role). The Prefect worker's role is checked on the calls the prefect-aws ECS worker
makes to start a flow run (register the task definition, run the task, pass the two roles).

Throughout: every photo uploaded is processed exactly once, by the side its user is on, and no
message waits longer than the oldest-message gate allows.
Stage soak times are set to 0 (the cutover's gates parameter); the gates' evidence (finished and
failed jobs) is put in CloudWatch as EventBridge and the dispatch flow would.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from facefleet.common.aws import AwsTarget
from facefleet.common.config import Settings
from facefleet.common.messages import DetectionRequest, parse_indexing_message
from facefleet.common.names import NAMES
from facefleet.control.cutover import ecs_move
from facefleet.control.cutover import machine as cut
from facefleet.control.router import BATCH, ECS, users_by_side
from facefleet.embedded import servers as local
from facefleet.infra import template
from facefleet.tools.cli import main
from facefleet.tools.demo.gallery import Photo, lfw_bulk
from tests.conftest import FACES_DIR, MODELS_DIR
from tests.contract import existing_account
from tests.contract.iam_support import denied_any, requests_for_any
from tests.contract.rehearsal_account import Account, enforceable

REGION = "us-east-1"
ACCOUNT_ID = "123456789012"  # moto's
MODEL_PACK = "facefleet-dev"
USERS = [f"reh{n:02d}" for n in range(8)]
GATES = {"soak_s": {str(w): 0 for w in cut.STAGES}}
# The stack's roles, by actor.
ROLES = {
    "flows": "FlowsTaskRole",
    "router": "RouterFunctionRole",
    "fallback-dispatcher": template.DISPATCH_ROLE,
    "detection": template.DETECTION_JOB_ROLE,
    "grouping": template.GROUPING_JOB_ROLE,
    "execution": template.EXECUTION_ROLE,
    "prefect-worker": "PrefectWorkerRole",
}


@dataclass
class Rehearsal:
    account: Account
    existing: existing_account.ExistingAccount
    flags: list[str]
    outputs: dict[str, str] = field(default_factory=dict)
    uploaded: dict[tuple[str, str], float] = field(default_factory=dict)  # photo -> sent at
    processed: dict[tuple[str, str], list[str]] = field(default_factory=dict)  # photo -> sides
    waited: dict[tuple[str, str], float] = field(default_factory=dict)
    log: list[str] = field(default_factory=list)  # the runbook's steps, as run


def _physical_role(account: Account, logical_id: str) -> str:
    cloudformation = account.setup_client_as_admin("cloudformation")
    resources = cloudformation.describe_stack_resources(StackName=NAMES.stack_name)
    for resource in resources["StackResources"]:
        if resource["LogicalResourceId"] == logical_id:
            return str(resource["PhysicalResourceId"]).rsplit("/", 1)[-1]
    raise LookupError(f"no {logical_id} in the stack")


@pytest.fixture(scope="module")
def account(
    tmp_path_factory: pytest.TempPathFactory, local_servers: local.StackState
) -> Iterator[Account]:
    state = tmp_path_factory.mktemp("rehearsal")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("INITIAL_NO_AUTH_ACTION_COUNT", "inf")
        server = local.start_service("moto", state)
    try:
        yield Account(f"http://{local.LOOPBACK}:{server.port}", REGION)
    finally:
        local.stop_service(server)


class UpdatedNames(type(NAMES)):  # type: ignore[misc]
    """The update step's names: other secondary instance types (no CLI flag carries them)."""

    @property
    def secondary_environment(self) -> Any:
        from dataclasses import replace

        spec = super().secondary_environment
        return replace(spec, instance_types=(*spec.instance_types[:-1], "g6.2xlarge"))


@dataclass
class Sides:
    """Who processed what: the ECS stand-in and the Batch detection jobs, with the wait."""

    sent_at: dict[tuple[str, str], float] = field(default_factory=dict)
    by: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    waited: dict[tuple[str, str], float] = field(default_factory=dict)

    def processed(self, body: str, side: str) -> None:
        requests = parse_indexing_message(body)
        if not requests:  # S3's test event, sent when deploy configures the notification
            return
        (request,) = requests
        pair = (request.user_id, request.image_id)
        self.by.setdefault(pair, []).append(side)
        self.waited[pair] = time.time() - self.sent_at[pair]


class Runbook:
    """The operator's commands and the actors' work, on one account."""

    def __init__(self, account: Account, tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.account, self.tmp, self.mp = account, tmp, monkeypatch
        self.aws = AwsTarget(REGION, account.endpoint)
        self.sides = Sides()
        self.photos = iter(lfw_bulk(FACES_DIR, 200, "pool"))
        self.steps: list[str] = []
        self.outputs: dict[str, str] = {}
        self.flags: list[str] = []
        self.existing: existing_account.ExistingAccount | None = None
        self.mongo_base = ""
        self.detection: Any = None
        self.results: dict[str, Any] = {}

    # -- the operator --------------------------------------------------------------------

    def cli(self, *argv: str) -> int:
        self.steps.append("facefleet " + " ".join(argv[:2]))
        with self.account.as_actor("operator"):
            return main(list(argv))

    # -- producers and the ECS service ---------------------------------------------------

    def upload_round(self) -> list[Photo]:
        """Each user uploads one photo: S3, then the producers' message on the ingress queue."""
        assert self.existing is not None
        photos = []
        with self.account.as_actor("operator"):
            s3, sqs = self.aws.client("s3"), self.aws.client("sqs")
            for user in USERS:
                source = next(self.photos)
                photo = Photo(user, source.image_id, source.path, source.identity)
                s3.put_object(Bucket="gallery-images", Key=photo.key, Body=photo.path.read_bytes())
                body = DetectionRequest(user, photo.image_id, "gallery-images", photo.key)
                sqs.send_message(QueueUrl=self.existing.indexing_url, MessageBody=body.to_body())
                self.sides.sent_at[(user, photo.image_id)] = time.time()
                photos.append(photo)
        return photos

    def ecs_pump(self) -> int:
        """The ECS service's task (stand-in): consume the queue its task definition names,
        with the service's task role."""
        with self.account.as_actor("operator"):
            url = ecs_move.ecs_queue_url(
                existing_account.CLUSTER, existing_account.SERVICE, self.aws
            )
        assert url
        done = 0
        with self.account.as_actor("ecs-task"):
            sqs = self.aws.client("sqs")
            while True:
                got = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages", [])
                if not got:
                    return done
                for message in got:
                    self.sides.processed(message["Body"], ECS)
                    sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
                    done += 1

    # -- the router, as its event source mapping polls for it ------------------------------

    def mapping_enabled(self) -> bool:
        with self.account.as_actor("operator"):
            _, enabled = ecs_move._mapping(NAMES, self.aws)
        return bool(enabled)

    def router_pump(self) -> int:
        """What Lambda's SQS poller does for the router: receive under the function's role,
        invoke the handler with the function's environment, delete all but the failures."""
        if not self.mapping_enabled():
            return 0
        from facefleet.control import lambda_router

        with self.account.as_actor("operator"):
            function = self.aws.client("lambda").get_function_configuration(
                FunctionName=self.outputs["RouterFunctionName"]
            )
        environment = function["Environment"]["Variables"]
        forwarded = 0
        with self.account.as_actor("router"), pytest.MonkeyPatch.context() as mp:
            for name, value in {**environment, "WEIGHT_CACHE_S": "0"}.items():
                mp.setenv(name, value)
            lambda_router._router = None  # a fresh execution environment
            sqs = self.aws.client("sqs")
            ingress = self.outputs["IngressQueueUrl"]
            while True:
                got = sqs.receive_message(
                    QueueUrl=ingress, MaxNumberOfMessages=10, AttributeNames=["All"]
                ).get("Messages", [])
                if not got:
                    return forwarded
                records = [
                    {"messageId": m["MessageId"], "body": m["Body"], "messageAttributes": {}}
                    for m in got
                ]
                failed = {
                    f["itemIdentifier"]
                    for f in lambda_router.handler({"Records": records}, None)["batchItemFailures"]
                }
                assert not failed, failed
                for message in got:
                    sqs.delete_message(QueueUrl=ingress, ReceiptHandle=message["ReceiptHandle"])
                    forwarded += 1

    # -- the flows, the fallback Lambda and the jobs --------------------------------------

    def flow_env(self) -> dict[str, str]:
        """What a production flow run gets (`ProductionRuntime.job_variables`): no queue URLs."""
        return {"ALERTS_TOPIC_ARN": self.outputs["AlertsTopicArn"], "METRICS_TO_CLOUDWATCH": "true"}

    def as_flow(self, function: Any, **kwargs: Any) -> Any:
        with self.account.as_actor("flows"), pytest.MonkeyPatch.context() as mp:
            for name in ("QUEUE_URL", "GROUP_FACE_QUEUE_URL"):
                mp.delenv(name, raising=False)
            for name, value in self.flow_env().items():
                mp.setenv(name, value)
            return function(region=REGION, **kwargs)

    def dispatch_tick(self) -> dict[str, Any]:
        from facefleet.flows.dispatch import dispatch

        return dict(self.as_flow(dispatch, mode="aws", policy={"cooldown_s": 0}))

    def fallback_tick(self) -> dict[str, Any]:
        from facefleet.control import lambda_dispatch

        with self.account.as_actor("operator"):
            function = self.aws.client("lambda").get_function_configuration(
                FunctionName=self.outputs["DispatchFunctionName"]
            )
        with self.account.as_actor("fallback-dispatcher"), pytest.MonkeyPatch.context() as mp:
            for name, value in function["Environment"]["Variables"].items():
                mp.setenv(name, value)
            mp.setenv("POLICY_COOLDOWN_S", "0")
            return lambda_dispatch.handler({}, None)

    def job_settings(self, definition: str, **extra: str) -> Settings:
        """A job's settings as Batch gives them: the registered definition's environment (the
        MongoDB secrets resolved, as the execution role would)."""
        with self.account.as_actor("operator"):
            found = self.aws.client("batch").describe_job_definitions(
                jobDefinitionName=definition, status="ACTIVE"
            )["jobDefinitions"]
        latest = max(found, key=lambda d: d["revision"])
        environment = {e["name"]: e["value"] for e in latest["containerProperties"]["environment"]}
        environment.update(
            {
                "AWS_DEFAULT_REGION": REGION,
                "AWS_ENDPOINT_URL": self.account.endpoint,
                "GALLERY_IMAGES_MONGO_URI": self.mongo("gallery"),
                "HUEMN_MONGO_URI": self.mongo("huemn"),
                "POLL_WAIT_SECONDS": "0",
                "IDLE_EXIT_SECONDS": "1",
                "SPOT_NOTICE_POLL_SECONDS": "0",
                **extra,
            }
        )
        return Settings.from_env(environment)

    def mongo(self, which: str) -> str:
        return f"{self.mongo_base}/reh_{which}"

    def run_jobs(self, tick: dict[str, Any]) -> None:
        """Batch runs the submitted jobs: each a consumer with its job role."""
        from facefleet.worker.detection.service import DetectionService
        from facefleet.worker.grouping.service import build_service
        from facefleet.worker.runtime.consumer import Consumer, ConsumerConfig
        from facefleet.worker.runtime.outcome import Outcome

        kinds = {s["kind"] for s in tick["submissions"]}
        if "detection" in kinds:
            with self.account.as_actor("detection"):
                settings = self.job_settings(
                    self.outputs["DetectionJobDefinitionName"],
                    MODEL_PACK=MODEL_PACK,
                    MODEL_DIR=str(self.tmp / "models" / MODEL_PACK),
                )
                # One model load for the rehearsal (each Batch job loads its own: seconds).
                if self.detection is None:
                    self.detection = DetectionService.from_settings(settings)
                service = self.detection

                def handle(batch: list[Any]) -> dict[str, Any]:
                    outcomes = service.handle(batch)
                    for message in batch:
                        if outcomes.get(message.message_id) == Outcome.DONE:
                            self.sides.processed(message.body, BATCH)
                    return outcomes

                config = ConsumerConfig.from_settings(settings, settings.queue_url)
                assert Consumer(config, handle).run() == 0
        if "grouping" in kinds:
            with self.account.as_actor("grouping"):
                settings = self.job_settings(self.outputs["GroupingJobDefinitionName"])
                grouping = build_service(settings)
                config = ConsumerConfig.from_settings(settings, settings.group_face_queue_url)
                assert Consumer(config, grouping.handle).run() == 0

    def process(self) -> None:
        """Route, consume on the ECS side, dispatch and run the Batch side until all is quiet."""
        self.router_pump()
        self.ecs_pump()
        for _ in range(4):
            tick = self.dispatch_tick()
            if not tick["submissions"]:
                break
            self.run_jobs(tick)

    def evidence(self, finished: float, failed: float = 0.0) -> None:
        """The gates' evidence as EventBridge and the dispatch flow publish it."""
        with self.account.as_actor("operator"):
            cloudwatch = self.aws.client("cloudwatch")
            cloudwatch.put_metric_data(
                Namespace=NAMES.metrics_namespace,
                MetricData=[
                    {
                        "MetricName": "JobsSubmitted",
                        "Dimensions": [{"Name": "Service", "Value": "dispatch"}],
                        "Value": finished,
                    }
                ],
            )
            if failed:
                cloudwatch.put_metric_data(
                    Namespace="AWS/Events",
                    MetricData=[
                        {
                            "MetricName": "TriggeredRules",
                            "Dimensions": [{"Name": "RuleName", "Value": NAMES.job_failed_rule}],
                            "Value": failed,
                        }
                    ],
                )

    def step(self) -> dict[str, Any]:
        from facefleet.flows import cutover as cutover_flows

        return dict(
            self.as_flow(
                cutover_flows.cutover,
                gates=GATES,
                ecs_cluster=existing_account.CLUSTER,
                ecs_service=existing_account.SERVICE,
            )
        )

    def check_sides(self, photos: list[Photo], weight: int) -> None:
        expected = users_by_side(USERS, weight)
        for photo in photos:
            side = BATCH if photo.user_id in expected[BATCH] else ECS
            assert self.sides.by.get((photo.user_id, photo.image_id)) == [side], (weight, photo)


def _roles(runbook: Runbook) -> dict[str, str]:
    with runbook.account.as_actor("operator"):
        resources = runbook.aws.client("cloudformation").list_stack_resources(
            StackName=NAMES.stack_name
        )["StackResourceSummaries"]
    return {
        r["LogicalResourceId"]: str(r["PhysicalResourceId"]).rsplit("/", 1)[-1]
        for r in resources
        if r["ResourceType"] == "AWS::IAM::Role"
    }


def _flags(runbook: Runbook, existing: existing_account.ExistingAccount) -> list[str]:
    with runbook.account.as_actor("operator"):
        ec2 = runbook.aws.client("ec2")
        vpc = ec2.describe_vpcs()["Vpcs"][0]["VpcId"]
        subnets = [s["SubnetId"] for s in ec2.describe_subnets()["Subnets"]][:2]
    service_arn = f"arn:aws:ecs:{REGION}:{ACCOUNT_ID}:service/{existing_account.CLUSTER}/"
    return [
        "--vpc-id", vpc,
        "--subnet-ids", ",".join(subnets),
        "--ingress-queue", existing.indexing_url,
        "--group-face-queue", existing.group_face_url,
        "--model-bucket", "rehearsal-face-recognition-models",
        "--prefect-api-url", "https://prefect.example/api",
        "--ecs-service-arn", service_arn + existing_account.SERVICE,
        "--fallback-dispatcher",
        "--alert-email", "ops@example.com",
    ]  # fmt: skip


@pytest.fixture(scope="module")
def rehearsal(
    account: Account,
    local_servers: local.StackState,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Runbook]:
    from tests.flows_support import prefect_harness

    prefect_harness()
    tmp = tmp_path_factory.mktemp("runbook")
    with pytest.MonkeyPatch.context() as mp:
        for name, value in local.LOCAL_AWS_ENV.items():
            mp.setenv(name, value)
        mp.delenv("AWS_SESSION_TOKEN", raising=False)
        mp.setenv("AWS_ENDPOINT_URL", account.endpoint)  # the operator's shell: the account
        runbook = Runbook(account, tmp, mp)
        runbook.mongo_base = local_servers.mongo_uri
        mp.setenv("GALLERY_IMAGES_MONGO_URI", runbook.mongo("gallery"))
        mp.setenv("HUEMN_MONGO_URI", runbook.mongo("huemn"))
        for name in ("QUEUE_URL", "GROUP_FACE_QUEUE_URL", "FACEFLEET_PREFIX"):
            mp.delenv(name, raising=False)
        _before_facefleet(runbook)
        account.enforce()
        account.install(mp)
        try:
            _run(runbook)
            yield runbook
        finally:
            if runbook.detection is not None:
                runbook.detection.close()


def _before_facefleet(runbook: Runbook) -> None:
    """The account as it is today (set-up calls, before authorization is on)."""
    aws = runbook.aws
    runbook.existing = existing_account.create(aws)
    s3 = runbook.account.setup_client("s3")
    for bucket in ("gallery-images", "face-group-images"):
        s3.create_bucket(Bucket=bucket)


def _run(runbook: Runbook) -> None:
    account, existing = runbook.account, runbook.existing
    assert existing is not None
    results = runbook.results
    runbook.flags = flags = _flags(runbook, existing)
    outputs_file = runbook.tmp / "outputs.json"

    # Before: producers write to the existing queue, the ECS service reads it.
    account.assume("ecs-task", existing_account.TASK_ROLE)
    before = runbook.upload_round()
    assert runbook.ecs_pump() == len(before)

    # 1-7: doctor (read-only; on moto the network and quota lines stay "todo"), plan, apply.
    results["doctor"] = runbook.cli("infra", "doctor", *flags)
    assert runbook.cli("infra", "plan", *flags) == 0
    assert runbook.cli("infra", "apply", *flags, "--out", str(outputs_file)) == 0
    runbook.outputs = json.loads(outputs_file.read_text())["outputs"]
    assert not runbook.mapping_enabled(), "the router must not run before the ECS queue move"
    # 8: models (the runbook's `aws s3 sync`, as the operator).
    with account.as_actor("operator"):
        s3 = runbook.aws.client("s3")
        for path in MODELS_DIR.glob("*.onnx"):
            s3.put_object(
                Bucket=runbook.outputs["ModelBucketName"],
                Key=f"{MODEL_PACK}/{path.name}",
                Body=path.read_bytes(),
            )
    roles = _roles(runbook)
    for actor, logical_id in ROLES.items():
        account.assume(actor, roles[logical_id])

    # Producers keep writing during the deploy: the router is off, the ECS service reads on.
    during = runbook.upload_round()
    assert runbook.router_pump() == 0
    assert runbook.ecs_pump() == len(during)

    # Cutover 1-2: move the ECS service (enables the router), check it.
    ecs = ["--ecs-cluster", existing_account.CLUSTER, "--ecs-service", existing_account.SERVICE]
    assert runbook.cli("cutover", "move-ecs-queue", *ecs) == 0
    assert runbook.mapping_enabled()
    assert runbook.cli("cutover", "status", *ecs) == 0
    moved = runbook.upload_round()
    runbook.process()
    runbook.check_sides(moved, 0)

    # Cutover 4: the production deployments on the local Prefect server.
    assert (
        runbook.cli(
            "flows",
            "deploy",
            "--production",
            "--outputs",
            str(outputs_file),
            "--subnet-ids",
            flags[flags.index("--subnet-ids") + 1],
        )
        == 0
    )
    # Dispatch ticks: the flow and the fallback Lambda share the lease and the state.
    results["fallback"] = runbook.fallback_tick()
    results["dispatch"] = runbook.dispatch_tick()

    # Cutover 5: 10, 25, 50, 75, 100 %.
    started = runbook.step()
    assert (started["action"], started["weight"]) == ("start", 10), started
    weights = []
    for weight in cut.STAGES[1:]:
        if weight != 10:
            runbook.evidence(10)
            promoted = runbook.step()
            assert (promoted["action"], promoted["weight"]) == ("promote", weight), promoted
        photos = runbook.upload_round()
        runbook.process()
        runbook.check_sides(photos, weight)
        weights.append(weight)
    results["weights"] = weights

    # A breach at 100 %: uploads wait on the Batch queue, failed jobs, the rollback.
    waiting = runbook.upload_round()
    runbook.router_pump()
    runbook.evidence(20, failed=10)
    rolled = runbook.step()
    assert (rolled["action"], rolled["weight"]) == ("rollback", 0), rolled
    assert rolled["returned_to_ecs"] == len(waiting)
    runbook.ecs_pump()
    runbook.check_sides(waiting, 0)
    from facefleet.flows import cutover as cutover_flows

    manual = runbook.as_flow(cutover_flows.rollback_flow, reason="rehearsal: manual rollback")
    assert manual["weight"] == 0

    # Resume: starts again at 10 %.
    runbook.as_flow(cutover_flows.resume_flow)
    restarted = runbook.step()
    assert (restarted["action"], restarted["weight"]) == ("start", 10), restarted
    photos = runbook.upload_round()
    runbook.process()
    runbook.check_sides(photos, 10)

    # The hourly savings flow.
    from facefleet.flows.savings import spot_savings

    results["savings"] = runbook.as_flow(spot_savings)

    # An update: the launch template (root volume) and the secondary instance types.
    _update(runbook)
    results["after_update"] = runbook.dispatch_tick()

    # A role that loses a permission it uses fails its step (moto's enforcement).
    results["denied"] = _without_a_permission(runbook)

    # The move reversed: the router off first, the service back on the ingress queue.
    assert runbook.cli("cutover", "move-ecs-queue", *ecs, "--back") == 0
    assert not runbook.mapping_enabled()
    back = runbook.upload_round()
    assert runbook.router_pump() == 0
    assert runbook.ecs_pump() == len(back)

    # Destroy: the stack goes, the existing service and queues stay.
    assert runbook.cli("infra", "destroy") == 0
    with account.as_actor("operator"):
        queues = runbook.aws.client("sqs").list_queues().get("QueueUrls", [])
    results["queues_after_destroy"] = queues


def _update(runbook: Runbook) -> None:
    from dataclasses import replace

    from facefleet.infra import deploy
    from facefleet.tools import infra_cli

    parser_args = ["infra", "apply", *runbook.flags]
    import argparse

    from facefleet.tools.cli import build_parser

    args: argparse.Namespace = build_parser().parse_args(parser_args)
    with runbook.account.as_actor("operator"):
        config = infra_cli.build_config(args)
        updated = replace(config, names=UpdatedNames(), root_volume_gib=config.root_volume_gib + 20)
        plan = deploy.plan(updated, runbook.aws)
        runbook.results["update_plan"] = {
            (c.logical_id, c.action, c.replacement) for c in plan.changes
        }
        deploy.apply(updated, runbook.aws, plan=plan)
    runbook.steps.append("facefleet infra apply (launch template, secondary instance types)")


def _without_a_permission(runbook: Runbook) -> str:
    """The router loses sqs:ReceiveMessage on the ingress queue: its poll is refused."""
    account = runbook.account
    role = account.roles["router"]
    iam = account.setup_client_as_admin("iam")
    policy = json.loads(json.dumps(account.policies["router"]))
    for statement in policy["Statement"]:
        actions = (
            statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        )
        statement["Action"] = [a for a in actions if a != "sqs:ReceiveMessage"] or [
            "sqs:GetQueueUrl"
        ]
    iam.put_role_policy(
        RoleName=role, PolicyName="deployed", PolicyDocument=json.dumps(enforceable(policy))
    )
    runbook.upload_round()
    try:
        runbook.router_pump()
    except Exception as error:
        code = str(getattr(error, "response", {}).get("Error", {}).get("Code", error))
    else:
        code = "allowed"
    finally:
        iam.put_role_policy(
            RoleName=role,
            PolicyName="deployed",
            PolicyDocument=json.dumps(enforceable(account.policies["router"])),
        )
    runbook.process()  # restored: the waiting uploads go through, to either side
    return code


# -- the assertions ---------------------------------------------------------------------------


def test_every_step_of_the_runbook_ran(rehearsal: Runbook) -> None:
    assert rehearsal.results["weights"] == [10, 25, 50, 75, 100]
    assert rehearsal.results["doctor"] in (0, 1)
    for tick in ("dispatch", "fallback", "after_update"):
        assert "inputs" in rehearsal.results[tick], rehearsal.results[tick]  # ran, not skipped
    figures = {
        "steps": rehearsal.steps,
        "tick_s": {t: rehearsal.results[t]["duration_s"] for t in ("dispatch", "fallback")},
        "photos": len(rehearsal.sides.sent_at),
        "max_wait_s": round(max(rehearsal.sides.waited.values()), 1),
    }
    print("FIGURES " + json.dumps(figures))
    assert rehearsal.results["savings"]["savings_usd"] >= 0


def test_nothing_lost_nothing_twice_no_message_waits_past_its_gate(rehearsal: Runbook) -> None:
    sides = rehearsal.sides
    assert set(sides.by) == set(sides.sent_at), "a photo was never processed"
    twice = {pair: who for pair, who in sides.by.items() if len(who) != 1}
    assert not twice, f"processed more than once: {twice}"
    assert {who[0] for who in sides.by.values()} == {BATCH, ECS}
    hold_above = cut.Gates().oldest_age_s[0]
    assert max(sides.waited.values()) <= hold_above


@pytest.mark.parametrize("actor", sorted(set(ROLES) - {"execution", "prefect-worker"}))
def test_every_actor_made_only_calls_its_role_allows(rehearsal: Runbook, actor: str) -> None:
    """moto judged the SQS and S3 calls as they ran (a refusal would have failed the step);
    here the evaluator judges every call, those included, against the deployed policy."""
    account = rehearsal.account
    calls = account.of(actor)
    assert calls, f"{actor} made no call"
    denied = [
        (c.operation, r.action, r.resource)
        for c, r in denied_any(account.policies[actor], calls, ACCOUNT_ID)
    ]
    assert denied == []


def test_a_role_without_a_permission_it_uses_fails_its_step(rehearsal: Runbook) -> None:
    assert rehearsal.results["denied"] in ("AccessDenied", "AccessDeniedException", "403")
    # The evaluator too: each action the flows role used, taken away, denies its calls.
    account = rehearsal.account
    calls = [c for c in account.of("flows") if c.service not in ("sqs", "s3")]
    used = {r.action for c in calls for r in requests_for_any(c, ACCOUNT_ID)}
    assert {"dynamodb:PutItem", "cloudformation:DescribeStacks", "batch:SubmitJob"} <= used
    for action in sorted(used):
        policy = json.loads(json.dumps(account.policies["flows"]))
        for statement in policy["Statement"]:
            actions = (
                statement["Action"]
                if isinstance(statement["Action"], list)
                else [statement["Action"]]
            )
            statement["Action"] = [a for a in actions if a != action] or ["none:None"]
        assert list(denied_any(policy, calls, ACCOUNT_ID)), action


def test_the_update_changes_in_place_and_destroy_keeps_the_existing_service(
    rehearsal: Runbook,
) -> None:
    plan = rehearsal.results["update_plan"]
    changed = {logical_id for logical_id, action, _ in plan if action == "Modify"}
    assert {"WorkerLaunchTemplate", "SecondaryComputeEnvironment"} <= changed, plan
    existing = rehearsal.existing
    assert existing is not None
    queues = rehearsal.results["queues_after_destroy"]
    assert existing.indexing_url in queues and existing.group_face_url in queues
    assert not any(NAMES.ecs_indexing_queue in q for q in queues)
