"""The dispatch policy: what Batch jobs to submit for a given queue depth and set of active jobs.

A pure function over plain data, shared by the Prefect dispatch flow, the fallback Lambda and the
simulator, so all three make the same decision for the same inputs.

Rules, in order:
- nothing while the active jobs already cover the waiting messages (each active job, or array
  child, is credited with `job_capacity` messages), or within the cool-down after a submission;
- a small uncovered backlog gets one job on the primary queue (the secondary when primary is full);
- a large one gets an array job on the secondary queue sized min(uncovered // array_divisor,
  max_array_size), never fewer children than needed to be worth an array (2);
- the GroupFace queue gets grouping jobs the same way, up to `max_grouping_jobs` active;
- nothing ever takes a compute environment past its vCPU limit (each job counted at its job
  definition's vCPUs).

How many messages a job drains (`job_capacity`) comes from the instance throughput table
(`facefleet.common.instances.THROUGHPUT`: images/s per instance type and format mix, decode
measured, device rates anchored): a job on an iPhone-heavy gallery drains a tenth of what one on
JPEGs does, and sizing both alike would starve the first or over-launch for the second.

`job_request` turns a `Submission` into SubmitJob arguments (name, queue, definition, array
size), so the flow (through prefect-aws) and the Lambda (through boto3) submit identical jobs.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from facefleet.common.instances import (
    DEFAULT_MIX,
    INSTANCES,
    SECONDARY_INSTANCE_TYPES,
    images_per_s,
    parse_mix,
)
from facefleet.common.names import NAMES, Names

if TYPE_CHECKING:
    from mypy_boto3_batch.literals import JobStatusType

ACTIVE_STATES: tuple[JobStatusType, ...] = (
    "SUBMITTED",
    "PENDING",
    "RUNNABLE",
    "STARTING",
    "RUNNING",
)
DETECTION = "detection"
GROUPING = "grouping"


@dataclass(frozen=True)
class QueueDepth:
    visible: int
    in_flight: int = 0
    oldest_age_s: float = 0.0


@dataclass(frozen=True)
class ActiveJob:
    """A job (or array parent) in an active state; `size` counts its children (1 for a single)."""

    kind: str
    job_queue: str
    size: int = 1


def job_images_per_s(
    mix: str | dict[str, float] = DEFAULT_MIX,
    instance_types: Sequence[str] = SECONDARY_INSTANCE_TYPES,
) -> float:
    """Images/s one detection job sustains on the slowest type it may be placed on, for a
    format mix (a name or shares): the instance throughput table's figure."""
    shares = parse_mix(mix) if isinstance(mix, str) else mix
    return min(images_per_s(INSTANCES[t], shares) for t in instance_types)


@dataclass(frozen=True)
class PolicyParams:
    # Messages one detection job drains before it would idle out: images per job-minute (the
    # instance throughput table, default mix) times the minutes a job is expected to run for one
    # backlog. `for_mix` sizes for another mix.
    images_per_job_minute: float = 60.0 * job_images_per_s()
    job_minutes: float = 10.0
    small_backlog: int = 1000
    array_divisor: int = 1000
    max_array_size: int = 10
    grouping_messages_per_job: int = 2000
    max_grouping_jobs: int = 2
    cooldown_s: float = 60.0

    @property
    def job_capacity(self) -> int:
        return max(1, int(self.images_per_job_minute * self.job_minutes))

    @classmethod
    def for_mix(cls, mix: str | dict[str, float], **overrides: Any) -> PolicyParams:
        """Parameters whose job capacity is the throughput table's for `mix`."""
        return cls(**({"images_per_job_minute": 60.0 * job_images_per_s(mix)} | overrides))


@dataclass(frozen=True)
class DispatchInputs:
    indexing: QueueDepth
    group_face: QueueDepth
    active: tuple[ActiveJob, ...] = ()
    now_s: float = 0.0
    last_submission_s: float | None = None


@dataclass(frozen=True)
class Submission:
    kind: str
    job_queue: str
    job_definition: str
    array_size: int | None = None  # None: a single job

    @property
    def jobs(self) -> int:
        return self.array_size or 1


@dataclass(frozen=True)
class Decision:
    submissions: tuple[Submission, ...]
    reasons: tuple[str, ...] = field(default=())

    @property
    def jobs(self) -> int:
        return sum(s.jobs for s in self.submissions)


def _job_vcpus(names: Names, kind: str) -> int:
    return names.grouping_job.vcpus if kind == GROUPING else names.detection_job.vcpus


