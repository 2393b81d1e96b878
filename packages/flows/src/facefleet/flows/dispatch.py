"""The dispatch flow: the one dispatch tick (`facefleet.control.dispatch_tick`: lease, observe,
`policy.decide`, submit through the flow's Batch client, cool-down state in SSM, shared with the
fallback Lambda), then what only the flow reports: the decision logged with its inputs, a
markdown artifact, and the JobsSubmitted / DispatchBacklog metrics.

Modes: `aws` submits and lets Batch run the jobs. `local` (the embedded default) also submits to
the moto server, for the record, and hands each job to the `LocalExecutor`, whose running
processes count as active jobs on the next tick.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from facefleet.common.aws import AwsTarget
from facefleet.common.config import Settings
from facefleet.common.metrics import Metric, MetricsEmitter
from facefleet.common.names import Names
from facefleet.control import dispatch_tick, observe
from facefleet.control.policy import Decision, DispatchInputs, PolicyParams, Submission

if TYPE_CHECKING:
    from facefleet.embedded.batch import LocalExecutor

Mode = Literal["local", "aws"]
METRICS_SERVICE = "dispatch"  # the Service dimension the dashboards chart dispatch under


def names_from(values: Mapping[str, Any] | None) -> Names:
    """`Names` from flow parameters (a deployment passes plain JSON)."""
    return Names.from_params(values)


def local_executor(state_dir: str | None) -> LocalExecutor:
    """`mode: local` only: the embedded stack's Batch executor (the flows package's `local`
    extra), imported here so a production install of the flows needs no local stack."""
    from facefleet.embedded.batch import LocalExecutor

    return LocalExecutor(state_dir)


def job_runtime(
    names: Names, submission: Submission, aws: AwsTarget
) -> tuple[tuple[str, ...], dict[str, str], int]:
    """Command, environment and attempts of the job definition as the stack registered it
    (latest active revision), falling back to the `Names` spec when it is not registered."""
    spec = names.grouping_job if submission.kind == "grouping" else names.detection_job
    batch = aws.client("batch")
    found = batch.describe_job_definitions(
        jobDefinitionName=submission.job_definition, status="ACTIVE"
    ).get("jobDefinitions", [])
    if not found:
        return spec.command, {"SERVICE_TYPE": spec.service_type}, spec.attempts
    latest = max(found, key=lambda d: d.get("revision", 0))
    container = latest.get("containerProperties", {})
    command = tuple(container.get("command") or spec.command)
    environment = {e["name"]: e["value"] for e in container.get("environment", [])}
    environment.setdefault("SERVICE_TYPE", spec.service_type)
    attempts = int(latest.get("retryStrategy", {}).get("attempts", spec.attempts))
    return command, environment, attempts


def decision_markdown(inputs: DispatchInputs, decision: Decision, job_ids: list[str]) -> str:
    """The artifact: inputs, then one row per submission, then the reasons."""
    lines = [
        "## Dispatch decision",
        "",
        "| queue | visible | in flight | oldest (s) |",
        "|---|---|---|---|",
        f"| indexing | {inputs.indexing.visible} | {inputs.indexing.in_flight} "
        f"| {inputs.indexing.oldest_age_s:.0f} |",
        f"| GroupFace | {inputs.group_face.visible} | {inputs.group_face.in_flight} "
        f"| {inputs.group_face.oldest_age_s:.0f} |",
        "",
        f"Active jobs: {sum(j.size for j in inputs.active)} "
        f"({', '.join(f'{j.kind}@{j.job_queue}x{j.size}' for j in inputs.active) or 'none'})",
        "",
        "| kind | job queue | job definition | array size | job id |",
        "|---|---|---|---|---|",
    ]
    for submission, job_id in zip(decision.submissions, job_ids, strict=False):
        lines.append(
            f"| {submission.kind} | {submission.job_queue} | {submission.job_definition} "
            f"| {submission.array_size or '-'} | {job_id} |"
        )
    if not decision.submissions:
        lines.append("| - | - | - | - | nothing submitted |")
    lines += ["", "Reasons:", *[f"- {reason}" for reason in decision.reasons]]
    return "\n".join(lines)


def artifact_key(names: Names) -> str:
    """Artifact keys allow lowercase letters, digits and dashes only."""
    return re.sub(r"[^a-z0-9-]+", "-", f"dispatch-{names.prefix}".lower())


@flow(name="dispatch", log_prints=True)
def dispatch(
    names: dict[str, Any] | None = None,
    mode: Mode = "local",
    policy: dict[str, Any] | None = None,
    region: str | None = None,
    endpoint_url: str | None = None,
    local_batch_dir: str | None = None,
    queue_url: str | None = None,
    group_face_queue_url: str | None = None,
) -> dict[str, Any]:
    """One dispatch tick. `names`: `Names` fields (default: the production names); `policy`:
    `PolicyParams` overrides; `mode`: `local` also runs the jobs as local processes.
    `queue_url` / `group_face_queue_url`: the queues (default QUEUE_URL / GROUP_FACE_QUEUE_URL,
    else the stack's outputs; never a name built from the prefix). The tick runs only while it
    holds the dispatch lease it shares with the fallback Lambda."""
    logger = get_run_logger()
    the_names = names_from(names)
    aws = AwsTarget.from_env(region=region, endpoint_url=endpoint_url)
    settings = Settings.from_env()
    executor = local_executor(local_batch_dir) if mode == "local" else None
    done = dispatch_tick.tick(
        the_names,
        PolicyParams(**dict(policy or {})),
        aws,
        aws.client("batch"),
        queue_url=queue_url or settings.queue_url,
        group_face_queue_url=group_face_queue_url or settings.group_face_queue_url,
        extra_active=executor.active_jobs if executor else None,
        on_submitted=_local_start(executor, the_names, aws) if executor else None,
    )
    if done.inputs is None or done.decision is None:
        logger.info("dispatch tick skipped: %s", done.skipped)
        return done.as_dict()
    inputs, decision = done.inputs, done.decision
    logger.info(
        "dispatch decision: %d job(s) in %d submission(s) (%s); inputs %s; tick %.2f s",
        decision.jobs,
        len(decision.submissions),
        "; ".join(decision.reasons),
        observe.describe_inputs(inputs),
        done.duration_s,
    )
    create_markdown_artifact(
        key=artifact_key(the_names),
        markdown=decision_markdown(inputs, decision, list(done.job_ids)),
        description=f"dispatch decision for {the_names.prefix}",
    )
    MetricsEmitter(
        settings.metrics_namespace,
        {"Service": METRICS_SERVICE},
        cloudwatch=aws if settings.metrics_to_cloudwatch else None,
    ).emit(
        {Metric.JOBS_SUBMITTED: decision.jobs, Metric.DISPATCH_BACKLOG: inputs.indexing.visible},
        prefix=the_names.prefix,
        group_face_backlog=inputs.group_face.visible,
    )
    return done.as_dict()


def _local_start(
    executor: LocalExecutor, names: Names, aws: AwsTarget
) -> dispatch_tick.OnSubmitted:
    """`mode: local`: each submitted job also runs as local processes (moto runs none)."""
    from facefleet.embedded.batch import JobSpec

    def start(submission: Submission, request: dict[str, Any], job_id: str) -> None:
        command, environment, attempts = job_runtime(names, submission, aws)
        pids = executor.start(
            JobSpec(
                job_id=job_id,
                job_name=request["jobName"],
                kind=submission.kind,
                job_queue=submission.job_queue,
                command=command,
                environment=environment,
                array_size=submission.array_size,
                attempts=attempts,
                workdir=os.environ.get("FACEFLEET_WORKDIR", os.getcwd()),
            )
        )
        get_run_logger().info("local executor started %s as pid(s) %s", request["jobName"], pids)

    return start
