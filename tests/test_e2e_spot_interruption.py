"""End to end, Spot interruptions: the detection job (run_detection_service.py, started by a
dispatch tick as a local Batch job) is sent SIGTERM mid-batch (a Spot notice: it releases its
messages and exits with the retryable code), then its retry is SIGKILLed mid-batch (the instance
is gone: its messages come back when their visibility timeout ends). The executor retries both, as
the job definition's retry strategy says, and the third attempt finishes the work: every image
done, none lost, no face stored twice, nothing dead-lettered."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from facefleet.common.names import RETRYABLE_EXIT_CODE
from facefleet.embedded.batch import ChildStatus
from facefleet.tools.demo.gallery import lfw_bulk
from tests.e2e_support import (
    INTERRUPTIBLE_WORKER,
    E2EStack,
    localized_stack,
    queue_counts,
    wait_until,
)

USER = "e2e-spot"
NO_COOLDOWN = {"cooldown_s": 0}


@pytest.fixture
def stack(env, tmp_path: Path, models_dir: Path, monkeypatch) -> Iterator[E2EStack]:
    yield from localized_stack(env, tmp_path, models_dir, monkeypatch, **INTERRUPTIBLE_WORKER)


def running_attempt(stack: E2EStack, job_id: str, attempt: int) -> ChildStatus | None:
    """The job's child while its `attempt` runs a worker that holds messages in flight."""
    children = stack.executor.children(job_id)
    child = children[0] if children else None
    if child is None or child.status != "RUNNING" or child.attempt != attempt or not child.pid:
        return None
    return child if queue_counts(stack.sqs, stack.indexing_url)[1] > 0 else None


def test_sigterm_and_sigkill_mid_batch_lose_nothing(stack: E2EStack, faces_dir: Path) -> None:
    photos = lfw_bulk(faces_dir, 18, USER)
    assert stack.send_photos(photos) == len(photos)

    first = stack.tick(NO_COOLDOWN)
    assert [s["kind"] for s in first["submissions"]] == ["detection"]
    job_id = first["job_ids"][0]

    # Spot notice: SIGTERM the worker (not the supervisor, which plays Batch) mid-batch.
    child = wait_until(lambda: running_attempt(stack, job_id, 1), 120, "attempt 1 in a batch")
    os.kill(child.pid, signal.SIGTERM)
    # Reclaimed instance: SIGKILL the retry mid-batch.
    child = wait_until(lambda: running_attempt(stack, job_id, 2), 120, "attempt 2 in a batch")
    os.kill(child.pid, signal.SIGKILL)
    wait_until(lambda: stack.executor.children(job_id)[0].attempt == 3, 30, "attempt 3")
    assert queue_counts(stack.sqs, stack.indexing_url)[1] > 0  # the killed batch, still invisible

    stack.run_until_drained(NO_COOLDOWN, timeout=180)

    [detection] = stack.executor.children(job_id)
    assert detection.status == "SUCCEEDED", stack.report()
    assert detection.exit_codes == (RETRYABLE_EXIT_CODE, -signal.SIGKILL, 0), stack.report()
    log = Path(detection.log).read_text(errors="replace")
    # Attempt 1 drained on the notice: it finished or released its batch within the deadline.
    assert "received SIGTERM" in log and "stop requested: draining in-flight messages" in log

    stack.assert_processed_once(photos)
    stack.assert_grouped(USER)
    stack.assert_queues_empty()
    stack.assert_scaled_to_zero(NO_COOLDOWN)
