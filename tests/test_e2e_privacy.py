"""End to end, privacy: nothing of a face outlives its photo or its user.

On a stack provisioned by the real `provision` flow, with the gallery bucket's ObjectCreated and
ObjectRemoved notifications on the indexing queue as production configures them, four users'
photos are uploaded (S3 events are the only creates) and indexed by the detection and grouping
services (in this process, on the stack's queues, so that every message body they receive or
send and every log line they write can be scanned). Then alice deletes photos (two by S3
deletes, one by an explicit delete request overtaken by a late create of it), bob is erased by
an erasure request, dave by `facefleet people erase` (twice), and bad deletes arrive. Afterwards
every MongoDB collection and every face-bucket key is scanned: nothing of bob's, dave's or the
deleted photos' faces is left, while alice's and carol's people are intact (same ids, names and
members minus the deleted faces). Finally a re-upload of a deleted photo indexes normally.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from facefleet.common.config import Settings
from facefleet.common.documents import ImageStatus, decode_embedding, now
from facefleet.common.logs import JsonFormatter
from facefleet.common.messages import DeleteRequest, DetectionRequest, ErasureRequest
from facefleet.common.s3keys import image_key
from facefleet.infra.stack_config import worker_environment
from facefleet.tools.cli import main as facefleet
from facefleet.worker.detection.analyzer import FaceAnalyzer
from facefleet.worker.detection.service import DetectionService
from facefleet.worker.grouping.corrections import Corrections
from facefleet.worker.privacy.worker import build_service
from facefleet.worker.runtime.consumer import Consumer, ConsumerConfig, ReceivedMessage
from tests.e2e_support import FAST_WORKER_ENV, ROOT, E2EStack, provision_stack, queue_counts
from tests.flows_support import prefect_harness

EVENTS = ["s3:ObjectCreated:*", "s3:ObjectRemoved:*"]
# An embedding written out as numbers: 32 or more floats in a row (the dev model's are 128-d).
FLOAT_RUN = re.compile(r"-?\d*\.\d+(?:[eE][-+]?\d+)?(?:\s*,\s*-?\d*\.\d+(?:[eE][-+]?\d+)?){31,}")
# ... or as base64 of its bytes (128 float16 values: 344 characters).
BASE64_RUN = re.compile(r"[A-Za-z0-9+/]{200,}={0,2}")


@pytest.fixture(scope="module", autouse=True)
def harness() -> None:
    prefect_harness()


@pytest.fixture
def stack(env, tmp_path: Path, monkeypatch) -> Iterator[E2EStack]:
    monkeypatch.setenv("FACEFLEET_WORKDIR", str(ROOT))
    provisioned = provision_stack(
        env,
        tmp_path / "batch",
        config={"gallery_notification_events": EVENTS, "max_receive_count": 2},
    )
    try:
        yield provisioned
    finally:
        provisioned.close()


class Recorder:
    """A real SQS client that also keeps every body it sends."""

    def __init__(self, client: Any, bodies: list[str]) -> None:
        self._client, self._bodies = client, bodies

    def send_message(self, **kwargs: Any) -> Any:
        self._bodies.append(kwargs["MessageBody"])
        return self._client.send_message(**kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


class Workers:
    """The detection and grouping services on the stack's queues, in this process."""

    def __init__(self, stack: E2EStack, models_dir: Path) -> None:
        self.stack = stack
        self.bodies: list[str] = []
        self.lines: list[str] = []
        environment = {
            **stack.env.environment(),
            **worker_environment(stack.outputs),
            "GALLERY_IMAGES_MONGO_URI": stack.gallery_uri,
            "HUEMN_MONGO_URI": stack.huemn_uri,
            "MODEL_DIR": str(models_dir),
            **FAST_WORKER_ENV,
            "IDLE_EXIT_SECONDS": "2",
        }
        self.settings = Settings.from_env(environment)
        self.detection = DetectionService.from_settings(
            self.settings, FaceAnalyzer.from_pack(models_dir)
        )
        self.detection.sqs = Recorder(self.detection.sqs, self.bodies)
        self.grouping = build_service(self.settings)
        self.handler = _Capture(self.lines)

    def _recorded(self, handle: Callable[[list[ReceivedMessage]], Any]) -> Any:
        def run(batch: list[ReceivedMessage]) -> Any:
            self.bodies.extend(m.body for m in batch)
            return handle(batch)

        return run

    def drain(self, rounds: int = 8) -> None:
        root = logging.getLogger()
        root.addHandler(self.handler)
        level = root.level
        root.setLevel(logging.INFO)
        try:
            for _ in range(rounds):
                for url, handle in (
                    (self.settings.queue_url, self.detection.handle),
                    (self.settings.group_face_queue_url, self.grouping.handle),
                ):
                    config = ConsumerConfig.from_settings(self.settings, url)
                    Consumer(config, self._recorded(handle)).run()
                sqs = self.stack.sqs
                if queue_counts(sqs, self.stack.indexing_url) == (0, 0) and queue_counts(
                    sqs, self.stack.group_url
                ) == (0, 0):
                    return
            raise AssertionError(f"queues not drained:\n{self.stack.report()}")
        finally:
            root.removeHandler(self.handler)
            root.setLevel(level)

    def close(self) -> None:
        self.detection.close()


