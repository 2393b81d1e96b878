"""`facefleet infra doctor` on the local stack: a first run names what to do, each fix turns its
check ok; the queue-policy check on its own for an existing queue owned by another account."""

from __future__ import annotations

import json

from facefleet.infra import deploy, doctor
from facefleet.infra.stack_config import local_stack_config
from facefleet.tools import cli


def _by_name(checks: list[doctor.Check]) -> dict[str, doctor.Check]:
    return {c.name: c for c in checks}


def test_doctor_on_the_local_stack_names_each_fix(env, capsys) -> None:
    config = local_stack_config(env.names, env.aws, alert_email="ops@example.com")
    before = _by_name(doctor.run(config, env.aws, environ={}, emit=lambda line: None))
    assert (
        not before["alerts subscription"].ok and "confirm" in before["alerts subscription"].detail
    )
    assert before["secret GALLERY_IMAGES_MONGO_URI"].ok  # the local config carries the URIs
    assert not before[f"model pack {config.worker_settings['MODEL_PACK']}"].ok

    outputs = deploy.apply(config, env.aws)
    checks = _by_name(doctor.run(config, env.aws, environ={}, emit=lambda line: None))
    subnet_checks = [c for name, c in checks.items() if name.startswith("subnet ")]
    assert subnet_checks
    if not all(c.ok for c in subnet_checks):  # moto's default VPC may have no route out
        assert all("NAT gateway" in c.detail for c in subnet_checks if not c.ok)
        _route_out(env, config.vpc_id)
    notification = checks[f"gallery bucket {config.gallery_bucket} notification"]
    assert not notification.ok and outputs["IndexingQueueArn"] in notification.detail
    pack = f"model pack {config.worker_settings['MODEL_PACK']}"
    assert not checks[pack].ok and "upload" in checks[pack].detail
    image = f"image {config.names.ecr_repository}:{config.image_tag}"
    assert not checks[image].ok and "build-push.sh" in checks[image].detail
    # moto has no EC2 quotas: the check says where to look instead of passing silently.
    assert not checks["Spot vCPU quota (G instances)"].ok

    # Fix what the doctor named, as a person would.
    s3 = env.aws.client("s3")
    s3.put_bucket_notification_configuration(
        Bucket=config.gallery_bucket,
        NotificationConfiguration={
            "QueueConfigurations": [
                {"QueueArn": outputs["IndexingQueueArn"], "Events": ["s3:ObjectCreated:*"]}
            ]
        },
    )
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
    assert doctor.queue_policy_admits(admits, account, doctor.CONSUME_ACTIONS)
    other = json.loads(json.dumps(admits).replace(account, "444455556666"))
    assert not doctor.queue_policy_admits(other, account, doctor.CONSUME_ACTIONS)
    receive_only = {"Statement": [{**admits["Statement"][0], "Action": "sqs:ReceiveMessage"}]}
    assert not doctor.queue_policy_admits(receive_only, account, doctor.CONSUME_ACTIONS)
