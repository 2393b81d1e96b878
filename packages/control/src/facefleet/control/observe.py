"""What the dispatch policy needs to know, read from AWS: thin boto3 adapters, no Prefect.

- Queue depth from SQS attributes: visible and in-flight messages.
- Age of the oldest message: SQS has no such queue attribute; CloudWatch publishes
  `AWS/SQS ApproximateAgeOfOldestMessage` per queue, read here as the latest Maximum. The moto
  server publishes no AWS/SQS metrics, so locally the age falls back to how long the queue has
  been continuously non-empty as seen by the dispatcher (`backlog_since_s`): an upper bound, not
  a measurement, and 0 when the dispatcher has not seen a backlog yet.
- Active jobs per job queue from ListJobs in SUBMITTED/PENDING/RUNNABLE/STARTING/RUNNING; an
  array parent counts its children that are still active (DescribeJobs' statusSummary), and any
  children ListJobs returns as separate rows (moto does) are folded into their parent.
- The dispatch state (last submission time, backlog start) in SSM Parameter Store, so the flow
  and the fallback Lambda share one cool-down.

Imported by the Lambda handler: boto3, facefleet.common and facefleet.control.policy only.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

from botocore.exceptions import ClientError

from facefleet.common.aws import AwsTarget
from facefleet.common.names import Names
from facefleet.control import parameters
from facefleet.control.policy import (
    ACTIVE_STATES,
    DETECTION,
    GROUPING,
    ActiveJob,
    DispatchInputs,
    QueueDepth,
)

log = logging.getLogger(__name__)

AGE_METRIC = "ApproximateAgeOfOldestMessage"


@dataclass(frozen=True)
class QueueUrls:
    indexing: str
    group_face: str


class QueueUrlsMissing(LookupError):
    """No queue URL was given, set (QUEUE_URL / GROUP_FACE_QUEUE_URL) or in the stack outputs."""


def stack_outputs(names: Names, aws: AwsTarget) -> dict[str, str] | None:
    """The deployed stack's outputs, or None when no such stack exists."""
    try:
        stacks = aws.client("cloudformation").describe_stacks(StackName=names.stack_name)["Stacks"]
    except ClientError as error:
        if "does not exist" not in str(error):
            raise
        return None
    return {o["OutputKey"]: o["OutputValue"] for o in stacks[0].get("Outputs", [])}


def stack_queue_url(names: Names, aws: AwsTarget, output_key: str, queue_name: str) -> str:
    """A queue URL the stack's outputs name (production's queues carry other names, in other
    accounts). Only with no stack at all, as in a test harness of bare queues, is it looked up
    by the `Names` queue name."""
    outputs = stack_outputs(names, aws)
    if outputs is None:
        return str(aws.client("sqs").get_queue_url(QueueName=queue_name)["QueueUrl"])
    if output_key not in outputs:
        raise QueueUrlsMissing(f"stack {names.stack_name} has no output {output_key}")
    return outputs[output_key]


def dead_letter_url(queue_url: str, aws: AwsTarget) -> str | None:
    """The dead-letter queue of a queue, from its RedrivePolicy (wherever it lives)."""
    sqs = aws.client("sqs")
    attributes = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["RedrivePolicy"])
    policy = attributes.get("Attributes", {}).get("RedrivePolicy")
    if not policy:
        return None
    arn = str(json.loads(policy)["deadLetterTargetArn"])
    _, _, _, _, account, name = arn.split(":", 5)
    found = sqs.get_queue_url(QueueName=name, QueueOwnerAWSAccountId=account)
    return str(found["QueueUrl"])


def queue_urls(
    names: Names,
    aws: AwsTarget,
    *,
    indexing: str | None = None,
    group_face: str | None = None,
) -> QueueUrls:
    """The indexing and GroupFace queue URLs: as given (parameters, or QUEUE_URL /
    GROUP_FACE_QUEUE_URL from `Settings`), else the stack's outputs. Never rebuilt from the name
    prefix: production's queues are the existing service's, under other names and in other
    accounts."""
    if indexing and group_face:
        return QueueUrls(indexing=indexing, group_face=group_face)
    outputs = stack_outputs(names, aws) or {}
    indexing = indexing or outputs.get("IndexingQueueUrl")
    group_face = group_face or outputs.get("GroupFaceQueueUrl")
    if not indexing or not group_face:
        raise QueueUrlsMissing(
            "queue URLs unknown: set QUEUE_URL and GROUP_FACE_QUEUE_URL (or pass them), or "
            f"deploy stack {names.stack_name} whose outputs IndexingQueueUrl/GroupFaceQueueUrl "
            "name them"
        )
    return QueueUrls(indexing=indexing, group_face=group_face)


def oldest_message_age(queue_name: str, aws: AwsTarget, window_s: int = 600) -> float | None:
    """The latest `ApproximateAgeOfOldestMessage` CloudWatch holds for a queue; None if none."""
    cloudwatch = aws.client("cloudwatch")
    end = dt.datetime.now(dt.UTC)
    response = cloudwatch.get_metric_statistics(
        Namespace="AWS/SQS",
        MetricName=AGE_METRIC,
        Dimensions=[{"Name": "QueueName", "Value": queue_name}],
        StartTime=end - dt.timedelta(seconds=window_s),
        EndTime=end,
        Period=60,
        Statistics=["Maximum"],
    )
    points = sorted(response.get("Datapoints", []), key=lambda p: p["Timestamp"])
    return float(points[-1]["Maximum"]) if points else None


