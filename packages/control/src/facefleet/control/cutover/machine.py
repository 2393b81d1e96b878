"""Gradual cutover from the ECS service to Batch: a pure state machine and the flows around it.

Stages (percent of indexing traffic the router sends to Batch): 0 -> 10 -> 25 -> 50 -> 75 -> 100.
Each scheduled run of the `cutover` flow reads health from CloudWatch (and the dead-letter queue)
for the current stage and calls `evaluate`:

- rollback (to 0 %, status rolled_back, SNS alert, waiting Batch messages returned to the ECS
  queue) as soon as any gate is breached, soak or not: Batch job failure rate, p95 processing
  time per image against the ECS baseline, new dead letters, age of the oldest message, Spot
  interruptions;
- hold while the stage's soak time has not elapsed, while a gate is in its warning band, or when
  there is no evidence yet (no Batch job ran in the stage);
- promote to the next stage after the soak with every gate green;
- complete once 100 % has held for the final soak: only then may ECS be scaled down (the flow
  scales the named ECS service to 0 if given one; it never does so earlier).

A rolled-back or paused cutover stays where it is until `resume`; a resumed rollback starts again
at 10 %. Manual flows: `cutover-rollback`, `cutover-pause`, `cutover-resume`.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

from prefect import flow, get_run_logger

from facefleet.common.aws import client
from facefleet.common.config import Names, Settings
from facefleet.common.metrics import Metric, MetricsEmitter
from facefleet.flows import observe, router

STAGES: tuple[int, ...] = (0, 10, 25, 50, 75, 100)
RUNNING, PAUSED, ROLLED_BACK, COMPLETE = "running", "paused", "rolled_back", "complete"
Action = Literal["start", "promote", "hold", "rollback", "complete"]
METRICS_SERVICE = "cutover"
HOUR = 3600.0

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CutoverState:
    weight: int = 0
    status: str = RUNNING
    entered_at_s: float = 0.0
    dead_letters_at_entry: int = 0
    reason: str = ""

    @property
    def stage(self) -> int:
        return STAGES.index(self.weight)


@dataclass(frozen=True)
class Health:
    """What the gates look at, for the current stage's window; None: no data."""

    finished_jobs: int = 0
    failed_jobs: int = 0
    p95_ms: float | None = None
    baseline_p95_ms: float | None = None
    dead_letters: int = 0  # new since the stage began
    oldest_age_s: float | None = None
    spot_interruptions: int = 0

    @property
    def failure_rate(self) -> float | None:
        return self.failed_jobs / self.finished_jobs if self.finished_jobs else None


@dataclass(frozen=True)
class Gates:
    soak_s: Mapping[int, float] = field(
        default_factory=lambda: {10: HOUR, 25: HOUR, 50: 2 * HOUR, 75: 2 * HOUR, 100: 24 * HOUR}
    )
    # (hold above, roll back above)
    failure_rate: tuple[float, float] = (0.02, 0.05)
    p95_ratio: tuple[float, float] = (1.2, 1.5)
    dead_letters: tuple[int, int] = (0, 0)
    oldest_age_s: tuple[float, float] = (600.0, 1800.0)
    spot_interruptions: tuple[int, int] = (5, 20)

    def soak(self, weight: int) -> float:
        return float(self.soak_s.get(weight, HOUR))


@dataclass(frozen=True)
class CutoverDecision:
    action: Action
    state: CutoverState
    reasons: tuple[str, ...]
    alert: bool = False
    release_ecs: bool = False


def _next(weight: int) -> int:
    return STAGES[min(STAGES.index(weight) + 1, len(STAGES) - 1)]


def gate_findings(health: Health, gates: Gates) -> tuple[list[str], list[str]]:
    """(hold reasons, rollback reasons) for the measured health."""
    hold: list[str] = []
    rollback: list[str] = []

    def check(name: str, value: float | None, limits: tuple[float, float], unit: str = "") -> None:
        if value is None:
            return
        if value > limits[1]:
            rollback.append(f"{name} {value:g}{unit} above {limits[1]:g}{unit}")
        elif value > limits[0]:
            hold.append(f"{name} {value:g}{unit} above {limits[0]:g}{unit}")

    check("job failure rate", health.failure_rate, gates.failure_rate)
    ratio = None
    if health.p95_ms is not None and health.baseline_p95_ms:
        ratio = round(health.p95_ms / health.baseline_p95_ms, 3)
    check("p95 per image / ECS baseline", ratio, gates.p95_ratio, "x")
    check("new dead letters", health.dead_letters, gates.dead_letters)
    check("oldest message age", health.oldest_age_s, gates.oldest_age_s, " s")
    check("Spot interruptions", health.spot_interruptions, gates.spot_interruptions)
    return hold, rollback


