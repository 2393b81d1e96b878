"""One source of configuration: resource names for every layer, and the per-process settings.

`Names` is the single place that names queues, job definitions, compute environments and their
sizes: infra renders them, flows submit to them, dashboards chart them and workers read them, so a
job definition the dispatcher submits to can never be one the stack does not create.

`Settings` is built once per process from the environment (the existing service's variable names
are a contract) and validated at start-up: a missing or malformed value names the variable.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, TypeVar

from facefleet.common.aws import DEFAULT_REGION, AwsTarget
from facefleet.common.instances import (
    JOB_GPUS,
    JOB_MEMORY_MIB,
    JOB_VCPUS,
    PRIMARY_INSTANCE_TYPES,
    SECONDARY_INSTANCE_TYPES,
)

T = TypeVar("T")


class ConfigError(ValueError):
    """A setting is missing or malformed; the message names the environment variable."""


@dataclass(frozen=True)
class ComputeEnvironmentSpec:
    name: str
    allocation_strategy: str
    max_vcpus: int
    instance_types: tuple[str, ...] = PRIMARY_INSTANCE_TYPES
    min_vcpus: int = 0
    bid_percentage: int = 100


@dataclass(frozen=True)
class JobQueueSpec:
    name: str
    priority: int
    compute_environment: str


@dataclass(frozen=True)
class JobDefinitionSpec:
    name: str
    service_type: str
    command: tuple[str, ...]
    # Sized from the instance facts table (facefleet.common.instances): below what ECS registers.
    vcpus: int = JOB_VCPUS
    memory_mib: int = JOB_MEMORY_MIB
    gpus: int = JOB_GPUS
    timeout_s: int = 6 * 3600
    attempts: int = 5


# Exit code a worker uses when it stopped early (SIGTERM / Spot notice) with work released back to
# the queue: the job definitions' retry strategy retries on it, and on "Host EC2*" status reasons.
RETRYABLE_EXIT_CODE = 75

# The worker image's layout: the code's working directory and the model packs' root (one folder
# per pack, MODEL_DIR = MODEL_ROOT/MODEL_PACK). The local Batch executor mounts the local packs
# at the same root, as a volume would be.
CONTAINER_WORKDIR = "/opt/facefleet"
MODEL_ROOT = f"{CONTAINER_WORKDIR}/models"


@dataclass(frozen=True)
class Names:
    """Names and sizes of every AWS resource FaceFleet owns; `prefix` lets two stacks coexist."""

    prefix: str = "face-recognition"
    grouping_prefix: str = "face-grouping"
    ecr_repository: str = "face-recognition"
    stack_name: str = "facefleet"
    metrics_namespace: str = "FaceFleet"
    instance_type: str = "g4dn.xlarge"
    instance_vcpus: int = 4
    # vCPU caps of the two compute environments; the dispatch policy never submits past them.
    primary_max_vcpus: int = 16
    secondary_max_vcpus: int = 256

    @property
    def primary_environment(self) -> ComputeEnvironmentSpec:
        return ComputeEnvironmentSpec(
            f"{self.prefix}-primary", "SPOT_CAPACITY_OPTIMIZED", self.primary_max_vcpus
        )

    @property
    def secondary_environment(self) -> ComputeEnvironmentSpec:
        # Diversified across every GPU type the jobs fit (AWS Spot guidance: many pools).
        return ComputeEnvironmentSpec(
            f"{self.prefix}-secondary",
            "SPOT_PRICE_CAPACITY_OPTIMIZED",
            self.secondary_max_vcpus,
            instance_types=SECONDARY_INSTANCE_TYPES,
        )

    @property
    def primary_queue(self) -> JobQueueSpec:
        return JobQueueSpec(f"{self.prefix}-primary-queue", 100, self.primary_environment.name)

    @property
    def secondary_queue(self) -> JobQueueSpec:
        return JobQueueSpec(f"{self.prefix}-secondary-queue", 50, self.secondary_environment.name)

    @property
    def detection_job(self) -> JobDefinitionSpec:
        return JobDefinitionSpec(
            f"{self.prefix}-job", "detection", ("python3", "run_detection_service.py")
        )

    @property
    def grouping_job(self) -> JobDefinitionSpec:
        return JobDefinitionSpec(
            f"{self.grouping_prefix}-job",
            "grouping",
            ("python3", "run_grouping_service.py"),
        )

    @property
    def compute_environments(self) -> tuple[ComputeEnvironmentSpec, ...]:
        return (self.primary_environment, self.secondary_environment)

    @property
    def job_queues(self) -> tuple[JobQueueSpec, ...]:
        return (self.primary_queue, self.secondary_queue)

    @property
    def job_definitions(self) -> tuple[JobDefinitionSpec, ...]:
        return (self.detection_job, self.grouping_job)

    # Queues created by the stack (production may reference existing ones by URL instead).
    @property
    def indexing_queue(self) -> str:
        return f"{self.prefix}-indexing"

    @property
    def group_face_queue(self) -> str:
        return f"{self.prefix}-group-face"

    def dead_letter_queue(self, queue_name: str) -> str:
        return f"{queue_name}-dlq"

    @property
    def model_bucket(self) -> str:
        return f"{self.prefix}-models"

    @property
    def log_group(self) -> str:
        return f"/aws/batch/{self.prefix}"

    @property
    def alerts_topic(self) -> str:
        return f"{self.prefix}-alerts"

    @property
    def dashboard(self) -> str:
        return f"{self.prefix}-pipeline"

    # EventBridge rules whose AWS/Events TriggeredRules metric (dimension RuleName) the alarms use.
    @property
    def job_failed_rule(self) -> str:
        return f"{self.prefix}-batch-job-failed"

    @property
    def spot_interruption_rule(self) -> str:
        return f"{self.prefix}-spot-interruption"

    @property
    def cutover_parameter_prefix(self) -> str:
        return f"/facefleet/{self.prefix}/cutover"

    # Secrets Manager secrets holding the MongoDB URIs; job definitions inject them as env vars.
    @property
    def gallery_mongo_secret(self) -> str:
        return f"facefleet/{self.prefix}/gallery-images-mongo-uri"

    @property
    def huemn_mongo_secret(self) -> str:
        return f"facefleet/{self.prefix}/huemn-mongo-uri"

    # The fallback dispatcher: a Lambda running the dispatch policy on an EventBridge schedule.
    @property
    def dispatch_function(self) -> str:
        return f"{self.prefix}-dispatch"

    @property
    def dispatch_schedule_rule(self) -> str:
        return f"{self.prefix}-dispatch-schedule"

    # The ECS service's own queue during the cutover: the router forwards the users not (yet)
    # on Batch here, and the ECS service's QUEUE_URL moves here at the cutover's start.
    @property
    def ecs_indexing_queue(self) -> str:
        return f"{self.prefix}-ecs-indexing"

    # The queue producers write to (in production the existing service's indexing queue, by
    # URL); the router consumes it. A stack without one creates this name.
    @property
    def ingress_queue(self) -> str:
        return f"{self.prefix}-ingress"

    @property
    def router_function(self) -> str:
        return f"{self.prefix}-router"

    # The flows' runtime: their image (Prefect, prefect-aws, the flows; no ML stack), the ECS
    # cluster the Prefect worker and the flow runs use, their log group, the work pool.
    @property
    def flows_repository(self) -> str:
        return f"{self.ecr_repository}-flows"

    @property
    def flows_cluster(self) -> str:
        return f"{self.prefix}-flows"

    @property
    def flows_log_group(self) -> str:
        return f"/ecs/{self.prefix}-flows"

    @property
    def work_pool(self) -> str:
        return f"{self.prefix}-ecs"

    # Dispatch state (last submission time for the cool-down), shared by the flow and the Lambda.
    @property
    def dispatch_parameter_prefix(self) -> str:
        return f"/facefleet/{self.prefix}/dispatch"

    # One dispatch tick at a time (flow or Lambda): a DynamoDB lease (facefleet.control.lease).
    @property
    def dispatch_lease_table(self) -> str:
        return f"{self.prefix}-dispatch-lease"


NAMES = Names()


def _text(value: str) -> str:
    return value


def _int(value: str) -> int:
    return int(value.strip())


def _float(value: str) -> float:
    return float(value.strip())


def _bool(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError(f"expected a boolean, got {value!r}")


def _env(
    name: str,
    parse: Callable[[str], T],
    default: T | None = None,
    *,
    check: Callable[[T], bool] | None = None,
    rule: str = "",
) -> Any:
    """Describe one setting: its environment variable, parser, default and an optional check."""
    return field(
        default=default,
        metadata={"env": name, "parse": parse, "check": check, "rule": rule},
    )


def _positive(value: float) -> bool:
    return value > 0


def _unit(value: float) -> bool:
    return 0.0 <= value <= 1.0


SERVICE_TYPES = ("detection", "grouping")
# FACE_RECOGNITION_CONSENT: opt_out indexes every user who has not switched face recognition off
# (the gallery's behaviour so far); opt_in indexes a user's photos only after `face_recognition:
# true` in the gallery's `users` document (`facefleet people recognition --user U on`).
CONSENT_MODES = ("opt_out", "opt_in")
# Illinois BIPA 740 ILCS 14/15(a): biometric identifiers are destroyed at the latest 3 years after
# the individual's last interaction; a longer setting is a configuration error.
BIPA_MAX_DAYS = 3 * 365
# The longest an indexing message can live (README "Retention schedule"): ingress queue and its
# DLQ 14 days, one redrive 14 more, then the indexing queue and its DLQ 14 and one redrive 14.
MESSAGE_LIFETIME_DAYS = 56


@dataclass(frozen=True)
class Settings:
    """Per-process settings. Build with `Settings.from_env()`; never read os.environ elsewhere."""

    aws_region: str = _env("AWS_DEFAULT_REGION", _text, DEFAULT_REGION)
    service_type: str = _env(
        "SERVICE_TYPE",
        _text,
        "detection",
        check=lambda v: v in SERVICE_TYPES,
        rule=f"one of {', '.join(SERVICE_TYPES)}",
    )
    bucket_name: str | None = _env("BUCKET_NAME", _text)
    queue_url: str | None = _env("QUEUE_URL", _text)
    group_face_queue_url: str | None = _env("GROUP_FACE_QUEUE_URL", _text)
    gallery_images_mongo_uri: str | None = _env("GALLERY_IMAGES_MONGO_URI", _text)
    huemn_mongo_uri: str | None = _env("HUEMN_MONGO_URI", _text)
    face_group_bucket_name: str | None = _env("FACE_GROUP_BUCKET_NAME", _text)
    log_group: str | None = _env("LOG_GROUP", _text)
    message_visibility_timeout: int = _env(
        "MESSAGE_VISIBILITY_TIMEOUT",
        _int,
        1800,
        check=lambda v: 0 < v <= 43200,
        rule="between 1 and 43200 seconds",
    )
    batch_size: int = _env(
        "BATCH_SIZE", _int, 5, check=lambda v: 1 <= v <= 10, rule="between 1 and 10 (SQS limit)"
    )
    max_face_workers: int = _env(
        "MAX_FACE_WORKERS", _int, 4, check=lambda v: v >= 1, rule="at least 1"
    )
    # New in FaceFleet.
    aws_endpoint_url: str | None = _env("AWS_ENDPOINT_URL", _text)
    model_dir: str | None = _env("MODEL_DIR", _text)
    model_bucket: str | None = _env("MODEL_BUCKET", _text)
    model_pack: str = _env("MODEL_PACK", _text, "buffalo_l")
    detection_threshold: float = _env(
        "DETECTION_THRESHOLD", _float, 0.5, check=_unit, rule="between 0 and 1"
    )
    detection_size: int = _env(
        "DETECTION_SIZE",
        _int,
        640,
        check=lambda v: v >= 160 and v % 32 == 0,
        rule="a multiple of 32, at least 160",
    )
    rec_batch_size: int = _env(
        "REC_BATCH_SIZE",
        _int,
        0,
        check=lambda v: v >= 0,
        rule="0 (the execution provider's measured default) or a positive batch size",
    )
    max_image_pixels: int = _env(
        "MAX_IMAGE_PIXELS", _int, 50_000_000, check=_positive, rule="positive"
    )
    max_image_bytes: int = _env(
        "MAX_IMAGE_BYTES", _int, 50 * 1024 * 1024, check=_positive, rule="positive"
    )
    idle_exit_seconds: float = _env(
        "IDLE_EXIT_SECONDS", _float, 60.0, check=lambda v: v >= 0, rule="not negative"
    )
    poll_wait_seconds: int = _env(
        "POLL_WAIT_SECONDS", _int, 20, check=lambda v: 0 <= v <= 20, rule="between 0 and 20"
    )
    shutdown_deadline_seconds: float = _env(
        "SHUTDOWN_DEADLINE_SECONDS", _float, 90.0, check=_positive, rule="positive"
    )
    # The Spot two-minute notice, read from instance metadata (facefleet.worker.spot).
    spot_notice_poll_seconds: float = _env(
        "SPOT_NOTICE_POLL_SECONDS",
        _float,
        5.0,
        check=lambda v: 0 <= v <= 30,
        rule="0 (off) to 30 seconds (the notice comes 120 s ahead)",
    )
    instance_metadata_endpoint: str = _env(
        "INSTANCE_METADATA_ENDPOINT", _text, "http://169.254.169.254"
    )
    grouping_distance: float = _env(
        "GROUPING_DISTANCE",
        _float,
        0.0,
        check=lambda v: 0 <= v <= 2,
        rule="a cosine distance between 0 and 2 (0 = the algorithm's default)",
    )
    # Privacy: consent and retention (facefleet.worker.privacy.consent / .retention).
    face_recognition_consent: str = _env(
        "FACE_RECOGNITION_CONSENT",
        lambda v: v.strip().lower(),
        "opt_out",
        check=lambda v: v in CONSENT_MODES,
        rule=f"one of {', '.join(CONSENT_MODES)}",
    )
    retention_inactive_days: int = _env(
        "RETENTION_INACTIVE_DAYS",
        _int,
        730,
        check=lambda v: 1 <= v <= BIPA_MAX_DAYS,
        rule=f"between 1 and {BIPA_MAX_DAYS} days (BIPA: at most 3 years after the last "
        "interaction)",
    )
    tombstone_retention_days: int = _env(
        "TOMBSTONE_RETENTION_DAYS",
        _int,
        90,
        check=lambda v: MESSAGE_LIFETIME_DAYS < v <= BIPA_MAX_DAYS,
        rule=f"more than {MESSAGE_LIFETIME_DAYS} days (the longest a message can live) and at "
        f"most {BIPA_MAX_DAYS}",
    )
    retention_run_hours: float = _env(
        "RETENTION_RUN_HOURS",
        _float,
        24.0,
        check=lambda v: 0 <= v <= 24 * 30,
        rule="0 (no purge when a grouping worker starts) to 720 hours",
    )
    metrics_namespace: str = _env("METRICS_NAMESPACE", _text, NAMES.metrics_namespace)
    metrics_to_cloudwatch: bool = _env("METRICS_TO_CLOUDWATCH", _bool, False)
    batch_job_array_index: int | None = _env("AWS_BATCH_JOB_ARRAY_INDEX", _int)
    batch_job_attempt: int | None = _env("AWS_BATCH_JOB_ATTEMPT", _int)
    batch_job_id: str | None = _env("AWS_BATCH_JOB_ID", _text)

    @property
    def aws(self) -> AwsTarget:
        """The AWS target every client of this process uses."""
        return AwsTarget(self.aws_region, self.aws_endpoint_url)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read every setting; raise one ConfigError listing each bad variable by name."""
        source = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        problems: list[str] = []
        for f in fields(cls):
            meta = f.metadata
            raw = source.get(meta["env"])
            if raw is None or raw == "":
                values[f.name] = f.default
                continue
            try:
                value = meta["parse"](raw)
            except ValueError as error:
                problems.append(f"{meta['env']}={raw!r}: {error}")
                continue
            if meta["check"] is not None and not meta["check"](value):
                problems.append(f"{meta['env']}={raw!r}: must be {meta['rule']}")
                continue
            values[f.name] = value
        if problems:
            raise ConfigError("invalid settings: " + "; ".join(problems))
        return cls(**values)

    def require(self, *attributes: str) -> None:
        """Stop at start-up when a value this process needs is missing, naming the variables."""
        missing = [
            ENV_NAMES[attribute] for attribute in attributes if getattr(self, attribute) is None
        ]
        if missing:
            raise ConfigError("missing required settings: " + ", ".join(missing))

    def to_env(self) -> dict[str, str]:
        """The settings as environment variables (for job definitions and local child processes)."""
        env: dict[str, str] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None:
                continue
            env[f.metadata["env"]] = str(value).lower() if isinstance(value, bool) else str(value)
        return env


ENV_NAMES: dict[str, str] = {f.name: f.metadata["env"] for f in fields(Settings)}

REQUIRED_BY_SERVICE: dict[str, tuple[str, ...]] = {
    "detection": (
        "queue_url",
        "group_face_queue_url",
        "gallery_images_mongo_uri",
        "face_group_bucket_name",
    ),
    "grouping": (
        "group_face_queue_url",
        "gallery_images_mongo_uri",
        "huemn_mongo_uri",
        "face_group_bucket_name",
    ),
}


def load_service_settings(service_type: str, environ: Mapping[str, str] | None = None) -> Settings:
    """Settings for a worker process, checked for everything that service needs."""
    settings = Settings.from_env(environ)
    settings.require(*REQUIRED_BY_SERVICE[service_type])
    if settings.model_dir is None and settings.model_bucket is None and service_type == "detection":
        raise ConfigError("missing required settings: one of MODEL_DIR, MODEL_BUCKET")
    return settings
