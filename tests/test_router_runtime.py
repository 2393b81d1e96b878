"""The router and the flows runtime as deployed components: the router is a resource of the
rendered template (Lambda, SQS event source with partial-batch failures, least-privilege role,
alarms) and a process of the local stack; the flows runtime's task role has no
cloudformation:*; the production deployments register on an ECS pool of the local Prefect
server with the flows image and the stack's task role; the cutover status reads as text."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from facefleet.common.messages import DetectionRequest
from facefleet.common.s3keys import image_key
from facefleet.control.cutover import ecs_move, ecs_task_role
from facefleet.control.cutover import machine as cut
from facefleet.control.cutover import status as cutover_status
from facefleet.control.router import users_by_side, write_weight
from facefleet.embedded import servers as local
from facefleet.infra import lambda_package, template
from facefleet.infra.stack_config import StackConfig
from tests.e2e_support import provision_stack, queue_counts, wait_until
from tests.flows_support import prefect_harness

BASE = StackConfig(vpc_id="vpc-1", subnet_ids=("subnet-1",))
LEGACY = "https://sqs.us-east-1.amazonaws.com/123456789012/legacy-indexing"


def _grants(rendered: dict[str, Any], role: str) -> dict[str, list[str]]:
    grants: dict[str, list[str]] = {}
    policies = rendered["Resources"][role]["Properties"]["Policies"]
    for policy in policies:
        for stmt in policy["PolicyDocument"]["Statement"]:
            actions = stmt["Action"] if isinstance(stmt["Action"], list) else [stmt["Action"]]
            for action in actions:
                grants.setdefault(action, []).extend(
                    json.dumps(r, sort_keys=True) for r in stmt["Resource"]
                )
    return grants


def test_router_is_a_resource_of_the_template() -> None:
    config = StackConfig(vpc_id="vpc-1", subnet_ids=("subnet-1",), ingress_queue=LEGACY)
    rendered = template.render(config)
    resources = rendered["Resources"]
    function = resources["RouterFunction"]["Properties"]
    assert function["Handler"] == lambda_package.ROUTER_HANDLER
    assert function["Code"]["S3Key"] == lambda_package.build_router().key
    mapping = resources["RouterEventSource"]["Properties"]
    assert mapping["EventSourceArn"] == "arn:aws:sqs:us-east-1:123456789012:legacy-indexing"
    assert mapping["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    # The existing queue is referenced, never created; the ECS queue is the stack's.
    assert "IngressQueue" not in resources and "EcsIndexingQueue" in resources
    env = function["Environment"]["Variables"]
    assert env["ECS_QUEUE_URL"] == {"Ref": "EcsIndexingQueue"}
    assert env["BATCH_QUEUE_URL"] == {"Ref": "IndexingQueue"}
    assert float(env["WEIGHT_CACHE_S"]) <= 60
    grants = _grants(rendered, "RouterFunctionRole")
    ingress = json.dumps("arn:aws:sqs:us-east-1:123456789012:legacy-indexing")
    assert grants == {
        "sqs:ReceiveMessage": [ingress],
        "sqs:DeleteMessage": [ingress],
        "sqs:GetQueueAttributes": [ingress],
        "sqs:SendMessage": [
            json.dumps({"Fn::GetAtt": ["EcsIndexingQueue", "Arn"]}),
            json.dumps({"Fn::GetAtt": ["IndexingQueue", "Arn"]}),
        ],
        "ssm:GetParameter": [
            json.dumps(
                {
                    "Fn::Sub": "arn:${AWS::Partition}:ssm:${AWS::Region}:${AWS::AccountId}:"
                    "parameter/facefleet/face-recognition/cutover/weight"
                }
            )
        ],
        "logs:CreateLogStream": [grants["logs:PutLogEvents"][0]],
        "logs:PutLogEvents": [grants["logs:PutLogEvents"][0]],
    }
    alarms = {k: v["Properties"] for k, v in resources.items() if v["Type"].endswith("::Alarm")}
    assert alarms["RouterErrorsAlarm"]["MetricName"] == "Errors"
    assert alarms["IngressAgeAlarm"]["Dimensions"] == [
        {"Name": "QueueName", "Value": "legacy-indexing"}
    ]
    assert {"IngressQueueUrl", "EcsIndexingQueueUrl", "RouterFunctionName"} <= set(
        rendered["Outputs"]
    )


def test_router_package_is_control_and_common_only() -> None:
    package = lambda_package.build_router()
    assert all(m.startswith(("facefleet.common", "facefleet.control")) for m in package.modules)
    assert "facefleet.control.router" in package.modules
    assert package.key.startswith("lambda/facefleet-router-")


def test_local_stack_runs_the_router_as_a_process_instead() -> None:
    rendered = template.render(StackConfig(vpc_id="vpc-1", subnet_ids=("s",), router_lambda=False))
    assert "RouterFunction" not in rendered["Resources"]
    assert {"IngressQueue", "EcsIndexingQueue"} <= set(rendered["Resources"])


def test_flows_runtime_task_role_and_worker() -> None:
    config = StackConfig(
        vpc_id="vpc-1", subnet_ids=("subnet-1",), prefect_api_url="https://prefect.example/api"
    )
    rendered = template.render(config)
    grants = _grants(rendered, "FlowsTaskRole")
    # The savings flow reads the container instances its jobs ran on (their instance types).
    savings = {"ecs:DescribeContainerInstances"}
    assert not [a for a in grants if a.startswith(("iam:", "ecs:")) and a not in savings]
    (scope,) = grants["ecs:DescribeContainerInstances"]
    assert json.loads(scope)["Fn::Sub"].endswith(":container-instance/*")
    # Reading its own stack's outputs, nothing else of CloudFormation.
    assert [a for a in grants if a.startswith("cloudformation:")] == [
        "cloudformation:DescribeStacks"
    ]
    assert {"batch:SubmitJob", "ssm:PutParameter", "sns:Publish", "sqs:SendMessage"} <= set(grants)
    assert grants["sqs:SendMessage"] == [json.dumps({"Fn::GetAtt": ["EcsIndexingQueue", "Arn"]})]
    container = rendered["Resources"]["PrefectWorkerTaskDefinition"]["Properties"][
        "ContainerDefinitions"
    ][0]
    assert container["Command"][:3] == ["prefect", "worker", "start"]
    assert container["Command"][-2:] == ["--type", "ecs"]
    assert container["Image"] == {"Fn::Sub": "${FlowsImageRepository.RepositoryUri}:latest"}
    worker = _grants(rendered, "PrefectWorkerRole")
    assert sorted(worker["iam:PassRole"]) == sorted(
        json.dumps({"Fn::GetAtt": [r, "Arn"]}) for r in ("FlowsTaskRole", "FlowsExecutionRole")
    )
    # Without a Prefect API, only the image repository and the roles.
    assert "PrefectWorkerService" not in template.render(BASE)["Resources"]


def test_production_dispatch_is_served_by_a_service_with_the_flow_task_role() -> None:
    """The minutely dispatch runs inside a long-lived Fargate service (no task per tick): it
    runs the serving entry point, with the flow task role, which holds what the dispatch flow
    calls; no dispatch deployment goes on the ECS work pool."""
    from facefleet.flows.production import (
        ProductionRuntime,
        production_deployments,
        serve_production_command,
        served_production_deployments,
    )

    config = StackConfig(
        vpc_id="vpc-1", subnet_ids=("subnet-1",), prefect_api_url="https://prefect.example/api"
    )
    resources = template.render(config)["Resources"]
    task = resources["DispatchServiceTaskDefinition"]["Properties"]
    assert task["TaskRoleArn"] == {"Fn::GetAtt": ["FlowsTaskRole", "Arn"]}
    (container,) = task["ContainerDefinitions"]
    names = {"prefix": config.names.prefix, "grouping_prefix": config.names.grouping_prefix}
    assert container["Command"] == serve_production_command(names)
    assert container["Image"] == {"Fn::Sub": "${FlowsImageRepository.RepositoryUri}:latest"}
    environment = {e["Name"]: e["Value"] for e in container["Environment"]}
    assert environment["PREFECT_API_URL"] == config.prefect_api_url
    service = resources["DispatchService"]["Properties"]
    assert service["DesiredCount"] == 1 and service["LaunchType"] == "FARGATE"
    assert service["TaskDefinition"] == {"Ref": "DispatchServiceTaskDefinition"}
    assert service["DeploymentConfiguration"]["DeploymentCircuitBreaker"]["Enable"]
    grants = _grants(template.render(config), "FlowsTaskRole")
    used = (
        "dynamodb:PutItem",  # the lease
        "dynamodb:DeleteItem",
        "cloudformation:DescribeStacks",  # the queues from the outputs
        "sqs:GetQueueAttributes",
        "batch:SubmitJob",
        "batch:ListJobs",
        "ssm:GetParameter",  # the cool-down state
        "ssm:PutParameter",
    )
    assert set(used) <= set(grants), set(used) - set(grants)
    runtime = ProductionRuntime(image="flows:latest", task_role_arn="arn:aws:iam::1:role/flows")
    assert "dispatch" not in {d.flow_name for d in production_deployments(runtime, names)}
    (served,) = served_production_deployments(names)
    assert (served.flow_name, served.name, served.work_pool_name) == (
        "dispatch",
        "production",
        None,
    )
    assert served.parameters["mode"] == "aws" and served.parameters["names"] == names
    # Without a Prefect API there is no Prefect to serve to.
    assert "DispatchService" not in template.render(BASE)["Resources"]


def test_router_process_is_part_of_the_local_stack(tmp_path: Path, monkeypatch) -> None:
    prefix = "trouterproc"
    monkeypatch.setenv("FACEFLEET_PREFIX", prefix)
    for key, value in local.LOCAL_AWS_ENV.items():
        monkeypatch.setenv(key, value)
    state = local.up(tmp_path, ("moto", "router"))
    try:
        assert local.status(tmp_path) == {"moto": True, "router": True}
        from facefleet.common.aws import AwsTarget
        from facefleet.common.names import Names

        names, aws = Names.for_prefix(prefix), AwsTarget("us-east-1", state.moto_url)
        sqs = aws.client("sqs")
        urls = {
            q: sqs.create_queue(QueueName=q)["QueueUrl"]
            for q in (names.ingress_queue, names.ecs_indexing_queue, names.indexing_queue)
        }
        write_weight(names, 50, 3, aws)
        users = [f"user{n}" for n in range(10)]
        for user in users:
            body = DetectionRequest(user, "a", "b", image_key(user, "a")).to_body()
            sqs.send_message(QueueUrl=urls[names.ingress_queue], MessageBody=body)
        expected = users_by_side(users, 50)
        wait_until(
            lambda: (
                queue_counts(sqs, urls[names.indexing_queue])[0] == len(expected["batch"])
                and queue_counts(sqs, urls[names.ecs_indexing_queue])[0] == len(expected["ecs"])
            ),
            30,
            "the router process to forward",
        )
        assert queue_counts(sqs, urls[names.ingress_queue]) == (0, 0)
    finally:
        stopped = local.down(tmp_path)
    assert set(stopped) == {"moto", "router"}
    assert not local._alive(state.services["router"].pid)


def test_status_text_shows_stage_gates_and_sides() -> None:
    state = cut.CutoverState(weight=50, entered_at_s=1000.0, reason="promoted")
    health = cut.Health(finished_jobs=40, failed_jobs=1, dead_letters=0, oldest_age_s=12.0)
    users = [f"user{n}" for n in range(20)]
    status = cutover_status.describe(
        state,
        health,
        cut.Gates(),
        1000.0 + 3725,
        uploads=[(u, f"img{i}") for i, u in enumerate(users * 2)],
        routed={"batch": 22, "ecs": 18},
        ecs_move=ecs_move.MoveCheck("https://q/ecs", "https://q/ecs", True, (), True),
    )
    text = cutover_status.render(status)
    assert "stage 3/5  weight 50 % to Batch" in text
    assert "1h02m05s" in text
    for gate in ("job failure rate", "p95", "new dead letters", "oldest message age", "Spot"):
        assert gate in text
    assert "0.025" in text and "0.02" in text and "0.05" in text  # value and both thresholds
    sides = users_by_side(users, 50)
    assert status.users == {"batch": len(sides["batch"]), "ecs": len(sides["ecs"])}
    assert status.images == {"batch": 2 * len(sides["batch"]), "ecs": 2 * len(sides["ecs"])}
    assert "ECS service reads its own queue: yes" in text
    assert cutover_status.as_dict(status)["gates"][0]["verdict"] == "hold"


@pytest.fixture(scope="module")
def harness() -> None:
    prefect_harness()


def test_production_deployments_register_on_an_ecs_pool(env, harness, tmp_path: Path) -> None:
    from prefect.client.orchestration import get_client
    from prefect.flows import load_flow_from_entrypoint

    from facefleet.flows.production import (
        PRODUCTION_POOL_TYPE,
        ProductionRuntime,
        deploy_production,
    )

    stack = provision_stack(env, tmp_path / "batch")
    outputs = stack.outputs
    runtime = ProductionRuntime.from_outputs(outputs, subnets=("subnet-1",))
    pool = f"{env.names.prefix}-ecs"
    registered = deploy_production(
        runtime,
        {"prefix": env.names.prefix, "grouping_prefix": env.names.grouping_prefix},
        pool=pool,
    )
    # Dispatch is served by the stack's dispatch service, not a Fargate task per tick.
    assert set(registered) == {
        "cutover/production",
        "cutover-rollback/production",
        "cutover-pause/production",
        "cutover-resume/production",
        "spot-savings/production",
    }
    with get_client(sync_client=True) as client:
        assert client.read_work_pool(pool).type == PRODUCTION_POOL_TYPE == "ecs"
        for name, deployment_id in registered.items():
            deployment = client.read_deployment(deployment_id)
            assert deployment.work_pool_name == pool
            variables = deployment.job_variables
            assert variables["image"] == outputs["FlowsImageUri"]
            assert variables["task_role_arn"] == outputs["FlowsTaskRoleArn"]
            assert variables["network_configuration"]["subnets"] == ["subnet-1"]
            assert deployment.entrypoint.startswith("facefleet.flows.")
            assert load_flow_from_entrypoint(deployment.entrypoint).name == name.split("/")[0]
    stack.close()


def test_cli_moves_the_ecs_queue_whole_and_back_and_status_checks_it(env, capsys) -> None:
    """Every task definition field copied, the task role granted the new queue, the service's
    scaling alarms repointed (another team's alarm on the queue left alone); `--back` undoes
    each part. The router's mapping is the rehearsal's (no stack here: no router function)."""
    from facefleet.tools.cli import main
    from tests.contract import existing_account
    from tests.flows_support import create_queues

    names, aws = env.names, env.aws
    urls = create_queues(names, aws)
    prefix = f"{names.prefix}-"
    account = existing_account.create(aws, prefix)
    cluster, service = f"{prefix}prod", f"{prefix}indexer"
    target = ["--prefix", names.prefix, "--ecs-cluster", cluster, "--ecs-service", service]
    ecs_url = urls[names.ecs_indexing_queue]

    assert main(["cutover", "status", *target]) == 0
    assert "ECS service reads its own queue: NO" in capsys.readouterr().out
    assert main(["cutover", "move-ecs-queue", *target]) == 0
    assert "--back" in capsys.readouterr().out
    assert ecs_move.ecs_queue_url(cluster, service, aws) == ecs_url
    ecs = aws.client("ecs")
    arn = ecs.describe_services(cluster=cluster, services=[service])["services"][0][
        "taskDefinition"
    ]
    assert arn != account.task_definition
    described = ecs.describe_task_definition(taskDefinition=arn, include=["TAGS"])
    for key, value in account.fields.items():
        if key == "tags":
            assert described["tags"] == value
        elif key in ("inferenceAccelerators", "enableFaultInjection"):
            continue  # moto does not keep these two; the request carries them (below)
        else:
            assert described["taskDefinition"][key] == value, key
    environment = described["taskDefinition"]["containerDefinitions"][0]["environment"]
    assert {"name": "GROUP_FACE_QUEUE_URL", "value": account.group_face_url} in environment
    new_name = ecs_url.rsplit("/", 1)[-1]
    for alarm in account.alarms:
        assert existing_account.alarm_queue(aws, alarm) == new_name
    other = existing_account.alarm_queue(aws, f"{prefix}oncall-indexing-age")
    assert other == f"{prefix}ve-inhouse-indexing"
    assert ecs_task_role.role_may_consume(
        account.task_role_arn, ecs_move.queue_arn(ecs_url, aws), aws
    )
    assert main(["cutover", "status", *target]) == 0
    text = capsys.readouterr().out
    assert "stage 0/5  weight 0 % to Batch" in text
    assert "ECS service reads its own queue: yes" in text
    assert "task role may consume it: yes" in text
    assert "scaling alarms on the new queue: yes" in text
    assert main(["cutover", "status", "--json", *target]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["ecs_queue_moved"] is True and len(data["gates"]) == 5

    # The step undone: back to the queue it read before, every part.
    assert main(["cutover", "move-ecs-queue", *target, "--back"]) == 0
    assert ecs_move.ecs_queue_url(cluster, service, aws) == account.indexing_url
    for alarm in account.alarms:
        assert existing_account.alarm_queue(aws, alarm) == f"{prefix}ve-inhouse-indexing"
    assert not ecs_task_role.role_may_consume(
        account.task_role_arn, ecs_move.queue_arn(ecs_url, aws), aws
    )
    check = ecs_move.check(names, cluster, service, aws)
    assert not check.moved and check.reads == account.indexing_url


def _router_stack(names, aws, ingress_url: str, ecs_url: str) -> str:  # type: ignore[no-untyped-def]
    """A stack holding only the router's mapping (created disabled, as the template does), its
    function and the ECS queue output: what `move-ecs-queue` reads and enables. Its uuid."""
    ingress_arn = ecs_move.queue_arn(ingress_url, aws)
    body = {
        "Resources": {
            "RouterRole": {
                "Type": "AWS::IAM::Role",
                "Properties": {
                    "AssumeRolePolicyDocument": {
                        "Statement": [
                            {
                                "Effect": "Allow",
                                "Principal": {"Service": "lambda.amazonaws.com"},
                                "Action": "sts:AssumeRole",
                            }
                        ]
                    }
                },
            },
            "RouterFunction": {
                "Type": "AWS::Lambda::Function",
                "Properties": {
                    "Runtime": "python3.11",
                    "Handler": "index.handler",
                    "Role": {"Fn::GetAtt": ["RouterRole", "Arn"]},
                    "Code": {"ZipFile": "def handler(event, context):\n    return {}\n"},
                },
            },
            ecs_move.ROUTER_EVENT_SOURCE: {
                "Type": "AWS::Lambda::EventSourceMapping",
                "Properties": {
                    "FunctionName": {"Ref": "RouterFunction"},
                    "EventSourceArn": ingress_arn,
                    "Enabled": False,
                },
            },
        },
        "Outputs": {"EcsIndexingQueueUrl": {"Value": ecs_url}},
    }
    aws.client("cloudformation").create_stack(
        StackName=names.stack_name, TemplateBody=json.dumps(body)
    )
    uuid, enabled = ecs_move._mapping(names, aws)
    assert uuid is not None and enabled is False
    return uuid


def test_a_task_role_in_another_account_is_granted_by_its_owner_then_confirmed(env, capsys) -> None:
    """The ECS task role belongs to another account: the move never puts the policy on a role
    of the same name here, prints the policy for its owner and leaves the router disabled;
    `--task-role-granted` records the owner's grant and enables the router; `cutover status`
    verifies what it can (IAM simulation where permitted) and says the rest is confirmed."""
    from facefleet.tools.cli import main
    from tests.contract import existing_account
    from tests.flows_support import create_queues

    names, aws = env.names, env.aws
    urls = create_queues(names, aws)
    prefix = f"{names.prefix}-"
    account = existing_account.create(aws, prefix)
    cluster, service = f"{prefix}prod", f"{prefix}indexer"
    ecs = aws.client("ecs")
    # The same service, its task role now another account's (a role of that name exists here).
    foreign_role = f"arn:aws:iam::444455556666:role/{prefix}{existing_account.TASK_ROLE}"
    described = ecs.describe_task_definition(taskDefinition=account.task_definition)
    request = ecs_move.revision_request(
        {**described["taskDefinition"], "taskRoleArn": foreign_role},
        [],
        account.indexing_url,
        ecs_move._accepted(ecs, "RegisterTaskDefinition"),
    )
    revision = ecs.register_task_definition(**request)["taskDefinition"]["taskDefinitionArn"]
    ecs.update_service(cluster=cluster, service=service, taskDefinition=revision)
    _router_stack(names, aws, account.indexing_url, urls[names.ecs_indexing_queue])
    target = ["--prefix", names.prefix, "--ecs-cluster", cluster, "--ecs-service", service]

    assert main(["cutover", "move-ecs-queue", *target]) == 1
    out = capsys.readouterr().out
    assert "is in account 444455556666" in out and "--task-role-granted" in out
    assert ecs_move.queue_arn(urls[names.ecs_indexing_queue], aws) in out  # the policy to add
    assert "the router stays disabled" in out
    assert ecs_move._mapping(names, aws)[1] is False
    local_role = _role_name_policies(aws, f"{prefix}{existing_account.TASK_ROLE}")
    assert ecs_task_role.GRANT_POLICY not in local_role  # the same-named role here is left alone
    check = ecs_move.check(names, cluster, service, aws)
    assert check.role_access is False and not check.moved

    # Confirmed: the library with the test's names (its stack holds the mapping), then the CLI.
    report = ecs_move.move_ecs_queue(names, cluster, service, aws, role_granted=True)
    assert report.mapping == "enabled" and "--task-role-granted" in report.role_policy
    assert ecs_move._mapping(names, aws)[1] is True
    check = ecs_move.check(names, cluster, service, aws)
    assert check.moved and check.role_access is None
    assert check.role_how.startswith("operator-confirmed")
    assert main(["cutover", "move-ecs-queue", *target, "--task-role-granted"]) == 0
    assert "task role access: operator-confirmed" in capsys.readouterr().out
    assert main(["cutover", "status", *target]) == 0
    text = capsys.readouterr().out
    assert "ECS service reads its own queue: yes" in text
    assert "judged by: operator-confirmed (--task-role-granted)" in text
    # The confirmation names this role and queue: another queue is not confirmed by it.
    other = ecs_move.queue_arn(urls[names.indexing_queue], aws)
    assert ecs_task_role.role_access(names, foreign_role, other, aws)[0] is False

    # Undone: the router off first, the service back on the queue it read.
    ecs_move.move_ecs_queue(names, cluster, service, aws, back=True)
    assert ecs_move._mapping(names, aws)[1] is False
    assert ecs_move.ecs_queue_url(cluster, service, aws) == account.indexing_url


def _role_name_policies(aws, role: str) -> list[str]:  # type: ignore[no-untyped-def]
    return list(aws.client("iam").list_role_policies(RoleName=role)["PolicyNames"])


def test_the_revision_request_copies_every_field_register_accepts() -> None:
    """Pure: every field `RegisterTaskDefinition` accepts, as describe returns it, is in the
    request (the moto server drops two of them, so the request is checked here)."""
    import boto3

    from tests.contract import existing_account

    ecs = boto3.client("ecs", region_name="us-east-1")
    accepted = ecs_move._accepted(ecs, "RegisterTaskDefinition")
    fields = existing_account.task_definition_fields("arn:role/task", "arn:role/exec")
    tags = fields.pop("tags")
    described = {
        **fields,
        "family": "indexer",
        "taskDefinitionArn": "arn:td/indexer:3",
        "revision": 3,
        "status": "ACTIVE",
        "compatibilities": ["EC2"],
        "registeredAt": "2026-01-01",
        "containerDefinitions": [
            {"name": "c", "image": "i", "environment": [{"name": "QUEUE_URL", "value": "old"}]}
        ],
    }
    request = ecs_move.revision_request(described, tags, "new", accepted)
    assert set(request) == accepted  # nothing left behind, nothing describe-only sent
    assert request["containerDefinitions"][0]["environment"] == [
        {"name": "QUEUE_URL", "value": "new"}
    ]


def test_flows_image_holds_the_flows_and_no_ml_stack() -> None:
    from tests.e2e_support import ROOT

    docker = ROOT / "packages" / "infra" / "docker"
    dockerfile = (docker / "Dockerfile.flows").read_text()
    syncs = [line for line in dockerfile.splitlines() if "uv sync" in line]
    assert syncs and all("--package facefleet-flows" in line for line in syncs)
    # No extras: the `local` extra would bring the emulators, the worker's the ML stack.
    assert not any("--extra" in line for line in syncs)
    copied = {
        line.split()[1] for line in dockerfile.splitlines() if line.startswith("COPY packages")
    }
    assert "packages/worker" not in copied and "packages/flows" in copied
    script = (docker / "build-push.sh").read_text()
    assert "Dockerfile.flows FlowsRepositoryUri" in script and "Dockerfile RepositoryUri" in script


def test_the_cutover_does_not_start_before_the_ecs_service_reads_its_queue(env) -> None:
    from facefleet.flows import cutover as cutover_flows
    from tests.flows_support import create_queues

    prefect_harness()
    names, aws = env.names, env.aws
    urls = create_queues(names, aws)
    ecs = aws.client("ecs")
    ecs.create_cluster(clusterName="prod")
    definition = ecs.register_task_definition(
        family="indexer",
        containerDefinitions=[
            {
                "name": "indexer",
                "image": "indexer:1",
                "memory": 512,
                "environment": [{"name": "QUEUE_URL", "value": "https://old"}],
            }
        ],
    )["taskDefinition"]["taskDefinitionArn"]
    ecs.create_service(
        cluster="prod", serviceName="indexer", taskDefinition=definition, desiredCount=1
    )
    params = {
        "names": {"prefix": names.prefix, "grouping_prefix": names.grouping_prefix},
        "region": aws.region,
        "endpoint_url": aws.endpoint_url,
        "ecs_cluster": "prod",
        "ecs_service": "indexer",
    }
    held = cutover_flows.cutover(**params)
    assert (held["action"], held["weight"]) == ("hold", 0)
    assert "move-ecs-queue" in held["reasons"][0]
    ecs_move.move_ecs_queue(names, "prod", "indexer", aws, queue_url=urls[names.ecs_indexing_queue])
    started = cutover_flows.cutover(**params)
    assert (started["action"], started["weight"]) == ("start", 10)


def test_lambda_record_attributes_become_send_message_attributes() -> None:
    import base64

    from facefleet.control.router import lambda_attributes

    record = {
        "messageAttributes": {
            "trace": {"stringValue": "abc", "dataType": "String"},
            "blob": {"binaryValue": base64.b64encode(b"\x00\x01").decode(), "dataType": "Binary"},
        }
    }
    assert lambda_attributes(record) == {
        "trace": {"DataType": "String", "StringValue": "abc"},
        "blob": {"DataType": "Binary", "BinaryValue": b"\x00\x01"},
    }
    assert lambda_attributes({}) == {}