def evaluate(
    state: CutoverState, health: Health, now_s: float, gates: Gates = Gates()
) -> CutoverDecision:
    """The pure cutover step: what to do at `now_s` given the current stage's health."""
    if state.status == PAUSED:
        return CutoverDecision("hold", state, (f"paused at {state.weight} %: {state.reason}",))
    if state.status == ROLLED_BACK:
        return CutoverDecision("hold", state, (f"rolled back: {state.reason}; resume to restart",))
    if state.status == COMPLETE:
        return CutoverDecision("hold", state, ("cutover complete",), release_ecs=True)
    if state.weight == 0:
        started = replace(state, weight=_next(0), entered_at_s=now_s, reason="started")
        return CutoverDecision("start", started, ("starting the cutover at 10 %",))
    hold, rollback = gate_findings(health, gates)
    if rollback:
        rolled = CutoverState(0, ROLLED_BACK, now_s, 0, "; ".join(rollback))
        return CutoverDecision("rollback", rolled, tuple(rollback), alert=True)
    soaked = now_s - state.entered_at_s
    soak = gates.soak(state.weight)
    if soaked < soak:
        return CutoverDecision(
            "hold", state, (f"soaking {state.weight} %: {soaked:.0f} of {soak:.0f} s", *hold)
        )
    if hold:
        return CutoverDecision("hold", state, tuple(hold))
    if health.failure_rate is None:
        return CutoverDecision("hold", state, ("no Batch job finished in this stage yet",))
    if state.weight == 100:
        done = replace(state, status=COMPLETE, reason="100 % held for the final soak")
        return CutoverDecision(
            "complete",
            done,
            ("100 % held for the final soak: ECS may be scaled down",),
            release_ecs=True,
        )
    promoted = replace(state, weight=_next(state.weight), entered_at_s=now_s, reason="promoted")
    return CutoverDecision("promote", promoted, (f"{state.weight} % healthy for {soaked:.0f} s",))


def pause(state: CutoverState, reason: str = "paused by operator") -> CutoverState:
    return replace(state, status=PAUSED, reason=reason)


def resume(state: CutoverState, now_s: float) -> CutoverState:
    """Continue a paused stage (its soak starts over); a rolled-back cutover restarts from 0."""
    if state.status == ROLLED_BACK:
        return CutoverState(0, RUNNING, now_s, 0, "resumed after rollback")
    return replace(state, status=RUNNING, entered_at_s=now_s, reason="resumed")


def rollback(reason: str, now_s: float) -> CutoverState:
    return CutoverState(0, ROLLED_BACK, now_s, 0, reason)


# ---- adapters: SSM state, CloudWatch health, SQS drain, SNS alert -------------------------


def state_parameter(names: Names) -> str:
    return router.parameter(names, "state")


def load_state(names: Names, region: str, endpoint_url: str | None = None) -> CutoverState:
    ssm = client("ssm", region, endpoint_url)
    try:
        raw = ssm.get_parameter(Name=state_parameter(names))["Parameter"]["Value"]
    except ssm.exceptions.ParameterNotFound:
        return CutoverState()
    return CutoverState(**json.loads(raw))


def save_state(
    names: Names, state: CutoverState, region: str, endpoint_url: str | None = None
) -> None:
    client("ssm", region, endpoint_url).put_parameter(
        Name=state_parameter(names),
        Value=json.dumps(asdict(state)),
        Type="String",
        Overwrite=True,
    )
    router.write_weight(names, state.weight, state.stage, region, endpoint_url)


