"""The fallback dispatcher as an AWS Lambda handler: the same tick as the flow
(`dispatch_tick.tick`: lease, observe, `decide`, submit).

Runs when the Prefect deployment cannot (an EventBridge schedule invokes it every minute). It
shares the cool-down state parameter with the flow, so the two never double-submit a burst, and
submits through the function's own boto3 Batch client.

Zipped alone for Lambda: imports only boto3, facefleet.common and facefleet.control's
dispatch_tick, policy, observe and lease. Configuration comes from the function's
environment: QUEUE_URL / GROUP_FACE_QUEUE_URL (the queues as the template names them: the
stack's own or the existing service's, whatever their names and accounts), FACEFLEET_PREFIX /
FACEFLEET_GROUPING_PREFIX (the `Names` prefixes of the Batch resources), AWS_REGION, and optional
POLICY_* overrides (e.g. POLICY_MAX_ARRAY_SIZE=10, POLICY_COOLDOWN_S=60).

One tick at a time: the tick runs only while it holds the dispatch lease (`lease`), so an
overlapping invocation (a slow tick, a retry, the Prefect flow) returns without submitting.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import fields
from typing import Any

from facefleet.common.aws import AwsTarget
from facefleet.common.names import Names
from facefleet.control import dispatch_tick
from facefleet.control.policy import PolicyParams

log = logging.getLogger(__name__)
log.setLevel(logging.INFO)


def params_from_env(environ: Mapping[str, str]) -> PolicyParams:
    overrides: dict[str, Any] = {}
    for f in fields(PolicyParams):
        raw = environ.get(f"POLICY_{f.name.upper()}")
        if raw is not None:
            overrides[f.name] = float(raw) if f.type in ("float", float) else int(raw)
    return PolicyParams(**overrides)


def handler(event: Mapping[str, Any] | None, context: Any) -> dict[str, Any]:
    """One dispatch tick. `event` may carry `names` (Names fields) and `policy` overrides."""
    event = event or {}
    environ = os.environ
    names = Names.from_params(event["names"]) if event.get("names") else Names.from_env(environ)
    params = PolicyParams(**event["policy"]) if event.get("policy") else params_from_env(environ)
    aws = AwsTarget.from_env(environ)
    done = dispatch_tick.tick(
        names,
        params,
        aws,
        aws.client("batch"),
        # The Lambda runtime has boto3 only (no pydantic): the two URLs the template sets are
        # read here, as the service's own variables.
        queue_url=environ.get("QUEUE_URL") or None,
        group_face_queue_url=environ.get("GROUP_FACE_QUEUE_URL") or None,
        now_s=float(event["now_s"]) if "now_s" in event else None,
    )
    result = done.as_dict()
    if done.skipped:
        log.info("dispatch tick skipped: %s", done.skipped)
    else:
        log.info("dispatch decision %s", json.dumps(result, default=str))
    return result
