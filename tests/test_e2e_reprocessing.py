"""End to end, reprocessing chaos: every image is indexed more than once (a FaceFleet request and
a duplicate S3 ObjectCreated notification for the same key, a detection worker SIGKILLed
mid-batch so its batch is redelivered, then the whole gallery re-sent with new photos mixed in),
and the user is grouped along the way. Reprocessing once broke a user's grouping for good (times
rewritten by `$set` came back as strings from nx-27017) and dead-lettered fresh images with the
reprocessed ones. Now: every image done once, every face grouped, nothing dead-lettered."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from facefleet.embedded.batch import ChildStatus
from facefleet.tools.demo.gallery import Photo, lfw_bulk
from tests.e2e_support import (
    INTERRUPTIBLE_WORKER,
    E2EStack,
    localized_stack,
    queue_counts,
    wait_until,
)

USER = "e2e-reprocess"
NO_COOLDOWN = {"cooldown_s": 0}


@pytest.fixture
def stack(env, tmp_path: Path, models_dir: Path, monkeypatch) -> Iterator[E2EStack]:
    yield from localized_stack(env, tmp_path, models_dir, monkeypatch, **INTERRUPTIBLE_WORKER)


def s3_notifications(stack: E2EStack, photos: list[Photo]) -> int:
    """What the gallery bucket sends for each upload: one ObjectCreated notification per key."""
    for photo in photos:
        record = {
            "eventName": "ObjectCreated:Put",
            "s3": {"bucket": {"name": stack.bucket}, "object": {"key": photo.key}},
        }
        stack.sqs.send_message(
            QueueUrl=stack.indexing_url, MessageBody=json.dumps({"Records": [record]})
        )
    return len(photos)


def in_a_batch(stack: E2EStack, job_id: str) -> ChildStatus | None:
    children = stack.executor.children(job_id)
    child = children[0] if children else None
    if child is None or child.status != "RUNNING" or not child.pid:
        return None
    return child if queue_counts(stack.sqs, stack.indexing_url)[1] > 0 else None


def test_reprocessing_any_number_of_times_loses_nothing(stack: E2EStack, faces_dir: Path) -> None:
    gallery = lfw_bulk(faces_dir, 15, USER)
    first, later = gallery[:12], gallery[12:]

    # Round 1: a FaceFleet request and a duplicate S3 event for every photo.
    assert stack.send_photos(first) == len(first)
    assert s3_notifications(stack, first) == len(first)
    tick = stack.tick(NO_COOLDOWN)
    job_id = next(
        j
        for j, s in zip(tick["job_ids"], tick["submissions"], strict=True)
        if s["kind"] == "detection"
    )
    child = wait_until(lambda: in_a_batch(stack, job_id), 120, "a detection batch in flight")
    os.kill(child.pid, signal.SIGKILL)  # the instance is gone: the batch is redelivered
    stack.run_until_drained(NO_COOLDOWN, timeout=240)
    stack.assert_processed_once(first)
    stack.assert_grouped(USER)

    # Round 2: the whole gallery again (re-uploads), new photos mixed in, duplicates again.
    assert stack.send_photos(gallery) == len(gallery)
    assert s3_notifications(stack, gallery) == len(gallery)
    stack.run_until_drained(NO_COOLDOWN, timeout=240)

    totals = stack.assert_processed_once(gallery)
    assignments, people = stack.assert_grouped(USER)
    assert assignments == totals["faces"] and people >= 1
    stack.assert_queues_empty()  # both dead-letter queues empty
    assert [p.image_id for p in later] == [p.key.rsplit("/", 1)[1] for p in later]