def _sum(
    cloudwatch: Any,
    namespace: str,
    metric: str,
    dimensions: Mapping[str, str],
    start: dt.datetime,
    end: dt.datetime,
) -> float:
    points = cloudwatch.get_metric_statistics(
        Namespace=namespace,
        MetricName=metric,
        Dimensions=[{"Name": k, "Value": v} for k, v in dimensions.items()],
        StartTime=start,
        EndTime=end,
        Period=60,
        Statistics=["Sum"],
    )["Datapoints"]
    return float(sum(p.get("Sum", 0.0) for p in points))


def _p95(
    cloudwatch: Any,
    namespace: str,
    metric: str,
    dimensions: Mapping[str, str],
    start: dt.datetime,
    end: dt.datetime,
) -> float | None:
    """p95 over the window. The moto server returns no percentiles: then the Maximum, an upper
    bound (stricter than the real gate), so a local run can only err towards holding."""
    window = max(60, int((end - start).total_seconds()) // 60 * 60 + 60)
    points = cloudwatch.get_metric_statistics(
        Namespace=namespace,
        MetricName=metric,
        Dimensions=[{"Name": k, "Value": v} for k, v in dimensions.items()],
        StartTime=start,
        EndTime=end,
        Period=window,
        ExtendedStatistics=["p95"],
        Statistics=["Maximum"],
    )["Datapoints"]
    values = [p["ExtendedStatistics"]["p95"] for p in points if p.get("ExtendedStatistics")]
    if values:
        return float(max(values))
    maxima = [p["Maximum"] for p in points if "Maximum" in p]
    return float(max(maxima)) if maxima else None


def dead_letter_count(names: Names, region: str, endpoint_url: str | None = None) -> int:
    sqs = client("sqs", region, endpoint_url)
    try:
        url = sqs.get_queue_url(QueueName=names.dead_letter_queue(names.indexing_queue))["QueueUrl"]
    except sqs.exceptions.QueueDoesNotExist:
        return 0
    return observe.queue_depth(url, region, endpoint_url).visible


def read_health(
    names: Names,
    state: CutoverState,
    region: str,
    endpoint_url: str | None = None,
    *,
    now_s: float,
    baseline_p95_ms: float | None = None,
) -> Health:
    """The gates' inputs for the window since the stage began (at most the last 24 hours).

    Job outcomes: failures are the AWS/Events TriggeredRules count of the job-failed rule,
    finished jobs the dispatch flow's JobsSubmitted. New dead letters: the DLQ's depth now minus
    at stage entry (read from SQS directly; exact, and moto publishes no AWS/SQS metrics).
    """
    cloudwatch = client("cloudwatch", region, endpoint_url)
    end = dt.datetime.fromtimestamp(now_s, dt.UTC) + dt.timedelta(minutes=1)
    start = max(
        dt.datetime.fromtimestamp(state.entered_at_s, dt.UTC),
        end - dt.timedelta(hours=24),
    ) - dt.timedelta(minutes=1)
    namespace = names.metrics_namespace
    submitted = _sum(
        cloudwatch, namespace, str(Metric.JOBS_SUBMITTED), {"Service": "dispatch"}, start, end
    )
    failed = _sum(
        cloudwatch, "AWS/Events", "TriggeredRules", {"RuleName": names.job_failed_rule}, start, end
    )
    spot = _sum(
        cloudwatch,
        "AWS/Events",
        "TriggeredRules",
        {"RuleName": names.spot_interruption_rule},
        start,
        end,
    )
    p95 = _p95(
        cloudwatch, namespace, str(Metric.PROCESSING_TIME), {"Service": "detection"}, start, end
    )
    return Health(
        finished_jobs=int(submitted),
        failed_jobs=int(failed),
        p95_ms=p95,
        baseline_p95_ms=baseline_p95_ms or read_baseline(names, region, endpoint_url),
        dead_letters=max(
            0, dead_letter_count(names, region, endpoint_url) - state.dead_letters_at_entry
        ),
        oldest_age_s=observe.oldest_message_age(names.indexing_queue, region, endpoint_url),
        spot_interruptions=int(spot),
    )


def baseline_parameter(names: Names) -> str:
    return router.parameter(names, "ecs-baseline-p95-ms")


def read_baseline(names: Names, region: str, endpoint_url: str | None = None) -> float | None:
    """The ECS service's measured p95 per image (ms), which an operator records in SSM."""
    ssm = client("ssm", region, endpoint_url)
    try:
        return float(ssm.get_parameter(Name=baseline_parameter(names))["Parameter"]["Value"])
    except ssm.exceptions.ParameterNotFound:
        return None


def return_to_ecs(
    names: Names, region: str, endpoint_url: str | None = None, *, idle_polls: int = 2
) -> int:
    """Move the messages waiting in the Batch queue to the ECS queue; return how many.

    Sent before deleted: a crash in between duplicates a message, never loses one (the workers'
    writes are idempotent per image). Messages a Batch job holds in flight are not waiting;
    they finish on Batch, or return to the Batch queue and a second rollback moves them.
    """
    sqs = client("sqs", region, endpoint_url)
    batch_url = sqs.get_queue_url(QueueName=names.indexing_queue)["QueueUrl"]
    ecs_url = sqs.get_queue_url(QueueName=names.ecs_indexing_queue)["QueueUrl"]
    moved, empty = 0, 0
    while empty < idle_polls:
        messages = sqs.receive_message(
            QueueUrl=batch_url,
            MaxNumberOfMessages=10,
            WaitTimeSeconds=0,
            VisibilityTimeout=120,
            MessageAttributeNames=["All"],
        ).get("Messages", [])
        if not messages:
            empty += 1
            continue
        empty = 0
        entries = []
        for i, message in enumerate(messages):
            entry: dict[str, Any] = {"Id": str(i), "MessageBody": message["Body"]}
            if message.get("MessageAttributes"):
                entry["MessageAttributes"] = message["MessageAttributes"]
            entries.append(entry)
        sent = sqs.send_message_batch(QueueUrl=ecs_url, Entries=entries)
        ok = {int(s["Id"]) for s in sent.get("Successful", [])}
        if ok:
            sqs.delete_message_batch(
                QueueUrl=batch_url,
                Entries=[
                    {"Id": str(i), "ReceiptHandle": messages[i]["ReceiptHandle"]}
                    for i in sorted(ok)
                ],
            )
        moved += len(ok)
    return moved


def alert(
    names: Names, subject: str, message: str, region: str, endpoint_url: str | None = None
) -> bool:
    """Publish to the stack's alerts topic; False (logged) when the topic does not exist."""
    sns = client("sns", region, endpoint_url)
    suffix = f":{names.alerts_topic}"
    for page in sns.get_paginator("list_topics").paginate():
        for topic in page.get("Topics", []):
            if topic["TopicArn"].endswith(suffix):
                sns.publish(TopicArn=topic["TopicArn"], Subject=subject[:99], Message=message)
                return True
    log.warning("alerts topic %s not found; alert not sent: %s", names.alerts_topic, subject)
    return False


def release_ecs(
    cluster: str | None, service: str | None, region: str, endpoint_url: str | None = None
) -> bool:
    """Scale the ECS service to zero (only ever called after the final soak at 100 %)."""
    if not cluster or not service:
        return False
    client("ecs", region, endpoint_url).update_service(
        cluster=cluster, service=service, desiredCount=0
    )
    return True


# ---- flows -------------------------------------------------------------------------------


def _setup(
    names: Mapping[str, Any] | None, region: str | None, endpoint_url: str | None
) -> tuple[Names, str, str | None]:
    return (
        Names(**dict(names or {})),
        region or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1",
        endpoint_url or os.environ.get("AWS_ENDPOINT_URL"),
    )


def gates_from(values: Mapping[str, Any] | None) -> Gates:
    values = dict(values or {})
    if "soak_s" in values:
        values["soak_s"] = {int(k): float(v) for k, v in values["soak_s"].items()}
    for key in ("failure_rate", "p95_ratio", "dead_letters", "oldest_age_s", "spot_interruptions"):
        if key in values:
            values[key] = tuple(values[key])
    return Gates(**values)


def _emit_weight(names: Names, weight: int, region: str, endpoint_url: str | None) -> None:
    settings = Settings.from_env()
    MetricsEmitter(
        settings.metrics_namespace,
        {"Service": METRICS_SERVICE},
        cloudwatch_region=region if settings.metrics_to_cloudwatch else None,
        endpoint_url=endpoint_url,
    ).emit({Metric.CUTOVER_WEIGHT: weight}, prefix=names.prefix)


def _rollback_effects(
    names: Names, state: CutoverState, region: str, endpoint_url: str | None
) -> int:
    moved = return_to_ecs(names, region, endpoint_url)
    alert(
        names,
        f"FaceFleet cutover rolled back to 0 % ({names.prefix})",
        f"{state.reason}\n{moved} waiting message(s) returned to the ECS queue.",
        region,
        endpoint_url,
    )
    return moved


@flow(name="cutover", log_prints=True)
def cutover(
    names: dict[str, Any] | None = None,
    gates: dict[str, Any] | None = None,
    ecs_baseline_p95_ms: float | None = None,
    ecs_cluster: str | None = None,
    ecs_service: str | None = None,
    region: str | None = None,
    endpoint_url: str | None = None,
) -> dict[str, Any]:
    """One scheduled cutover step: read health, evaluate, apply to SSM, emit the weight."""
    logger = get_run_logger()
    the_names, region, endpoint_url = _setup(names, region, endpoint_url)
    the_gates = gates_from(gates)
    now = time.time()
    state = load_state(the_names, region, endpoint_url)
    health = read_health(
        the_names, state, region, endpoint_url, now_s=now, baseline_p95_ms=ecs_baseline_p95_ms
    )
    decision = evaluate(state, health, now, the_gates)
    new_state = decision.state
    if decision.action in ("start", "promote"):
        # New dead letters are counted from the moment the stage begins.
        new_state = replace(
            new_state, dead_letters_at_entry=dead_letter_count(the_names, region, endpoint_url)
        )
    if new_state != state:
        save_state(the_names, new_state, region, endpoint_url)
    moved = 0
    if decision.action == "rollback":
        moved = _rollback_effects(the_names, new_state, region, endpoint_url)
    released = False
    if decision.action == "complete":
        released = release_ecs(ecs_cluster, ecs_service, region, endpoint_url)
    _emit_weight(the_names, new_state.weight, region, endpoint_url)
    logger.info(
        "cutover %s: %d %% -> %d %% (%s); health %s",
        decision.action,
        state.weight,
        new_state.weight,
        "; ".join(decision.reasons),
        asdict(health),
    )
    return {
        "action": decision.action,
        "weight": new_state.weight,
        "status": new_state.status,
        "reasons": list(decision.reasons),
        "health": asdict(health),
        "returned_to_ecs": moved,
        "ecs_released": released,
    }


@flow(name="cutover-rollback", log_prints=True)
def rollback_flow(
    reason: str = "manual rollback",
    names: dict[str, Any] | None = None,
    region: str | None = None,
    endpoint_url: str | None = None,
) -> dict[str, Any]:
    """Send all traffic back to ECS now, return waiting Batch messages to the ECS queue, alert."""
    the_names, region, endpoint_url = _setup(names, region, endpoint_url)
    state = rollback(reason, time.time())
    save_state(the_names, state, region, endpoint_url)
    moved = _rollback_effects(the_names, state, region, endpoint_url)
    _emit_weight(the_names, 0, region, endpoint_url)
    get_run_logger().info("cutover rolled back (%s); %d message(s) returned", reason, moved)
    return {"weight": 0, "status": state.status, "returned_to_ecs": moved}


@flow(name="cutover-pause", log_prints=True)
def pause_flow(
    reason: str = "paused by operator",
    names: dict[str, Any] | None = None,
    region: str | None = None,
    endpoint_url: str | None = None,
) -> dict[str, Any]:
    """Freeze the cutover at its current weight (the router keeps splitting as it is)."""
    the_names, region, endpoint_url = _setup(names, region, endpoint_url)
    state = pause(load_state(the_names, region, endpoint_url), reason)
    save_state(the_names, state, region, endpoint_url)
    return asdict(state)


@flow(name="cutover-resume", log_prints=True)
def resume_flow(
    names: dict[str, Any] | None = None,
    region: str | None = None,
    endpoint_url: str | None = None,
) -> dict[str, Any]:
    """Continue a paused cutover, or restart a rolled-back one from the first stage."""
    the_names, region, endpoint_url = _setup(names, region, endpoint_url)
    state = resume(load_state(the_names, region, endpoint_url), time.time())
    state = replace(state, dead_letters_at_entry=dead_letter_count(the_names, region, endpoint_url))
    save_state(the_names, state, region, endpoint_url)
    return asdict(state)
