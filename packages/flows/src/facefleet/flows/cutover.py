"""The cutover's Prefect flows: the scheduled step and the manual rollback, pause and resume.

Each is a thin sequence over `facefleet.control.cutover`: read health, `machine.evaluate`,
apply the effects.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import asdict, replace
from typing import Any

from prefect import flow, get_run_logger

from facefleet.common.config import Names
from facefleet.control.cutover import effects, machine
from facefleet.control.cutover import health as health_reads


def _setup(
    names: Mapping[str, Any] | None, region: str | None, endpoint_url: str | None
) -> tuple[Names, str, str | None]:
    return (
        Names(**dict(names or {})),
        region or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1",
        endpoint_url or os.environ.get("AWS_ENDPOINT_URL"),
    )


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
    the_gates = machine.gates_from(gates)
    now = time.time()
    state = effects.load_state(the_names, region, endpoint_url)
    health = health_reads.read_health(
        the_names, state, region, endpoint_url, now_s=now, baseline_p95_ms=ecs_baseline_p95_ms
    )
    decision = machine.evaluate(state, health, now, the_gates)
    new_state = decision.state
    if decision.action in ("start", "promote"):
        # New dead letters are counted from the moment the stage begins.
        new_state = replace(
            new_state,
            dead_letters_at_entry=health_reads.dead_letter_count(the_names, region, endpoint_url),
        )
    if new_state != state:
        effects.save_state(the_names, new_state, region, endpoint_url)
    moved = 0
    if decision.action == "rollback":
        moved = effects.rollback_effects(the_names, new_state, region, endpoint_url)
    released = False
    if decision.action == "complete":
        released = effects.release_ecs(ecs_cluster, ecs_service, region, endpoint_url)
    effects.emit_weight(the_names, new_state.weight, region, endpoint_url)
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
    state = machine.rollback(reason, time.time())
    effects.save_state(the_names, state, region, endpoint_url)
    moved = effects.rollback_effects(the_names, state, region, endpoint_url)
    effects.emit_weight(the_names, 0, region, endpoint_url)
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
    state = machine.pause(effects.load_state(the_names, region, endpoint_url), reason)
    effects.save_state(the_names, state, region, endpoint_url)
    return asdict(state)


@flow(name="cutover-resume", log_prints=True)
def resume_flow(
    names: dict[str, Any] | None = None,
    region: str | None = None,
    endpoint_url: str | None = None,
) -> dict[str, Any]:
    """Continue a paused cutover, or restart a rolled-back one from the first stage."""
    the_names, region, endpoint_url = _setup(names, region, endpoint_url)
    state = machine.resume(effects.load_state(the_names, region, endpoint_url), time.time())
    state = replace(
        state, dead_letters_at_entry=health_reads.dead_letter_count(the_names, region, endpoint_url)
    )
    effects.save_state(the_names, state, region, endpoint_url)
    return asdict(state)
