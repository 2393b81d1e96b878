"""`facefleet infra doctor` on the local stack: a first run names what to do, each fix turns its
check ok, and every call it makes is a read; the queue-policy check on its own for an existing
queue owned by another account; the checks the cutover topology needs (ingress queue, VPC
endpoints, name collisions, the ECS task role), each against the moto server."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

from facefleet.infra import account, deploy, doctor
from facefleet.infra.doctor.queues import ROUTER_ACTIONS, queue_policy_admits
from facefleet.infra.doctor.roles import CONSUME_ACTIONS
from facefleet.infra.stack_config import StackConfig, local_stack_config
from facefleet.tools import cli
from tests.contract.iam_support import Call, Recorder


def _by_name(checks: list[doctor.Check]) -> dict[str, doctor.Check]:
    return {c.name: c for c in checks}


READS = ("Describe", "Get", "List", "Head")


def test_doctor_on_the_local_stack_names_each_fix(env, capsys, monkeypatch) -> None:
    config = local_stack_config(env.names, env.aws, alert_email="ops@example.com")
    recorder = Recorder()
    recorder.install(monkeypatch)
    before = _by_name(doctor.run(config, env.aws, environ={}, emit=lambda line: None))
    # Read-only: a preflight never changes the account it inspects.
    _assert_reads_only(recorder.calls)
    assert all(c.ok for n, c in before.items() if n.startswith("names free")), before
    assert (
        not before["alerts subscription"].ok and "confirm" in before["alerts subscription"].detail
    )
    assert before["secret GALLERY_IMAGES_MONGO_URI"].ok  # the local config carries the URIs
    assert not before[f"model pack {config.worker_settings['MODEL_PACK']}"].ok

    outputs = deploy.apply(config, env.aws)
    made = len(recorder.calls)
    checks = _by_name(doctor.run(config, env.aws, environ={}, emit=lambda line: None))
    _assert_reads_only(recorder.calls[made:])
    subnet_checks = [c for name, c in checks.items() if name.startswith("subnet ")]
    assert subnet_checks
    if not all(c.ok for c in subnet_checks):  # moto's default VPC may have no route out
        assert all("NAT gateway" in c.detail for c in subnet_checks if not c.ok)
        _route_out(env, config.vpc_id)
    # Deploy configured what the config asks (deletions only): the honest check is satisfied.
    notification = checks[f"gallery bucket {config.gallery_bucket} notification"]
    assert notification.ok and outputs["IndexingQueueArn"] in notification.detail
    assert not any(n.startswith("names free") for n in checks)  # the stack owns them now
    pack = f"model pack {config.worker_settings['MODEL_PACK']}"
    assert not checks[pack].ok and "upload" in checks[pack].detail
    image = f"image {config.names.ecr_repository}:{config.image_tag}"
    assert not checks[image].ok and "build-push.sh" in checks[image].detail
    # moto has no EC2 quotas: the check says where to look instead of passing silently.
    assert not checks["Spot vCPU quota (G instances)"].ok

    # Someone replaces the bucket's notifications with creates only: deletions no longer
    # reach Batch, and doctor says so.
    s3 = env.aws.client("s3")
    s3.put_bucket_notification_configuration(
        Bucket=config.gallery_bucket,
        NotificationConfiguration={
            "QueueConfigurations": [
                {"QueueArn": outputs["IndexingQueueArn"], "Events": ["s3:ObjectCreated:*"]}
            ]
        },
    )
    broken = _by_name(doctor.run(config, env.aws, environ={}, emit=lambda line: None))
    assert not broken[notification.name].ok
    assert "s3:ObjectRemoved:*" in broken[notification.name].detail
    account.configure_gallery_notifications(config, env.aws, outputs)

    # Fix what the doctor named, as a person would.
    s3.put_object(
        Bucket=outputs["ModelBucketName"],
        Key=f"{config.worker_settings['MODEL_PACK']}/det.onnx",
        Body=b"onnx",
    )
    env.aws.client("ecr").put_image(
        repositoryName=config.names.ecr_repository,
        imageManifest=json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                "config": {},
                "layers": [],
            }
        ),
        imageTag=config.image_tag,
    )
    after = _by_name(doctor.run(config, env.aws, environ={}, emit=lambda line: None))
    fixed = [notification.name, pack, image, "secret HUEMN_MONGO_URI"]
    fixed += [c.name for c in subnet_checks]
    for name in fixed:
        assert after[name].ok, after[name]

    # The command prints one line per check and says what is left.
    code = cli.main(
        [
            "infra",
            "doctor",
            "--local",
            "--prefix",
            env.names.prefix,
            "--stack-name",
            env.names.stack_name,
        ]
    )
    printed = capsys.readouterr().out
    assert code == 1 and "todo  Spot vCPU quota" in printed and "ok    model pack" in printed


def _assert_reads_only(calls: list[Call]) -> None:
    assert calls
    writes = {f"{c.service}:{c.operation}" for c in calls if not c.operation.startswith(READS)}
    assert not writes, writes


def _route_out(env, vpc_id: str) -> None:
    ec2 = env.aws.client("ec2")
    tables = ec2.describe_route_tables(Filters=[{"Name": "vpc-id", "Values": [vpc_id]}])
    main = next(t for t in tables["RouteTables"] if any(a.get("Main") for a in t["Associations"]))
    attached = ec2.describe_internet_gateways(
        Filters=[{"Name": "attachment.vpc-id", "Values": [vpc_id]}]
    )["InternetGateways"]
    if attached:
        gateway = attached[0]["InternetGatewayId"]
    else:
        gateway = ec2.create_internet_gateway()["InternetGateway"]["InternetGatewayId"]
        ec2.attach_internet_gateway(InternetGatewayId=gateway, VpcId=vpc_id)
    ec2.create_route(
        RouteTableId=main["RouteTableId"], DestinationCidrBlock="0.0.0.0/0", GatewayId=gateway
    )


def test_a_foreign_queue_policy_must_admit_this_account() -> None:
    account = "111122223333"
    queue = "arn:aws:sqs:ap-south-1:992382426603:ve-inhouse-indexing"
    admits = {
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"AWS": f"arn:aws:iam::{account}:root"},
                "Action": [
                    "sqs:ReceiveMessage",
                    "sqs:DeleteMessage",
                    "sqs:ChangeMessageVisibility",
                ],
                "Resource": queue,
            }
        ]
    }
    assert queue_policy_admits(admits, account, CONSUME_ACTIONS)
    other = json.loads(json.dumps(admits).replace(account, "444455556666"))
    assert not queue_policy_admits(other, account, CONSUME_ACTIONS)
    receive_only = {"Statement": [{**admits["Statement"][0], "Action": "sqs:ReceiveMessage"}]}
    assert not queue_policy_admits(receive_only, account, CONSUME_ACTIONS)


def _private_subnet(env) -> tuple[str, str, str]:
    """A VPC and subnet with no route out (VPC, subnet, its route table)."""
    ec2 = env.aws.client("ec2")
    vpc = ec2.create_vpc(CidrBlock="10.42.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.42.1.0/24")["Subnet"]["SubnetId"]
    table = ec2.create_route_table(VpcId=vpc)["RouteTable"]["RouteTableId"]
    ec2.associate_route_table(RouteTableId=table, SubnetId=subnet)
    return vpc, subnet, table


def test_a_private_subnet_needs_every_endpoint_a_container_instance_uses(env) -> None:
    """Amazon ECS developer guide, "Amazon ECS interface VPC endpoints": without NAT, the agent
    needs ecs, ecs-agent and ecs-telemetry, injected secrets secretsmanager, and image layers
    the S3 gateway endpoint on the subnet's route table; otherwise jobs sit RUNNABLE. The
    endpoints the old check accepted (s3, sqs, ecr, logs) are not enough."""
    ec2 = env.aws.client("ec2")
    vpc, subnet, table = _private_subnet(env)
    region = env.region

    def endpoint(service: str, kind: str = "Interface") -> None:
        extra = {"RouteTableIds": [table]} if kind == "Gateway" else {}
        ec2.create_vpc_endpoint(
            VpcId=vpc,
            ServiceName=f"com.amazonaws.{region}.{service}",
            VpcEndpointType=kind,
            **extra,
        )

    for service in ("s3", "sqs", "ecr.api", "ecr.dkr", "logs"):
        endpoint(service)  # an interface S3 endpoint: not the gateway on the route table
    config = StackConfig(vpc_id=vpc, subnet_ids=(subnet,))
    (check,) = doctor.subnets_route_out(config, env.aws)
    assert not check.ok
    for needed in ("ecs,", "ecs-agent", "ecs-telemetry", "secretsmanager", "s3 (gateway)"):
        assert needed in check.detail, check.detail
    for service in ("ecs", "ecs-agent", "ecs-telemetry", "secretsmanager", "monitoring"):
        endpoint(service)
    endpoint("s3", "Gateway")
    (check,) = doctor.subnets_route_out(config, env.aws)
    assert check.ok, check.detail


def test_name_collisions_before_a_first_create(env) -> None:
    """CloudFormation creates named resources with exactly that name and refuses one that
    exists (the whole create then rolls back): doctor names each collision beforehand."""
    config = local_stack_config(env.names, env.aws)
    env.aws.client("sqs").create_queue(QueueName=config.names.indexing_queue)
    env.aws.client("ecr").create_repository(repositoryName=config.names.ecr_repository)
    env.aws.client("s3").create_bucket(Bucket=config.model_bucket_name)
    checks = _by_name(doctor.run(config, env.aws, environ={}, emit=lambda line: None))
    queues = checks["names free (SQS Queue)"]
    assert not queues.ok and config.names.indexing_queue in queues.detail
    assert config.names.group_face_queue not in queues.detail  # only the taken one is named
    repositories = checks["names free (ECR Repository)"]
    assert not repositories.ok and config.names.ecr_repository in repositories.detail
    assert f"{config.names.ecr_repository}-flows:" not in repositories.detail
    buckets = checks["names free (S3 Bucket)"]
    assert not buckets.ok and config.model_bucket_name in buckets.detail
    assert checks["names free (SNS Topic)"].ok
    assert checks["names free (DynamoDB Table)"].ok


def _foreign_url(env, name: str) -> str:
    # moto serves a queue by name whatever account its URL names: a URL in another account
    # models the existing service's queue (doctor judges ownership from the URL).
    return f"{env.endpoint_url}/444455556666/{name}"


def test_the_ingress_queue_must_admit_the_router(env) -> None:
    """Lambda developer guide, "Using Lambda with Amazon SQS": the queue's visibility timeout
    must be at least the function timeout (6x recommended); a queue encrypted with the AWS
    managed key cannot trigger a function in another account, and a customer managed key needs
    kms:Decrypt for the function's role; the queue's policy must admit the reading account."""
    sqs = env.aws.client("sqs")
    name = f"{env.names.prefix}-existing-ingress"
    sqs.create_queue(
        QueueName=name, Attributes={"VisibilityTimeout": "20", "KmsMasterKeyId": "alias/aws/sqs"}
    )
    url = sqs.get_queue_url(QueueName=name)["QueueUrl"]
    config = replace(local_stack_config(env.names, env.aws), router_lambda=True)
    config = replace(config, ingress_queue=_foreign_url(env, name))
    account = env.aws.client("sts").get_caller_identity()["Account"]
    timeout = doctor._router_timeout(doctor._rendered(config))
    assert timeout is not None

    def run(role: str | None = None) -> dict[str, doctor.Check]:
        return _by_name(doctor.ingress_queue(config, env.aws, account, timeout, role))

    prefix = f"ingress queue {name} (444455556666)"
    checks = run()
    assert not checks[f"{prefix} policy"].ok and account in checks[f"{prefix} policy"].detail
    assert not checks[f"{prefix} encryption"].ok
    assert "AWS managed key" in checks[f"{prefix} encryption"].detail
    visibility = checks[f"{prefix} visibility timeout"]
    assert not visibility.ok and f"{6 * timeout} s" in visibility.detail

    policy = {
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"AWS": f"arn:aws:iam::{account}:root"},
                "Action": list(ROUTER_ACTIONS),
                "Resource": "*",
            }
        ]
    }
    key = env.aws.client("kms").create_key()["KeyMetadata"]["Arn"]
    sqs.set_queue_attributes(
        QueueUrl=url,
        Attributes={
            "Policy": json.dumps(policy),
            "KmsMasterKeyId": key,
            "VisibilityTimeout": str(6 * timeout),
        },
    )
    checks = run()
    assert checks[f"{prefix} policy"].ok and checks[f"{prefix} visibility timeout"].ok
    assert (
        not checks[f"{prefix} encryption"].ok
        and "kms:Decrypt" in checks[f"{prefix} encryption"].detail
    )
    role = _role(env, "router", [{"Effect": "Allow", "Action": "kms:Decrypt", "Resource": key}])
    assert run(role)[f"{prefix} encryption"].ok


def test_an_existing_queue_without_a_policy_is_a_check_line(env) -> None:
    """GetQueueAttributes omits `Attributes` when the queue has none of those asked (no Policy,
    no KMS key: AWS and moto alike): doctor says what the queue needs instead of a KeyError."""
    name = f"{env.names.prefix}-existing-indexing"
    env.aws.client("sqs").create_queue(QueueName=name)
    config = replace(local_stack_config(env.names, env.aws), indexing_queue=_foreign_url(env, name))
    account = env.aws.client("sts").get_caller_identity()["Account"]
    checks = _by_name(doctor.foreign_queues(config, env.aws, account))
    check = checks[f"indexing queue {name} (444455556666)"]
    assert not check.ok and check.detail.startswith("no queue policy")
    assert f"arn:aws:iam::{account}:root" in check.detail and "sqs:DeleteMessage" in check.detail


def _role(env, suffix: str, statements: list[dict[str, Any]]) -> str:
    iam = env.aws.client("iam")
    name = f"{env.names.prefix}-{suffix}"
    trust = {
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"Service": "ecs-tasks.amazonaws.com"},
                "Action": "sts:AssumeRole",
            }
        ]
    }
    arn = iam.create_role(RoleName=name, AssumeRolePolicyDocument=json.dumps(trust))["Role"]["Arn"]
    iam.put_role_policy(
        RoleName=name,
        PolicyName="own",
        PolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": statements}),
    )
    return str(arn)


def test_the_ecs_task_role_must_read_the_queue_it_moves_to(env) -> None:
    """Amazon ECS developer guide, "Task IAM role": the service's containers call SQS with the
    task role, so after `move-ecs-queue` it must allow consuming the ECS queue, or the service
    stops processing at the cutover's start."""
    account = env.aws.client("sts").get_caller_identity()["Account"]
    old_queue = f"arn:aws:sqs:{env.region}:{account}:{env.names.prefix}-legacy"
    consume = ["sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:ChangeMessageVisibility"]
    role = _role(env, "ecs-task", [{"Effect": "Allow", "Action": consume, "Resource": old_queue}])
    ecs = env.aws.client("ecs")
    cluster = ecs.create_cluster(clusterName=f"{env.names.prefix}-indexing")["cluster"]
    definition = ecs.register_task_definition(
        family=f"{env.names.prefix}-indexing",
        taskRoleArn=role,
        containerDefinitions=[{"name": "indexer", "image": "indexer:1", "memory": 512}],
    )["taskDefinition"]["taskDefinitionArn"]
    service = ecs.create_service(
        cluster=cluster["clusterName"],
        serviceName="indexer",
        taskDefinition=definition,
        desiredCount=1,
    )["service"]["serviceArn"]
    config = StackConfig(names=env.names, ecs_service_arn=service)
    ecs_queue = f"arn:aws:sqs:{env.region}:{account}:{env.names.ecs_indexing_queue}"
    (check,) = doctor.ecs_task_role_access(config, env.aws, account, ecs_queue)
    assert not check.ok and ecs_queue in check.detail and "sqs:ReceiveMessage" in check.detail
    env.aws.client("iam").put_role_policy(
        RoleName=role.rsplit("/", 1)[-1],
        PolicyName="ecs-queue",
        PolicyDocument=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [
                    {
                        "Effect": "Allow",
                        "Action": [*consume, "sqs:GetQueueAttributes"],
                        "Resource": ecs_queue,
                    }
                ],
            }
        ),
    )
    (check,) = doctor.ecs_task_role_access(config, env.aws, account, ecs_queue)
    assert check.ok, check.detail
