"""Names and sizes of every AWS resource FaceFleet owns, in one place.

`Names` names queues, job definitions, compute environments and their sizes: infra renders them,
flows submit to them, dashboards chart them and workers read them, so a job definition the
dispatcher submits to can never be one the stack does not create. Built from a prefix by one
rule (`Names.for_prefix`). Standard library only: the Lambda handlers import it, and the Lambda
runtime provides boto3 and nothing else (facefleet.infra.lambda_package checks the closure).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from facefleet.common.instances import (
    INSTANCES,
    JOB_GPUS,
    JOB_MEMORY_MIB,
    JOB_VCPUS,
    PRIMARY_INSTANCE_TYPES,
    SECONDARY_INSTANCE_TYPES,
)


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


DEFAULT_PREFIX = "face-recognition"
DEFAULT_GROUPING_PREFIX = "face-grouping"


@dataclass(frozen=True)
class Names:
    """Names and sizes of every AWS resource FaceFleet owns; `prefix` lets two stacks coexist."""

    prefix: str = DEFAULT_PREFIX
    grouping_prefix: str = DEFAULT_GROUPING_PREFIX
    ecr_repository: str = DEFAULT_PREFIX  # `for_prefix`: the prefix
    stack_name: str = "facefleet"
    metrics_namespace: str = "FaceFleet"
    # vCPU caps of the two compute environments; the dispatch policy never submits past them.
    primary_max_vcpus: int = 16
    secondary_max_vcpus: int = 256

    @classmethod
    def for_prefix(cls, prefix: str | None = None, grouping_prefix: str | None = None) -> Names:
        """The one rule from a prefix to every name: a stack with its own prefix gets its own
        grouping prefix (`{prefix}-grouping`) and its own ECR repositories (repository names are
        account-wide, so two stacks sharing one would fight over its images and its deletion)."""
        if not prefix or prefix == DEFAULT_PREFIX:
            return cls(grouping_prefix=grouping_prefix or DEFAULT_GROUPING_PREFIX)
        return cls(
            prefix=prefix,
            grouping_prefix=grouping_prefix or f"{prefix}-grouping",
            ecr_repository=prefix,
        )

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Names:
        """The names a deployed process was given (FACEFLEET_PREFIX, FACEFLEET_GROUPING_PREFIX,
        set by the templates), by the same rule as `for_prefix`."""
        return cls.for_prefix(
            environ.get("FACEFLEET_PREFIX") or None,
            environ.get("FACEFLEET_GROUPING_PREFIX") or None,
        )

    @classmethod
    def from_params(cls, values: Mapping[str, Any] | None) -> Names:
        """A flow's or Lambda's `names` parameter: `for_prefix` for its prefixes, then any other
        field it names explicitly (a full `asdict(names)` round-trips)."""
        values = dict(values or {})
        base = cls.for_prefix(values.pop("prefix", None), values.pop("grouping_prefix", None))
        return replace(base, **values)

    @property
    def instance_type(self) -> str:
        """The primary environment's type: the one the simulator and price table model."""
        return PRIMARY_INSTANCE_TYPES[0]

    @property
    def instance_vcpus(self) -> int:
        return INSTANCES[self.instance_type].vcpus

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
