"""What one FaceFleet stack is made of: a `StackConfig` is the whole input of the template.

Names, sizes and priorities come from `Names` (never spelled here); the rest is what differs per
account: network placement, the production queues and buckets that already exist, the image tag,
the MongoDB URIs (stored in Secrets Manager, never in job definitions), and switches.

`StackConfig.from_env` is the one way a command or flow builds a config from its inputs and the
environment; `local_stack_config(names, aws)` gives values for the embedded moto stack;
`worker_environment` maps the stack's outputs onto the workers' environment-variable contract
(`Settings`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from facefleet.common.aws import AwsTarget
from facefleet.common.config import ENV_NAMES
from facefleet.common.names import NAMES, Names

QUEUE_ARN = re.compile(
    r"^arn:(?P<partition>[\w-]+):sqs:(?P<region>[\w-]+):(?P<account>\d{12}):(?P<name>[\w.-]+)$"
)
QUEUE_URL = re.compile(r"^https?://(?P<host>[^/]+)/(?P<account>\d{12})/(?P<name>[\w.-]+)/?$")


# StackConfig field -> the environment variable it is read from (`StackConfig.from_env`).
MONGO_URI_ENV: Mapping[str, str] = {
    "gallery_mongo_uri": "GALLERY_IMAGES_MONGO_URI",
    "huemn_mongo_uri": "HUEMN_MONGO_URI",
}


# Receives before a queue's redrive moves a message to its dead-letter queue. SQS counts every
# receive, whatever ended it (SQS developer guide, "Using dead-letter queues": maxReceiveCount):
# a Spot interruption or SIGTERM that catches a message in work releases it (visibility 0), a
# hard kill lets its visibility lapse, a long outage releases it. So the budget tolerates as
# many Spot releases as a job has attempts (the job definitions' retry strategy retries a job
# that many times on Spot) and as many again for hard kills and outages. A malformed message is
# made visible at once, so it still reaches the dead-letter queue within seconds.
SPOT_RELEASES_TOLERATED = NAMES.detection_job.attempts
DEFAULT_MAX_RECEIVE_COUNT = 2 * SPOT_RELEASES_TOLERATED


class StackConfigError(ValueError):
    """A stack setting is missing or malformed; the message names the field."""


@dataclass(frozen=True)
class QueueRef:
    """An existing SQS queue the stack references instead of creating (URL and ARN both known)."""

    url: str
    arn: str
    name: str

    @classmethod
    def parse(cls, value: str, region: str) -> QueueRef:
        """From a queue URL or ARN; the missing form is derived (standard endpoint, aws partition
        for a URL with a non-AWS host such as the moto server)."""
        arn = QUEUE_ARN.match(value)
        if arn:
            url = f"https://sqs.{arn['region']}.amazonaws.com/{arn['account']}/{arn['name']}"
            return cls(url=url, arn=value, name=arn["name"])
        url_match = QUEUE_URL.match(value)
        if url_match:
            host = url_match["host"]
            host_region = re.match(r"^sqs\.([\w-]+)\.", host)
            partition = "aws-cn" if host.endswith(".cn") else "aws"
            queue_region = host_region.group(1) if host_region else region
            return cls(
                url=value.rstrip("/"),
                arn=f"arn:{partition}:sqs:{queue_region}:{url_match['account']}:{url_match['name']}",
                name=url_match["name"],
            )
        raise StackConfigError(f"not an SQS queue URL or ARN: {value!r}")


@dataclass(frozen=True)
class StackConfig:
    """Everything the template depends on. Only `vpc_id` and `subnet_ids` have no usable default
    (and only deploying needs them).

    - existing queues (`indexing_queue`, `group_face_queue`, URL or ARN): referenced, not created;
      the stack then creates neither them nor their dead-letter queues (CloudFormation cannot
      change a queue it does not own: set their redrive by hand).
    - `gallery_bucket` / `face_group_bucket`: the production buckets, always referenced by name.
    - MongoDB: `*_mongo_uri` fills secrets the stack creates, or `*_mongo_secret_arn` names
      secrets that already exist. A URI given here travels as a NoEcho parameter; when neither
      is given and the stack exists, the secret keeps its current value.
    - `fallback_dispatcher`: create the dispatch Lambda and its schedule (off while the Prefect
      deployment dispatches); its code goes to `artifact_bucket` (default: one per account,
      created by deploy).
    """

    names: Names = NAMES
    vpc_id: str = ""
    subnet_ids: tuple[str, ...] = ()
    # Extra security groups for the instances (e.g. one MongoDB already admits); the stack always
    # creates an egress-only worker group of its own.
    security_group_ids: tuple[str, ...] = ()
    indexing_queue: str | None = None
    group_face_queue: str | None = None
    gallery_bucket: str = "gallery-images"
    model_bucket: str | None = None  # S3 names are global: default `names.model_bucket`
    face_group_bucket: str = "face-group-images"
    max_receive_count: int = DEFAULT_MAX_RECEIVE_COUNT  # see DEFAULT_MAX_RECEIVE_COUNT
    queue_visibility_timeout_s: int = 1800
    message_retention_s: int = 4 * 24 * 3600
    dlq_retention_s: int = 14 * 24 * 3600
    image_tag: str = "latest"
    # GPU AMI family: Amazon Linux 2023 with the NVIDIA driver (Amazon Linux 2 ended 2026-06-30).
    ami_image_type: str = "ECS_AL2023_NVIDIA"
    image_uri: str | None = None  # overrides the stack's ECR repository + image_tag
    # Instance root volume (GiB, gp3): the CUDA image unpacked (about 12 GiB), the previous image
    # during a rollout, the model pack cache and the jobs' scratch space.
    root_volume_gib: int = 100
    # How long the ECS agent waits between SIGTERM and SIGKILL (ECS_CONTAINER_STOP_TIMEOUT): long
    # enough for the worker's shutdown deadline, short of the Spot two-minute notice.
    container_stop_timeout_s: int = 110
    gallery_mongo_uri: str | None = None
    huemn_mongo_uri: str | None = None
    gallery_mongo_secret_arn: str | None = None
    huemn_mongo_secret_arn: str | None = None
    fallback_dispatcher: bool = False
    dispatch_schedule: str = "rate(1 minute)"
    artifact_bucket: str | None = None
    alert_email: str | None = None
    # The cutover router (template/router.py): the ingress queue producers write to (the
    # existing service's indexing queue, URL or ARN; None: the stack creates `names.ingress_queue`),
    # the ECS service's own queue (created), and the router Lambda on the ingress queue
    # (`router_lambda`; the embedded stack runs the router as a process instead).
    router: bool = True
    router_lambda: bool = True
    ingress_queue: str | None = None
    router_batch_size: int = 10
    ingress_age_alarm_s: int = 900
    # The flows' runtime (template/flows_runtime.py): the flows image repository and the flow
    # runs' least-privilege task role always; with `prefect_api_url`, a Prefect ECS worker as a
    # Fargate service (its API key from the Secrets Manager secret `prefect_api_key_secret_arn`).
    flows_image_tag: str = "latest"
    prefect_api_url: str | None = None
    prefect_api_key_secret_arn: str | None = None
    ecs_service_arn: str | None = None  # the existing service, which only the final step scales
    log_retention_days: int = 30
    keep_images: int = 20
    # Keep the model bucket and the image repository when the stack is deleted or they are
    # replaced (production data); local stacks drop them.
    retain_data: bool = True
    tags: Mapping[str, str] = field(default_factory=lambda: {"project": "facefleet"})
    # S3 events of the gallery bucket sent to the Batch indexing queue (`account.configure_
    # gallery_notifications`: the bucket is not the stack's, so deploy sets them on it; () leaves
    # its notifications alone). Deletions only, by default: the existing service's notification
    # already sends creates to the ingress queue the router reads, and S3 refuses two
    # configurations that overlap on event and prefix. Every deletion is FaceFleet's to carry
    # out whichever side holds the user (the ECS service has no deletion path), and the Batch
    # worker orders it against the photo's create by tombstone. A stack with no existing service
    # adds "s3:ObjectCreated:*".
    gallery_notification_events: tuple[str, ...] = ("s3:ObjectRemoved:*",)
    # Worker settings (the `Settings` env names) the job definitions carry beyond the defaults,
    # e.g. thresholds; locally, MODEL_DIR on this disk instead of the container's path.
    worker_settings: Mapping[str, str] = field(default_factory=dict)

    @property
    def model_bucket_name(self) -> str:
        return self.model_bucket or self.names.model_bucket

    @classmethod
    def from_env(
        cls,
        names: Names,
        aws: AwsTarget,
        *,
        local: bool = False,
        overrides: Mapping[str, Any] | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> StackConfig:
        """The config for `names` from explicit `overrides` (StackConfig fields; lists become
        tuples) and the environment, for the embedded stack when `local`.

        Precedence: an override wins; else the MongoDB URIs come from GALLERY_IMAGES_MONGO_URI /
        HUEMN_MONGO_URI (never flags or parameters: they hold credentials), unless the override
        names an existing secret (`*_mongo_secret_arn`) for that database. Unset everywhere, a
        deployed stack's secret keeps its value; a local stack gets the local MongoDB's URI.
        """
        source = os.environ if environ is None else environ
        values = dict(overrides or {})
        for key in ("subnet_ids", "security_group_ids", "gallery_notification_events"):
            if key in values and not isinstance(values[key], tuple):
                values[key] = tuple(values[key])
        for field_name, variable in MONGO_URI_ENV.items():
            secret = field_name.replace("_uri", "_secret_arn")
            if field_name not in values and not values.get(secret) and source.get(variable):
                values[field_name] = source[variable]
        if local:
            return local_stack_config(names, aws, **values)
        return cls(names=names, **values)

    def validate(self, *, deploying: bool = False) -> None:
        """Raise StackConfigError naming each bad field. The network is only a parameter
        value, so rendering does not need it; deploying does."""
        problems: list[str] = []
        if deploying and not self.vpc_id:
            problems.append("vpc_id is required (the VPC the Batch instances run in)")
        if deploying and not self.subnet_ids:
            problems.append("subnet_ids needs at least one subnet")
        if not 1 <= self.max_receive_count <= 1000:
            problems.append(f"max_receive_count={self.max_receive_count}: must be 1..1000")
        if not 0 <= self.queue_visibility_timeout_s <= 43200:
            problems.append("queue_visibility_timeout_s: must be 0..43200")
        for name in ("indexing_queue", "group_face_queue", "ingress_queue"):
            value = getattr(self, name)
            if value is not None:
                try:
                    QueueRef.parse(value, "us-east-1")
                except StackConfigError as error:
                    problems.append(f"{name}: {error}")
        if self.gallery_mongo_uri and self.gallery_mongo_secret_arn:
            problems.append("give gallery_mongo_uri or gallery_mongo_secret_arn, not both")
        if self.huemn_mongo_uri and self.huemn_mongo_secret_arn:
            problems.append("give huemn_mongo_uri or huemn_mongo_secret_arn, not both")
        bad_events = [
            e
            for e in self.gallery_notification_events
            if not e.startswith(("s3:ObjectCreated:", "s3:ObjectRemoved:"))
        ]
        if bad_events:
            problems.append(f"gallery_notification_events: not an object event: {bad_events}")
        if self.router and self.ingress_queue and self.ingress_queue == self.indexing_queue:
            problems.append("ingress_queue must differ from indexing_queue (the Batch queue)")
        if not 1 <= self.router_batch_size <= 10:
            problems.append("router_batch_size: must be 1..10")
        if not 30 <= self.root_volume_gib <= 16384:
            problems.append("root_volume_gib: must be 30..16384 (the GPU AMI needs 30)")
        if not 30 <= self.container_stop_timeout_s < 120:
            problems.append(
                "container_stop_timeout_s: must be 30..119 (inside the Spot two-minute notice)"
            )
        if self.keep_images < 1:
            problems.append("keep_images must be at least 1")
        unknown = set(self.worker_settings) - set(ENV_NAMES.values())
        if unknown:
            problems.append(f"worker_settings: not a worker setting: {', '.join(sorted(unknown))}")
        if problems:
            raise StackConfigError("invalid stack config: " + "; ".join(problems))


LOCAL_MODEL_PACK = "facefleet-dev"


def local_stack_config(
    names: Names,
    aws: AwsTarget,
    *,
    gallery_mongo_uri: str = "mongodb://127.0.0.1:27017/gallery_images",
    huemn_mongo_uri: str = "mongodb://127.0.0.1:27017/huemn",
    **overrides: Any,
) -> StackConfig:
    """A config for the embedded moto stack: moto's Batch checks that subnets exist, so this uses
    the default VPC's subnets (creating a VPC and subnet when the region has none).

    Gallery and face-group buckets default to `{prefix}-gallery` and `{prefix}-face-groups`
    (created here when missing, as production's pre-exist). Several local stacks coexist on one
    server when their names come from `Names.for_prefix` (each its own ECR repository)."""
    ec2 = aws.client("ec2")
    vpcs = ec2.describe_vpcs(Filters=[{"Name": "is-default", "Values": ["true"]}])["Vpcs"]
    vpc_id = vpcs[0]["VpcId"] if vpcs else ec2.create_vpc(CidrBlock="10.77.0.0/16")["Vpc"]["VpcId"]
    subnets = ec2.describe_subnets(Filters=[{"Name": "vpc-id", "Values": [vpc_id]}])["Subnets"]
    if not subnets:
        subnets = [ec2.create_subnet(VpcId=vpc_id, CidrBlock="10.77.1.0/24")["Subnet"]]
    subnet_ids = tuple(sorted(s["SubnetId"] for s in subnets)[:2])
    values: dict[str, Any] = {
        "names": names,
        "vpc_id": vpc_id,
        "subnet_ids": subnet_ids,
        "gallery_bucket": f"{names.prefix}-gallery",
        "face_group_bucket": f"{names.prefix}-face-groups",
        "gallery_mongo_uri": gallery_mongo_uri,
        "huemn_mongo_uri": huemn_mongo_uri,
        "log_retention_days": 1,
        "retain_data": False,
        # The demo and the tests send a detection request per upload (the gallery backend's
        # path), so locally only deletions notify; a test that wants production's pair of
        # events passes both (tests/test_e2e_privacy.py).
        "gallery_notification_events": ("s3:ObjectRemoved:*",),
        "tags": {"project": "facefleet", "environment": "local"},
        # The dev pack of ../shared/models (production brings its own licensed pack).
        "worker_settings": {"MODEL_PACK": LOCAL_MODEL_PACK},
        # The local stack runs the router as a process (`facefleet.control.router_process`).
        "router_lambda": False,
    }
    values.update(overrides)
    config = StackConfig(**values)
    s3 = aws.client("s3")
    existing = {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
    for bucket in (config.gallery_bucket, config.face_group_bucket):
        if bucket not in existing:
            kwargs: dict[str, Any] = {"Bucket": bucket}
            if aws.region != "us-east-1":
                kwargs["CreateBucketConfiguration"] = {"LocationConstraint": aws.region}
            s3.create_bucket(**kwargs)
    return config


# Stack output key -> worker environment variable (the `Settings` contract).
OUTPUT_TO_ENV: dict[str, str] = {
    "IndexingQueueUrl": "QUEUE_URL",
    "GroupFaceQueueUrl": "GROUP_FACE_QUEUE_URL",
    "GalleryBucketName": "BUCKET_NAME",
    "FaceGroupBucketName": "FACE_GROUP_BUCKET_NAME",
    "LogGroupName": "LOG_GROUP",
    "ModelBucketName": "MODEL_BUCKET",
    "MetricsNamespace": "METRICS_NAMESPACE",
    "Region": "AWS_DEFAULT_REGION",
}


def worker_environment(outputs: Mapping[str, str]) -> dict[str, str]:
    """The worker env vars (QUEUE_URL, GROUP_FACE_QUEUE_URL, BUCKET_NAME, ...) from stack outputs.

    MongoDB URIs are not outputs (they are secrets): a local worker takes them from its own
    environment, a Batch job from the job definition's `secrets`."""
    missing = [key for key in OUTPUT_TO_ENV if key not in outputs]
    if missing:
        raise StackConfigError(f"stack outputs lack {', '.join(missing)}")
    return {env: outputs[key] for key, env in OUTPUT_TO_ENV.items()}