def _headroom_jobs(active: Sequence[ActiveJob], names: Names, primary: bool, kind: str) -> int:
    """How many more jobs of `kind` fit in the compute environment behind a queue."""
    queue = names.primary_queue if primary else names.secondary_queue
    environment = names.primary_environment if primary else names.secondary_environment
    on_queue = [job for job in active if job.job_queue == queue.name]
    used = sum(job.size * _job_vcpus(names, job.kind) for job in on_queue)
    return max(0, (environment.max_vcpus - used) // _job_vcpus(names, kind))


def _active_jobs(active: Sequence[ActiveJob], kind: str) -> int:
    return sum(job.size for job in active if job.kind == kind)


def _detection(
    inputs: DispatchInputs, params: PolicyParams, names: Names, active: list[ActiveJob]
) -> tuple[list[Submission], str]:
    backlog = inputs.indexing.visible
    covered = _active_jobs(active, DETECTION) * params.job_capacity
    uncovered = backlog - covered
    if backlog <= 0:
        return [], "indexing queue empty"
    if uncovered <= 0:
        return [], f"{backlog} waiting, covered by active jobs ({covered} capacity)"
    definition = names.detection_job.name
    needed = math.ceil(uncovered / params.job_capacity)
    if uncovered <= params.small_backlog or needed == 1:
        for primary in (True, False):
            if _headroom_jobs(active, names, primary, DETECTION) >= 1:
                queue = names.primary_queue if primary else names.secondary_queue
                return [Submission(DETECTION, queue.name, definition)], (
                    f"small backlog {uncovered}: one job on {queue.name}"
                )
        return [], f"backlog {uncovered} but both compute environments are at their vCPU limit"
    wanted = max(2, min(uncovered // params.array_divisor, params.max_array_size))
    size = min(wanted, needed, _headroom_jobs(active, names, False, DETECTION))
    secondary = names.secondary_queue.name
    if size <= 0:
        if _headroom_jobs(active, names, True, DETECTION) >= 1:
            primary_queue = names.primary_queue.name
            return [Submission(DETECTION, primary_queue, definition)], (
                f"backlog {uncovered} but {secondary} is full: one job on {primary_queue}"
            )
        return [], f"backlog {uncovered} but both compute environments are at their vCPU limit"
    if size == 1:
        return [Submission(DETECTION, secondary, definition)], f"backlog {uncovered}: 1 job fits"
    return [Submission(DETECTION, secondary, definition, size)], (
        f"large backlog {uncovered}: array of {size} on {secondary}"
    )


def _grouping(
    inputs: DispatchInputs, params: PolicyParams, names: Names, active: list[ActiveJob]
) -> tuple[list[Submission], str]:
    backlog = inputs.group_face.visible
    running = _active_jobs(active, GROUPING)
    uncovered = backlog - running * params.grouping_messages_per_job
    if backlog <= 0:
        return [], "GroupFace queue empty"
    if uncovered <= 0:
        return [], f"{backlog} grouping requests covered by {running} active jobs"
    needed = math.ceil(uncovered / params.grouping_messages_per_job)
    allowed = max(0, params.max_grouping_jobs - running)
    submissions: list[Submission] = []
    for _ in range(min(needed, allowed)):
        primary = _headroom_jobs(active, names, True, GROUPING) >= 1
        if not primary and _headroom_jobs(active, names, False, GROUPING) < 1:
            break
        queue = (names.primary_queue if primary else names.secondary_queue).name
        submissions.append(Submission(GROUPING, queue, names.grouping_job.name))
        active.append(ActiveJob(GROUPING, queue))
    return submissions, f"{uncovered} grouping requests uncovered: {len(submissions)} job(s)"


def decide(
    inputs: DispatchInputs, params: PolicyParams = PolicyParams(), names: Names = NAMES
) -> Decision:
    """The submissions for this tick, and why."""
    if inputs.last_submission_s is not None and (
        inputs.now_s - inputs.last_submission_s < params.cooldown_s
    ):
        since = inputs.now_s - inputs.last_submission_s
        return Decision((), (f"cool-down: last submission {since:.0f} s ago",))
    active = list(inputs.active)
    detection, why_detection = _detection(inputs, params, names, active)
    for submission in detection:
        active.append(ActiveJob(DETECTION, submission.job_queue, submission.jobs))
    grouping, why_grouping = _grouping(inputs, params, names, active)
    return Decision(tuple(detection + grouping), (why_detection, why_grouping))


def job_name(submission: Submission, now_s: float, sequence: int = 0) -> str:
    """A Batch job name (letters, digits, hyphens; at most 128) that says what and when."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(now_s))
    suffix = f"-array{submission.array_size}" if submission.array_size else ""
    return f"{submission.job_definition}-{stamp}-{sequence}{suffix}"[:128]


def job_request(submission: Submission, now_s: float, sequence: int = 0) -> dict[str, Any]:
    """The SubmitJob arguments for one submission (arrayProperties only for an array)."""
    request: dict[str, Any] = {
        "jobName": job_name(submission, now_s, sequence),
        "jobQueue": submission.job_queue,
        "jobDefinition": submission.job_definition,
    }
    if submission.array_size:
        request["arrayProperties"] = {"size": submission.array_size}
    return request
