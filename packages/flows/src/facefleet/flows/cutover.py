"""The cutover's Prefect flows: the scheduled step and the manual rollback, pause and resume.

Each is a thin sequence over `facefleet.control.cutover`: read health, `machine.evaluate`,
apply the effects.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import asdict, replace
from typing import Any

from prefect import flow, get_run_logger

from facefleet.common.aws import AwsTarget
from facefleet.common.config import Settings
from facefleet.common.names import Names
from facefleet.control import observe
from facefleet.control.cutover import ecs_move, effects, machine
from facefleet.control.cutover import health as health_reads


def _setup(
    names: Mapping[str, Any] | None, region: str | None, endpoint_url: str | None
) -> tuple[Names, AwsTarget]:
    """Flow parameters to `Names` and the AWS target (unset parts from the environment)."""
    return Names.from_params(names), AwsTarget.from_env(region=region, endpoint_url=endpoint_url)


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
    the_names, aws = _setup(names, region, endpoint_url)
    settings = Settings.from_env()  # ALERTS_TOPIC_ARN, METRICS_*: a flow run is an entry point
    the_gates = machine.gates_from(gates)
    now = time.time()
    state = effects.load_state(the_names, aws)
    health = health_reads.read_health(
        the_names, state, aws, now_s=now, baseline_p95_ms=ecs_baseline_p95_ms
    )
    decision = machine.evaluate(state, health, now, the_gates)
    if decision.action == "start" and ecs_cluster and ecs_service:
        # The router sends every user not on Batch to the ECS queue: the ECS service must read
        # it before the first user moves (`facefleet cutover move-ecs-queue`).
        ecs_url = observe.stack_queue_url(
            the_names, aws, "EcsIndexingQueueUrl", the_names.ecs_indexing_queue
        )
        reads = ecs_move.ecs_queue_url(ecs_cluster, ecs_service, aws)
        if reads != ecs_url:
            reason = (
                f"ECS service {ecs_service} reads {reads or 'no QUEUE_URL'}, not the ECS queue: "
                "run `facefleet cutover move-ecs-queue` first"
            )
            decision = machine.CutoverDecision("hold", state, (reason,))
    new_state = decision.state
    if decision.action in ("start", "promote"):
        # New dead letters are counted from the moment the stage begins.
        new_state = replace(
            new_state,
            dead_letters_at_entry=health_reads.dead_letter_count(the_names, aws),
        )
    if new_state != state:
        effects.save_state(the_names, new_state, aws)
    moved = 0
    if decision.action == "rollback":
        moved = effects.rollback_effects(the_names, new_state, aws, settings)
    released = False
    if decision.action == "complete":
        released = effects.release_ecs(ecs_cluster, ecs_service, aws)
    effects.emit_weight(the_names, new_state.weight, aws, settings)
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
    the_names, aws = _setup(names, region, endpoint_url)
    settings = Settings.from_env()  # ALERTS_TOPIC_ARN, METRICS_*: a flow run is an entry point
    state = machine.rollback(reason, time.time())
    effects.save_state(the_names, state, aws)
    moved = effects.rollback_effects(the_names, state, aws, settings)
    effects.emit_weight(the_names, 0, aws, settings)
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
    the_names, aws = _setup(names, region, endpoint_url)
    state = machine.pause(effects.load_state(the_names, aws), reason)
    effects.save_state(the_names, state, aws)
    return asdict(state)


@flow(name="cutover-resume", log_prints=True)
def resume_flow(
    names: dict[str, Any] | None = None,
    region: str | None = None,
    endpoint_url: str | None = None,
) -> dict[str, Any]:
    """Continue a paused cutover, or restart a rolled-back one from the first stage."""
    the_names, aws = _setup(names, region, endpoint_url)
    state = machine.resume(effects.load_state(the_names, aws), time.time())
    state = replace(state, dead_letters_at_entry=health_reads.dead_letter_count(the_names, aws))
    effects.save_state(the_names, state, aws)
    return asdict(state)