class _Capture(logging.Handler):
    def __init__(self, lines: list[str]) -> None:
        super().__init__(logging.INFO)
        self.lines = lines
        self.setFormatter(JsonFormatter({"service": "test"}))

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


def biometric(text: str) -> bool:
    return bool(FLOAT_RUN.search(text) or BASE64_RUN.search(text))


USERS = {
    "alice": [("gallery", "fr_obama"), ("gallery", "fr_biden"), ("groups", "obama_and_biden.jpg")],
    "bob": [("gallery", "fr_kit_harington"), ("gallery", "fr_rose_leslie")],
    "carol": [("gallery", "deepface_p12"), ("gallery", "deepface_p13")],
    "dave": [("gallery", "deepface_p08")],
}


def photos(faces_dir: Path) -> dict[str, dict[str, Path]]:
    """user -> image id -> file."""
    result: dict[str, dict[str, Path]] = {}
    for user, sources in USERS.items():
        files: dict[str, Path] = {}
        for folder, name in sources:
            path = faces_dir / folder / name
            stem = Path(name).stem.lower().replace("_", "-")
            for n, file in enumerate(sorted(path.iterdir()) if path.is_dir() else [path]):
                files[f"{stem}-{n}{file.suffix.lower()}"] = file
        result[user] = files
    return result


def snapshot_people(stack: E2EStack, user: str) -> dict[int, tuple[str | None, frozenset[str]]]:
    return {
        p["person_id"]: (p.get("name"), frozenset(p["member_face_ids"]))
        for p in stack.huemn()["people"].find({"user_id": user})
    }


def face_ids(stack: E2EStack, user: str, image_ids: list[str] | None = None) -> set[str]:
    query: dict[str, Any] = {"user_id": user}
    if image_ids is not None:
        query["image_id"] = {"$in": image_ids}
    return {f["_id"] for f in stack.gallery()["faces"].find(query, {"_id": 1})}


