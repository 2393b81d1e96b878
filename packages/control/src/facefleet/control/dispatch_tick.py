"""One dispatch tick: take the lease, observe, `policy.decide`, submit, save the cool-down state.

Shared by the Prefect dispatch flow and the fallback Lambda (each adds only its own reporting),
so the two cannot drift. The Batch client is passed in: the caller builds it for its target
(the Lambda's, the flow's AwsTarget), never by changing the process environment.

Zipped into the Lambda: imports only boto3 (through the clients), facefleet.common and
facefleet.control's policy, observe and lease.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from facefleet.common.aws import AwsTarget
from facefleet.common.names import Names
from facefleet.control import observe
from facefleet.control.lease import DispatchLease
from facefleet.control.policy import (
    ActiveJob,
    Decision,
    DispatchInputs,
    PolicyParams,
    Submission,
    decide,
    job_request,
)

# Called after each submission with (submission, job request, job id): the local executor's hook.
OnSubmitted = Callable[[Submission, dict[str, Any], str], None]


@dataclass(frozen=True)
class Tick:
    """What one tick saw, decided and submitted (`skipped`: why it did nothing at all)."""

    inputs: DispatchInputs | None = None
    decision: Decision | None = None
    job_ids: tuple[str, ...] = ()
    skipped: str | None = None
    duration_s: float = field(default=0.0, compare=False)

    def as_dict(self) -> dict[str, Any]:
        if self.decision is None or self.inputs is None:
            return {"submissions": [], "job_ids": [], "jobs": 0, "skipped": self.skipped}
        return {
            "submissions": [asdict(s) for s in self.decision.submissions],
            "job_ids": list(self.job_ids),
            "jobs": self.decision.jobs,
            "reasons": list(self.decision.reasons),
            "inputs": observe.describe_inputs(self.inputs),
            "duration_s": round(self.duration_s, 3),
        }


def tick(
    names: Names,
    params: PolicyParams,
    aws: AwsTarget,
    batch: Any,
    *,
    queue_url: str | None = None,
    group_face_queue_url: str | None = None,
    now_s: float | None = None,
    extra_active: Callable[[], Iterable[ActiveJob]] | None = None,
    on_submitted: OnSubmitted | None = None,
) -> Tick:
    """One tick against `aws` (SQS, SSM, DynamoDB, CloudWatch, CloudFormation reads) submitting
    through `batch` (a boto3 Batch client). Queue URLs: given, else the stack's outputs."""
    started = time.monotonic()
    with DispatchLease(names.dispatch_lease_table, aws).held(time.time()) as mine:
        if not mine:
            return Tick(skipped="lease held")
        now = time.time() if now_s is None else now_s
        urls = observe.queue_urls(names, aws, indexing=queue_url, group_face=group_face_queue_url)
        state = observe.load_state(names, aws)
        inputs = observe.observe(
            names,
            aws,
            now_s=now,
            state=state,
            urls=urls,
            extra_active=tuple(extra_active()) if extra_active else (),
        )
        decision = decide(inputs, params, names)
        job_ids = []
        for sequence, submission in enumerate(decision.submissions):
            request = job_request(submission, now, sequence)
            job_id = str(batch.submit_job(**request)["jobId"])
            job_ids.append(job_id)
            if on_submitted is not None:
                on_submitted(submission, request, job_id)
        observe.save_state(
            names,
            state.after(now, inputs.indexing.visible, submitted=bool(decision.submissions)),
            aws,
        )
    return Tick(inputs, decision, tuple(job_ids), duration_s=time.monotonic() - started)