def queue_depth(
    queue_url: str,
    aws: AwsTarget,
    *,
    now_s: float | None = None,
    backlog_since_s: float | None = None,
) -> QueueDepth:
    """Visible and in-flight messages, and the age of the oldest (see the module docstring)."""
    sqs = aws.client("sqs")
    attributes = sqs.get_queue_attributes(
        QueueUrl=queue_url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    visible = int(attributes.get("ApproximateNumberOfMessages", 0))
    in_flight = int(attributes.get("ApproximateNumberOfMessagesNotVisible", 0))
    # AWS/SQS metrics live in the queue owner's account: for an existing queue in another
    # account there are none here and the age falls back to the dispatcher's own record.
    age = oldest_message_age(queue_url.rstrip("/").rsplit("/", 1)[-1], aws)
    if age is None:
        age = 0.0
        if visible > 0 and backlog_since_s is not None and now_s is not None:
            age = max(0.0, now_s - backlog_since_s)
    return QueueDepth(visible=visible, in_flight=in_flight, oldest_age_s=age)


def _kind_of(job_definition: str, names: Names) -> str:
    """detection or grouping, from a job definition name or ARN (".../name:revision")."""
    name = job_definition.rsplit("/", 1)[-1].split(":", 1)[0]
    return GROUPING if name == names.grouping_job.name else DETECTION


def _active_children(batch: Any, parent_id: str) -> int:
    jobs = batch.describe_jobs(jobs=[parent_id]).get("jobs", [])
    if not jobs:
        return 0
    summary = jobs[0].get("arrayProperties", {}).get("statusSummary", {})
    return sum(int(summary.get(state, 0)) for state in ACTIVE_STATES)


def batch_active_jobs(names: Names, aws: AwsTarget) -> tuple[ActiveJob, ...]:
    """Active jobs on the stack's job queues, with array children counted."""
    batch = aws.client("batch")
    active: list[ActiveJob] = []
    for queue in names.job_queues:
        parents: dict[str, tuple[str, int]] = {}  # array parent id -> (kind, active children)
        loose_children: dict[str, tuple[str, int]] = {}
        singles: list[str] = []
        for status in ACTIVE_STATES:
            paginator = batch.get_paginator("list_jobs")
            for page in paginator.paginate(jobQueue=queue.name, jobStatus=status):
                for summary in page.get("jobSummaryList", []):
                    kind = _kind_of(summary.get("jobDefinition", ""), names)
                    job_id = summary["jobId"]
                    array = summary.get("arrayProperties") or {}
                    if ":" in job_id:  # an array child listed on its own
                        parent = job_id.split(":", 1)[0]
                        count = loose_children.get(parent, (kind, 0))[1]
                        loose_children[parent] = (kind, count + 1)
                    elif "size" in array and "index" not in array:
                        parents[job_id] = (kind, _active_children(batch, job_id))
                    else:
                        singles.append(kind)
        for kind in singles:
            active.append(ActiveJob(kind, queue.name))
        for parent, (kind, count) in parents.items():
            count = max(count, loose_children.pop(parent, (kind, 0))[1])
            if count:
                active.append(ActiveJob(kind, queue.name, count))
        for kind, count in loose_children.values():
            active.append(ActiveJob(kind, queue.name, count))
    return tuple(active)


@dataclass(frozen=True)
class DispatchState:
    """What the dispatcher remembers between ticks (one SSM parameter, JSON)."""

    last_submission_s: float | None = None
    backlog_since_s: float | None = None

    def after(self, now_s: float, backlog: int, submitted: bool) -> DispatchState:
        since = self.backlog_since_s if self.backlog_since_s is not None else now_s
        return DispatchState(
            last_submission_s=now_s if submitted else self.last_submission_s,
            backlog_since_s=since if backlog > 0 else None,
        )


def state_parameter(names: Names) -> str:
    return f"{names.dispatch_parameter_prefix}/state"


def load_state(names: Names, aws: AwsTarget) -> DispatchState:
    data = parameters.read_json(aws, state_parameter(names))
    if data is None:
        return DispatchState()
    return DispatchState(
        last_submission_s=data.get("last_submission_s"),
        backlog_since_s=data.get("backlog_since_s"),
    )


def save_state(names: Names, state: DispatchState, aws: AwsTarget) -> None:
    parameters.write_json(aws, state_parameter(names), asdict(state))


def observe(
    names: Names,
    aws: AwsTarget,
    *,
    now_s: float,
    state: DispatchState = DispatchState(),
    urls: QueueUrls | None = None,
    extra_active: Iterable[ActiveJob] = (),
) -> DispatchInputs:
    """Everything `policy.decide` needs, read now. `extra_active`: jobs only a local executor
    knows are running (moto marks Batch jobs SUCCEEDED at once)."""
    urls = urls or queue_urls(names, aws)
    # The remembered backlog start belongs to the indexing queue (the one dispatch scales for).
    indexing = queue_depth(urls.indexing, aws, now_s=now_s, backlog_since_s=state.backlog_since_s)
    group_face = queue_depth(urls.group_face, aws)
    active = batch_active_jobs(names, aws) + tuple(extra_active)
    return DispatchInputs(
        indexing=indexing,
        group_face=group_face,
        active=active,
        now_s=now_s,
        last_submission_s=state.last_submission_s,
    )


def describe_inputs(inputs: DispatchInputs) -> dict[str, Any]:
    """The inputs as plain data, for logs and artifacts."""
    return {
        "indexing": asdict(inputs.indexing),
        "group_face": asdict(inputs.group_face),
        "active": [asdict(job) for job in inputs.active],
        "now_s": inputs.now_s,
        "last_submission_s": inputs.last_submission_s,
    }