def walk(value: Any) -> Iterator[Any]:
    if isinstance(value, dict):
        for item in value.values():
            yield from walk(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from walk(item)
    else:
        yield value


def test_deleted_photos_and_erased_users_leave_nothing(
    stack: E2EStack, models_dir: Path, faces_dir: Path, monkeypatch
) -> None:
    s3, sqs = stack.s3, stack.sqs
    notifications = s3.get_bucket_notification_configuration(Bucket=stack.bucket)
    [queue] = notifications["QueueConfigurations"]
    assert queue["QueueArn"] == stack.outputs["IndexingQueueArn"]
    assert sorted(queue["Events"]) == EVENTS

    workers = Workers(stack, models_dir)
    gallery = photos(faces_dir)
    for user, files in gallery.items():
        for image_id, path in files.items():
            s3.put_object(
                Bucket=stack.bucket, Key=image_key(user, image_id), Body=path.read_bytes()
            )
    workers.drain()
    for user, files in gallery.items():
        statuses = stack.image_statuses(user)
        assert {i: statuses[i]["status"] for i in files} == dict.fromkeys(files, ImageStatus.DONE)
        stack.assert_grouped(user)
    before = {user: snapshot_people(stack, user) for user in gallery}
    assert before["alice"] and before["carol"] and before["bob"]

    # alice names the person of her first Biden photo, then deletes every Biden photo.
    biden = [i for i in gallery["alice"] if "biden" in i and "obama" not in i]
    group = next(i for i in gallery["alice"] if "obama" in i and "biden" in i)
    biden_faces = face_ids(stack, "alice", biden[:1])
    joe = next(p for p, (_, members) in before["alice"].items() if members & biden_faces)
    store = workers.grouping.store
    corrections = Corrections(store, s3=s3, bucket=stack.face_bucket)
    corrections.name("alice", joe, "Joe")
    before["alice"][joe] = ("Joe", before["alice"][joe][1])
    deleted = [*biden, group]
    gone = face_ids(stack, "alice", deleted)
    erased = {"bob", "dave"}
    bob_faces = face_ids(stack, "bob")
    erased_faces = bob_faces | face_ids(stack, "dave")
    forbidden_ids = gone | erased_faces
    forbidden_bytes = {
        bytes(f["embedding"])
        for f in stack.gallery()["faces"].find({"_id": {"$in": sorted(forbidden_ids)}})
    }
    assert gone and erased_faces and len(forbidden_bytes) == len(forbidden_ids)

    # Deletions: S3 deletes (ObjectRemoved events), and an explicit request for the last Biden
    # photo (the gallery keeps the object) overtaken by a late create of that photo.
    for image_id in deleted[:-2]:
        s3.delete_object(Bucket=stack.bucket, Key=image_key("alice", image_id))
    s3.delete_object(Bucket=stack.bucket, Key=image_key("alice", group))
    deleted_at = int(time.time() * 1000)
    last = deleted[-2]
    late = DetectionRequest(
        "alice", last, stack.bucket, image_key("alice", last), requested_at=deleted_at - 60_000
    )
    bad = [
        DeleteRequest("alice", "never-uploaded.jpg", deleted_at).to_body(),
        DeleteRequest("nobody", "x.jpg", deleted_at).to_body(),
    ]
    malformed = json.dumps({"type": "delete", "version": 1, "user_id": "alice"})
    for body in [DeleteRequest("alice", last, deleted_at).to_body(), *bad, malformed]:
        sqs.send_message(QueueUrl=stack.indexing_url, MessageBody=body)
    sqs.send_message(QueueUrl=stack.group_url, MessageBody=ErasureRequest("bob").to_body())
    workers.drain()
    sqs.send_message(QueueUrl=stack.indexing_url, MessageBody=late.to_body())
    # A create of bob's still waiting from before his erasure stores nothing either.
    bob_photo = next(iter(gallery["bob"]))
    stale = DetectionRequest(
        "bob", bob_photo, stack.bucket, image_key("bob", bob_photo), requested_at=deleted_at - 1
    )
    sqs.send_message(QueueUrl=stack.indexing_url, MessageBody=stale.to_body())
    # dave: the CLI, twice.
    monkeypatch.setenv("GALLERY_IMAGES_MONGO_URI", stack.gallery_uri)
    monkeypatch.setenv("HUEMN_MONGO_URI", stack.huemn_uri)
    monkeypatch.setenv("FACE_GROUP_BUCKET_NAME", stack.face_bucket)
    assert facefleet(["people", "erase", "--user", "dave"]) == 0
    assert facefleet(["people", "erase", "--user", "dave"]) == 0
    workers.drain()

    # -- the scan -----------------------------------------------------------------------------
    allowed_for_erased = {"tombstones", "erasure_receipts", "images"}
    for database in (stack.gallery(), stack.huemn()):
        for name in database.list_collection_names():
            for doc in database[name].find():
                values = [doc.get("_id"), *walk(doc)]
                texts = [v for v in values if isinstance(v, str)]
                blobs = [bytes(v) for v in values if isinstance(v, bytes)]
                where = f"{database.name}.{name} {doc.get('_id')!r}"
                assert not any(t in forbidden_ids for t in texts), f"a forgotten face id: {where}"
                assert not any(b in forbidden_bytes for b in blobs), f"an embedding: {where}"
                if doc.get("user_id") in erased:
                    assert name in allowed_for_erased, f"an erased user's document: {where}"
                    assert not blobs, where
                    assert int(doc.get("face_count", 0)) == 0, where
                if name == "images" and doc.get("user_id") == "alice":
                    assert doc["image_id"] not in deleted, where
    keys = [
        o["Key"]
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=stack.face_bucket)
        for o in page.get("Contents", [])
    ]
    forbidden_prefixes = (
        *(f"{kind}/{user}/" for user in erased for kind in ("faces", "people")),
        *(f"faces/alice/{image_id}/" for image_id in deleted),
    )
    assert not [k for k in keys if k.startswith(forbidden_prefixes)]

    # The others' people: same ids and names, members minus the deleted faces.
    expected_alice = {
        pid: (name, members - gone)
        for pid, (name, members) in before["alice"].items()
        if members - gone or name
    }
    assert snapshot_people(stack, "alice") == expected_alice
    assert expected_alice[joe] == ("Joe", frozenset())  # named, kept, empty
    assert snapshot_people(stack, "carol") == before["carol"]
    for person in stack.huemn()["people"].find({"user_id": "alice"}):
        members = person["member_face_ids"]
        assert person["face_count"] == len(members)
        if not members:
            assert person["cover_face_id"] is None and person["cover_key"] is None
            continue
        assert person["cover_face_id"] in members
        cover = s3.get_object(Bucket=stack.face_bucket, Key=person["cover_key"])["Body"].read()
        face = stack.gallery()["faces"].find_one({"_id": person["cover_face_id"]})
        crop = s3.get_object(Bucket=stack.face_bucket, Key=face["crop_key"])["Body"].read()
        assert cover == crop
    receipts = {r["user_id"]: r for r in stack.huemn()["erasure_receipts"].find()}
    assert receipts["bob"]["counts"]["gallery_faces"] == len(bob_faces)
    assert receipts["bob"]["counts"]["huemn_people"] == len(before["bob"])
    assert not biometric(json.dumps(receipts["bob"], default=str))
    dave_receipts = list(stack.huemn()["erasure_receipts"].find({"user_id": "dave"}))
    assert len(dave_receipts) == 2 and set(dave_receipts[-1]["counts"].values()) <= {0}
    assert queue_counts(sqs, stack.indexing_dlq_url) == (1, 0)  # the malformed delete
    assert queue_counts(sqs, stack.group_dlq_url) == (0, 0)

    # No biometric data in any message body or log line of the run (and the check can see it).
    assert not [b for b in workers.bodies if biometric(b)]
    assert not [line for line in workers.lines if biometric(line)]
    assert len(workers.bodies) > 30 and len(workers.lines) > 30
    sample = stack.gallery()["faces"].find_one({"user_id": "carol"})
    assert biometric(json.dumps(decode_embedding(bytes(sample["embedding"])).tolist()))

    # A re-upload of a deleted photo indexes normally.
    s3.put_object(
        Bucket=stack.bucket,
        Key=image_key("alice", biden[0]),
        Body=gallery["alice"][biden[0]].read_bytes(),
    )
    workers.drain()
    assert stack.image_statuses("alice")[biden[0]]["status"] == ImageStatus.DONE
    assert face_ids(stack, "alice", biden[:1])
    stack.assert_grouped("alice")
    workers.close()
    print(f"scanned at {now().isoformat()}: {len(keys)} keys, {len(workers.bodies)} bodies")
