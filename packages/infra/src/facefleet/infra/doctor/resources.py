"""What deploy expects to find in the account: the MongoDB secrets, a confirmed alerts
subscription, the gallery bucket's notifications, the model pack and the image in ECR."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from botocore.exceptions import ClientError

from facefleet.common.aws import AwsTarget, topic_arn_by_name
from facefleet.common.config import Settings
from facefleet.infra.doctor.check import Check, _error
from facefleet.infra.stack_config import MONGO_URI_ENV, StackConfig


def secrets(config: StackConfig, aws: AwsTarget, environ: Mapping[str, str]) -> list[Check]:
    checks = []
    client = aws.client("secretsmanager")
    for field_name, variable in MONGO_URI_ENV.items():
        arn = getattr(config, field_name.replace("_uri", "_secret_arn"))
        name = f"secret {variable}"
        if arn:
            try:
                client.describe_secret(SecretId=arn)
                checks.append(Check(name, True, f"{arn} exists"))
            except ClientError as error:
                checks.append(
                    Check(name, False, f"{arn}: {_error(error)}; create it or fix the ARN")
                )
            continue
        stack_secret = (
            config.names.gallery_mongo_secret
            if variable == "GALLERY_IMAGES_MONGO_URI"
            else config.names.huemn_mongo_secret
        )
        try:
            client.describe_secret(SecretId=stack_secret)
            checks.append(Check(name, True, f"the stack's secret {stack_secret} exists"))
            continue
        except ClientError:
            pass
        if getattr(config, field_name) or environ.get(variable):
            checks.append(Check(name, True, f"{variable} is set: the stack creates {stack_secret}"))
        else:
            checks.append(
                Check(
                    name,
                    False,
                    f"set {variable} for the first deploy, or pass an existing secret's ARN",
                )
            )
    return checks


def alerts_subscription(config: StackConfig, aws: AwsTarget) -> Check:
    name = "alerts subscription"
    sns = aws.client("sns")
    topic_arn = topic_arn_by_name(aws, config.names.alerts_topic)
    if topic_arn is None:
        if not config.alert_email:
            return Check(name, False, "no alerts topic yet and no --alert-email: pass one")
        return Check(
            name, False, f"after the deploy, confirm the email sent to {config.alert_email}"
        )
    subscriptions = sns.list_subscriptions_by_topic(TopicArn=topic_arn).get("Subscriptions", [])
    confirmed = [s for s in subscriptions if s["SubscriptionArn"].startswith("arn:")]
    if confirmed:
        return Check(name, True, f"{len(confirmed)} confirmed ({confirmed[0]['Protocol']})")
    if subscriptions:
        return Check(name, False, "pending confirmation: click the link in the email AWS sent")
    return Check(name, False, f"{topic_arn} has no subscription: subscribe the on-call address")


def _covers(configured: Iterable[str], event: str) -> bool:
    """Does one of the configured S3 event types cover `event` (`s3:ObjectRemoved:*` covers
    `s3:ObjectRemoved:Delete`)?"""
    return any(c == event or (c.endswith(":*") and event.startswith(c[:-1])) for c in configured)


def gallery_notification(config: StackConfig, aws: AwsTarget, indexing_arn: str | None) -> Check:
    """The events deploy configures (`gallery_notification_events`: deletions only by default,
    the existing service's notification keeps the creates) reach the Batch indexing queue."""
    name = f"gallery bucket {config.gallery_bucket} notification"
    wanted = config.gallery_notification_events
    if not wanted:
        return Check(name, True, "not FaceFleet's to configure (gallery_notification_events empty)")
    if indexing_arn is None:
        return Check(name, False, "indexing queue unknown (no stack yet): run doctor after deploy")
    try:
        notification = aws.client("s3").get_bucket_notification_configuration(
            Bucket=config.gallery_bucket
        )
    except ClientError as error:
        return Check(name, False, f"cannot read it ({_error(error)})")
    configured = [
        event
        for q in notification.get("QueueConfigurations", [])
        if q.get("QueueArn") == indexing_arn
        for event in q.get("Events", [])
    ]
    missing = [e for e in wanted if not _covers(configured, e)]
    if not missing:
        return Check(name, True, f"{', '.join(wanted)} -> {indexing_arn}")
    return Check(
        name,
        False,
        f"{', '.join(missing)} do not reach {indexing_arn}: `facefleet infra apply` sets them "
        "(the queue policy admits s3.amazonaws.com from this bucket)",
    )


def model_pack(config: StackConfig, aws: AwsTarget) -> Check:
    pack = config.worker_settings.get("MODEL_PACK", Settings().model_pack)
    bucket = config.model_bucket_name
    name = f"model pack {pack}"
    try:
        listed = aws.client("s3").list_objects_v2(Bucket=bucket, Prefix=f"{pack}/")
    except ClientError as error:
        return Check(name, False, f"s3://{bucket}/ not readable ({_error(error)}): deploy first")
    models = [o["Key"] for o in listed.get("Contents", []) if o["Key"].endswith(".onnx")]
    if models:
        return Check(name, True, f"{len(models)} model file(s) in s3://{bucket}/{pack}/")
    return Check(name, False, f"upload the pack's .onnx files to s3://{bucket}/{pack}/")


def image_tag(config: StackConfig, aws: AwsTarget) -> Check:
    repository, tag = config.names.ecr_repository, config.image_tag
    if config.image_uri:
        uri = config.image_uri
        if ".dkr.ecr." not in uri:
            return Check("worker image", True, f"{uri} (not in ECR: not checked)")
        path = uri.split("/", 1)[1]
        repository, _, tag = path.partition(":")
        tag = tag or "latest"
    name = f"image {repository}:{tag}"
    try:
        aws.client("ecr").describe_images(repositoryName=repository, imageIds=[{"imageTag": tag}])
    except ClientError as error:
        return Check(
            name,
            False,
            f"not in ECR ({_error(error)}): build and push it "
            "(packages/infra/docker/build-push.sh)",
        )
    return Check(name, True, "present in ECR")
