"""Regression tests for the ordinary life of a photo (issue 22), against the moto server and
nx-27017 with the dev model: an edit saved over the same key, upload-delete-upload in one batch,
an overtaken store with two workers, a grouping request for a user with no faces, a lease that
expires while its holder works, abandoned leases and head-of-line blocking.

Each test failed on 95a0ee5 (the commit before the fixes)."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from facefleet.common.config import Settings
from facefleet.common.documents import ImageStatus
from facefleet.common.messages import GroupingRequest
from facefleet.common.s3keys import image_key
from facefleet.worker.detection.analyzer import FaceAnalyzer
from facefleet.worker.detection.service import DetectionService
from facefleet.worker.grouping.corrections import Corrections
from facefleet.worker.grouping.service import GroupingService
from facefleet.worker.grouping.store import GroupingStore
from facefleet.worker.privacy.worker import build_service
from facefleet.worker.runtime.consumer import Consumer, ConsumerConfig, ReceivedMessage
from facefleet.worker.runtime.outcome import Outcome
from tests.grouping_service_helpers import Gallery, Identities, Setup, make_setup, store_for
from tests.sqs_helpers import counts
from tests.test_detection_privacy import event as s3_event
from tests.test_detection_service import USER, Stack


@pytest.fixture(scope="module")
def analyzer(models_dir: Path) -> FaceAnalyzer:
    return FaceAnalyzer.from_pack(models_dir)


def created(stack: Stack, image_id: str, sequencer: str) -> str:
    return s3_event(stack, image_id, "ObjectCreated:Put", sequencer)


def removed(stack: Stack, image_id: str, sequencer: str) -> str:
    return s3_event(stack, image_id, "ObjectRemoved:Delete", sequencer)


def message(body: str, n: int) -> ReceivedMessage:
    return ReceivedMessage(f"m{n}", f"r{n}", body)


def crops_of(stack: Stack, image_id: str) -> set[str]:
    listed = stack.s3.list_objects_v2(Bucket=stack.face_bucket, Prefix=f"faces/{USER}/{image_id}/")
    return {o["Key"] for o in listed.get("Contents", [])}


def grouping(stack: Stack) -> GroupingService:
    return build_service(stack.settings())


def drain_grouping(stack: Stack, service: GroupingService) -> None:
    settings = stack.settings()
    config = ConsumerConfig.from_settings(settings, stack.group_queue.url)
    Consumer(config, service.handle).run()


def photo(faces_dir: Path, name: str) -> bytes:
    return (faces_dir / "groups" / name).read_bytes()


def assigned(store: GroupingStore, user_id: str) -> set[str]:
    """The faces grouping placed or keeps waiting (one assignment row each)."""
    return {r["_id"] for r in store.assignments.find({"user_id": user_id})}


def memberships(store: GroupingStore, user_id: str) -> dict[str, list[int]]:
    """face id -> the people holding it."""
    held: dict[str, list[int]] = {}
    for person in store.people.people_of_user(user_id):
        for face_id in person.member_face_ids:
            held.setdefault(face_id, []).append(person.person_id)
    return held


# -- 1. an edit saved over the same key --------------------------------------------------------


def test_an_edit_over_the_same_key_is_a_new_photo_version(
    env, analyzer: FaceAnalyzer, faces_dir: Path
) -> None:
    stack = Stack(env)
    stack.upload("p.jpg", photo(faces_dir, "couple.jpg"))
    stack.send(created(stack, "p.jpg", "0000000010"))
    assert stack.drain(analyzer) == 0
    service = grouping(stack)
    drain_grouping(stack, service)
    old = {f.doc_id for f in stack.repository.faces_of_images(USER, ["p.jpg"])}
    assert old and assigned(service.store, USER) == old

    # The phone app saves a rotated/cropped copy over the same key: other faces, other people.
    stack.upload("p.jpg", photo(faces_dir, "obama_and_biden.jpg"))
    stack.send(created(stack, "p.jpg", "0000000020"))
    assert stack.drain(analyzer) == 0
    drain_grouping(stack, service)

    faces = stack.repository.faces_of_images(USER, ["p.jpg"])
    new = {f.doc_id for f in faces}
    image = stack.repository.get_image(USER, "p.jpg")
    assert image is not None and image.status == ImageStatus.DONE
    assert new and not new & old, "the new version's faces must be new faces"
    assert image.face_count == len(new)
    assert crops_of(stack, "p.jpg") == {str(f.crop_key) for f in faces}
    held = memberships(service.store, USER)
    assert set(held) <= new and all(len(p) == 1 for p in held.values())
    assert assigned(service.store, USER) == new

    # The same bytes delivered again (a re-save without changes): nothing moves.
    stack.upload("p.jpg", photo(faces_dir, "obama_and_biden.jpg"))
    stack.send(created(stack, "p.jpg", "0000000030"))
    assert stack.drain(analyzer) == 0
    drain_grouping(stack, service)
    assert {f.doc_id for f in stack.repository.faces_of_images(USER, ["p.jpg"])} == new
    assert memberships(service.store, USER) == held


# -- 2. upload, delete, upload again in one batch ----------------------------------------------


def test_upload_delete_upload_in_one_batch_indexes_the_photo(
    env, analyzer: FaceAnalyzer, faces_dir: Path
) -> None:
    stack = Stack(env)
    stack.upload("q.jpg", photo(faces_dir, "couple.jpg"))
    service = DetectionService.from_settings(stack.settings(), analyzer)
    try:
        batch = [
            message(created(stack, "q.jpg", "0000000010"), 1),
            message(removed(stack, "q.jpg", "0000000020"), 2),
            message(created(stack, "q.jpg", "0000000030"), 3),
        ]
        outcomes = service.handle(batch)
    finally:
        service.close()
    assert set(outcomes.values()) == {Outcome.DONE}
    image = stack.repository.get_image(USER, "q.jpg")
    assert image is not None and image.status == ImageStatus.DONE and image.face_count >= 1
    assert len(stack.repository.faces_of_images(USER, ["q.jpg"])) == image.face_count


# -- 3. two workers: an overtaken store must not undo the newer one ----------------------------


class InterleavingS3:
    """The real S3 client; right after the first `get_object` returns, runs `meanwhile` (another
    worker's whole batch) before this worker goes on with the bytes it already holds."""

    def __init__(self, s3: Any, meanwhile: Callable[[], None]) -> None:
        self._s3 = s3
        self._meanwhile: Callable[[], None] | None = meanwhile

    def get_object(self, **kwargs: Any) -> Any:
        response = self._s3.get_object(**kwargs)
        response["Body"] = _Buffered(response["Body"].read())
        if self._meanwhile is not None:
            meanwhile, self._meanwhile = self._meanwhile, None
            meanwhile()
        return response

    def __getattr__(self, name: str) -> Any:
        return getattr(self._s3, name)


class _Buffered:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def read(self) -> bytes:
        return self.data

    def close(self) -> None:
        pass


def test_an_overtaken_store_leaves_the_newer_version_alone(
    env, analyzer: FaceAnalyzer, faces_dir: Path
) -> None:
    stack = Stack(env)
    stack.upload("r.jpg", photo(faces_dir, "couple.jpg"))
    worker_b = DetectionService.from_settings(stack.settings(), analyzer)

    def other_worker() -> None:
        # Worker A holds v1's bytes; meanwhile the user deletes the photo and uploads v2, and
        # worker B handles both events before A stores anything.
        stack.s3.delete_object(Bucket=stack.bucket, Key=image_key(USER, "r.jpg"))
        stack.upload("r.jpg", photo(faces_dir, "obama_and_biden.jpg"))
        outcomes = worker_b.handle(
            [
                message(removed(stack, "r.jpg", "0000000020"), 2),
                message(created(stack, "r.jpg", "0000000030"), 3),
            ]
        )
        assert set(outcomes.values()) == {Outcome.DONE}

    settings = stack.settings()
    worker_a = DetectionService.from_settings(settings, analyzer)
    worker_a.s3 = InterleavingS3(worker_a.s3, other_worker)
    try:
        outcomes = worker_a.handle([message(created(stack, "r.jpg", "0000000010"), 1)])
    finally:
        worker_a.close()
        worker_b.close()
    assert outcomes == {"m1": Outcome.DONE}
    image = stack.repository.get_image(USER, "r.jpg")
    faces = stack.repository.faces_of_images(USER, ["r.jpg"])
    assert image is not None and image.status == ImageStatus.DONE and image.face_count >= 1
    assert len(faces) == image.face_count, "the photo in S3 must keep its faces"
    assert crops_of(stack, "r.jpg") == {str(f.crop_key) for f in faces}


# -- 4. a grouping request for a user with no faces yet -----------------------------------------


@pytest.fixture
def setup(env, monkeypatch) -> Setup:
    return make_setup(env, monkeypatch)


def test_a_request_for_a_user_without_faces_caches_no_empty_state(setup: Setup) -> None:
    service = setup.service()
    stale = GroupingRequest("carol", ("gone.jpg",)).to_body()
    assert service.handle([message(stale, 1)]) == {"m1": Outcome.DONE}

    gallery = Gallery(setup.env, "carol", setup.bucket, Identities(2))
    image_ids = gallery.photos("c", 3, range(2))
    body = GroupingRequest("carol", tuple(image_ids)).to_body()
    assert service.handle([message(body, 2)]) == {"m2": Outcome.DONE}
    held = memberships(service.store, "carol")
    assert set(held) == set(gallery.truth), "every face placed, none dropped as another model"


# -- 5. a lease that expires while its holder works ---------------------------------------------


def _expire_lease(store: GroupingStore, user_id: str) -> None:
    """As if the holder stalled (a GC pause, a stopped VM) past its lease without renewing."""
    store.people.leases.update_one({"_id": user_id}, {"$set": {"expires_at": 0}})


def test_a_lease_lost_mid_write_fences_the_old_holder(setup: Setup) -> None:
    gallery = Gallery(setup.env, "dave", setup.bucket, Identities(4))
    first = gallery.photos("a", 2, [0, 1])
    second = gallery.photos("b", 2, [2, 3])
    store = store_for(setup.env)
    worker_b = setup.service()
    worker_a = setup.service()
    add = worker_a.add

    def add_then_lose_the_lease(session: Any, faces: Any) -> Any:
        update = add(session, faces)
        _expire_lease(store, "dave")
        b = worker_b.handle([message(GroupingRequest("dave", tuple(second)).to_body(), 2)])
        assert b == {"m2": Outcome.DONE}
        return update

    worker_a.add = add_then_lose_the_lease  # type: ignore[method-assign]
    body = GroupingRequest("dave", tuple(first)).to_body()
    assert worker_a.handle([message(body, 1)])["m1"] != Outcome.DONE
    worker_a.add = add  # type: ignore[method-assign]
    assert worker_a.handle([message(body, 3)]) == {"m3": Outcome.DONE}

    held = memberships(store, "dave")
    assert set(held) == set(gallery.truth) and all(len(p) == 1 for p in held.values())
    rows = {r["_id"]: r["person_id"] for r in store.assignments.find({"user_id": "dave"})}
    assert rows == {face: people[0] for face, people in held.items()}
    user = store.user_doc("dave") or {}
    assert user.get("face_count") == len(gallery.truth)


# -- 6. abandoned leases and head-of-line blocking ----------------------------------------------


def test_abandoned_leases_expire_in_about_a_minute(setup: Setup) -> None:
    service = build_service(Settings.from_env())
    assert service.lease_ttl <= timedelta(seconds=90)
    # `facefleet people consolidate` and the other corrections: a killed one frees the user too.
    corrections = Corrections(service.store, s3=service.s3, bucket=service.bucket)
    assert corrections.lease_ttl <= timedelta(seconds=90)


def test_a_leased_user_does_not_hold_up_the_others(setup: Setup) -> None:
    gallery = Gallery(setup.env, "erin", setup.bucket, Identities(2))
    busy = gallery.photos("e", 1, range(2))
    other = Gallery(setup.env, "fay", setup.bucket, Identities(2, seed=9))
    free = other.photos("f", 2, range(2))
    store = store_for(setup.env)
    store.people.acquire_lease("erin", "consolidating-elsewhere", timedelta(minutes=1))
    setup.request("erin", busy)
    setup.request("fay", free)
    service = setup.service()
    config = ConsumerConfig(
        queue_url=setup.queue.url,
        batch_size=10,
        visibility_timeout=30,
        poll_wait_seconds=1,
        idle_exit_seconds=1.0,
        backoff_initial_seconds=0.5,
        backoff_max_seconds=2.0,
        max_outage_seconds=20.0,
        aws=setup.env.aws,
    )
    consumer = Consumer(config, service.handle)
    batch: list[ReceivedMessage] = []
    deadline = time.monotonic() + 10
    while len(batch) < 2 and time.monotonic() < deadline:
        batch += consumer.receive(1)
    assert len(batch) == 2
    started = time.monotonic()
    consumer.process(batch)
    assert time.monotonic() - started < 10, "the free user's work waited on the leased user"
    assert set(memberships(store, "fay")) == set(other.truth)
    # The leased user's message went back to the queue, neither deleted nor dead-lettered.
    assert counts(setup.env, setup.queue.dlq_url) == (0, 0)
    assert sum(counts(setup.env, setup.queue.url)) == 1
