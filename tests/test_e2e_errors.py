"""End to end, bad input and a MongoDB outage, as detection/service.py and consumer.py document:

- corrupt bytes, an empty object, a missing object: the image is marked FAILED with the reason
  and the message is deleted (bad input never blocks the queue, never reaches the DLQ);
- a malformed body (not JSON; JSON of the wrong schema): redelivered until the queue's
  maxReceiveCount, then on the dead-letter queue;
- MongoDB going away mid-run: the messages stay in flight (RETRY with backoff) and are processed
  once it is back; nothing is lost or dead-lettered.

The outage uses a dedicated nx-27017 (restarted on the same port and data), not the session's.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from facefleet.common.documents import ImageStatus
from facefleet.common.messages import DetectionRequest
from facefleet.common.s3keys import image_key
from facefleet.embedded import servers as local
from facefleet.tools.demo.gallery import lfw_bulk
from tests.e2e_support import (
    ROOT,
    E2EStack,
    drain_bodies,
    provision_stack,
    start_mongo,
    stop_process,
    wait_until,
)
from tests.flows_support import prefect_harness

USER = "e2e-errors"
NO_COOLDOWN = {"cooldown_s": 0}
MAX_RECEIVE_COUNT = 2
OUTAGE_S = 6


@pytest.fixture(scope="module", autouse=True)
def harness() -> None:
    prefect_harness()


@pytest.fixture
def mongo(tmp_path: Path) -> Iterator[dict[str, object]]:
    port, data = local.free_port(), tmp_path / "mongo"
    state: dict[str, object] = {"port": port, "data": data, "process": start_mongo(port, data)}
    try:
        yield state
    finally:
        stop_process(state["process"])  # type: ignore[arg-type]


@pytest.fixture
def stack(env, tmp_path: Path, models_dir: Path, monkeypatch, mongo) -> Iterator[E2EStack]:
    monkeypatch.setenv("FACEFLEET_WORKDIR", str(ROOT))
    uri = f"mongodb://{local.LOOPBACK}:{mongo['port']}"
    provisioned = provision_stack(
        env,
        tmp_path / "batch",
        gallery_uri=f"{uri}/gallery",
        huemn_uri=f"{uri}/huemn",
        config={"max_receive_count": MAX_RECEIVE_COUNT},
    )
    provisioned.localize_jobs(models_dir, BATCH_SIZE="2", MESSAGE_VISIBILITY_TIMEOUT="30")
    try:
        yield provisioned
    finally:
        provisioned.close()


def test_bad_input_and_a_mongo_outage_end_as_documented(
    stack: E2EStack, faces_dir: Path, mongo: dict[str, object]
) -> None:
    s3, sqs = stack.s3, stack.sqs
    bad = {"corrupt": b"\xff\xd8\xff not really a jpeg", "empty": b""}
    for image_id, data in bad.items():
        s3.put_object(Bucket=stack.bucket, Key=image_key(USER, image_id), Body=data)
    bodies = [DetectionRequest(USER, i, stack.bucket, image_key(USER, i)).to_body() for i in bad]
    bodies.append(
        DetectionRequest(USER, "missing", stack.bucket, image_key(USER, "missing")).to_body()
    )
    malformed = ["{not json", json.dumps({"type": "detect", "version": 1, "user_id": USER})]
    for body in bodies + malformed:
        sqs.send_message(QueueUrl=stack.indexing_url, MessageBody=body)
    photos = lfw_bulk(faces_dir, 10, USER)
    stack.send_photos(photos)

    first = stack.tick(NO_COOLDOWN)
    assert [s["kind"] for s in first["submissions"]] == ["detection"]
    job_id = first["job_ids"][0]

    # The outage: MongoDB goes away once the worker has stored its first good image.
    def a_photo_done() -> bool:
        found = stack.gallery()["images"].find_one({"user_id": USER, "status": "done"}, {"_id": 1})
        return found is not None

    wait_until(a_photo_done, 120, "the first stored photo", interval=0.05)
    stop_process(mongo["process"])  # type: ignore[arg-type]
    time.sleep(OUTAGE_S)
    mongo["process"] = start_mongo(mongo["port"], mongo["data"])  # type: ignore[arg-type]

    stack.run_until_drained(NO_COOLDOWN, timeout=180)

    [detection] = stack.executor.children(job_id)
    log = Path(detection.log).read_text(errors="replace")
    assert "outage" in log, "the outage did not reach the worker:\n" + log[-3000:]
    assert detection.status == "SUCCEEDED" and detection.exit_codes == (0,), stack.report()

    images = stack.image_statuses(USER)
    reasons = {
        image_id: (images[image_id].get("reason") or "").split(":")[0]
        for image_id in ("corrupt", "empty", "missing")
    }
    assert reasons == {"corrupt": "corrupt", "empty": "empty", "missing": "missing"}
    assert all(images[i]["status"] == ImageStatus.FAILED for i in reasons)
    totals = stack.assert_processed_once(photos)  # every good photo done once, despite the outage
    assert totals["faces"] >= len(photos) - 2
    assert stack.gallery()["faces"].count_documents({"image_id": {"$in": list(reasons)}}) == 0
    stack.assert_grouped(USER)

    # Dead letters where they belong: exactly the two malformed bodies.
    stack.assert_queues_empty(dead_letters=len(malformed))
    assert sorted(drain_bodies(sqs, stack.indexing_dlq_url)) == sorted(malformed)
    stack.assert_scaled_to_zero(NO_COOLDOWN)
