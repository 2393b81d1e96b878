"""The fallback dispatcher as an AWS Lambda handler: the same observation, the same `decide`.

Runs when the Prefect deployment cannot (an EventBridge schedule invokes it every minute). It
shares the cool-down state parameter with the flow, so the two never double-submit a burst, and
submits with plain boto3 `submit_job`, using the same `job_request` as the flow.

Zipped alone for Lambda: imports only boto3, facefleet.common, facefleet.control.policy and
facefleet.control.observe and facefleet.control.lease. Configuration comes from the function's
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
import time
from collections.abc import Mapping
from dataclasses import asdict, fields
from typing import Any

from facefleet.common.aws import AwsTarget
from facefleet.common.config import Names, Settings
from facefleet.control import observe
from facefleet.control.lease import DispatchLease
from facefleet.control.policy import PolicyParams, decide, job_request

log = logging.getLogger(__name__)
log.setLevel(logging.INFO)


def names_from_env(environ: Mapping[str, str]) -> Names:
    defaults = Names()
    return Names(
        prefix=environ.get("FACEFLEET_PREFIX", defaults.prefix),
        grouping_prefix=environ.get("FACEFLEET_GROUPING_PREFIX", defaults.grouping_prefix),
    )


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
    names = Names(**event["names"]) if event.get("names") else names_from_env(environ)
    params = PolicyParams(**event["policy"]) if event.get("policy") else params_from_env(environ)
    aws = AwsTarget.from_env(environ)

    settings = Settings.from_env(environ)
    now = float(event.get("now_s", time.time()))
    with DispatchLease(names.dispatch_lease_table, aws).held(time.time()) as mine:
        if not mine:
            log.info("another dispatch tick holds the lease: nothing to do")
            return {"submissions": [], "job_ids": [], "jobs": 0, "skipped": "lease held"}
        urls = observe.queue_urls(
            names, aws, indexing=settings.queue_url, group_face=settings.group_face_queue_url
        )
        state = observe.load_state(names, aws)
        inputs = observe.observe(names, aws, now_s=now, state=state, urls=urls)
        decision = decide(inputs, params, names)
        batch = aws.client("batch")
        job_ids = []
        for sequence, submission in enumerate(decision.submissions):
            job_ids.append(batch.submit_job(**job_request(submission, now, sequence))["jobId"])
        observe.save_state(
            names,
            state.after(now, inputs.indexing.visible, submitted=bool(decision.submissions)),
            aws,
        )
    result = {
        "submissions": [asdict(s) for s in decision.submissions],
        "job_ids": job_ids,
        "jobs": decision.jobs,
        "reasons": list(decision.reasons),
        "inputs": observe.describe_inputs(inputs),
    }
    log.info("dispatch decision %s", json.dumps(result, default=str))
    return result
