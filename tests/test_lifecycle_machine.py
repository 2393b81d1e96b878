"""The photo lifecycle as a hypothesis state machine (issue 22): the index is a function of what
the gallery holds, under any interleaving.

What is real: the moto server (S3 and SQS), nx-27017, the dev model pack (detection and
recognition run on every delivered create), `DetectionService.handle` and `GroupingService.handle`
(two of each), `Corrections` (name, merge, consolidate). What the test supplies: S3 notification
bodies with `sequencer` values as S3 sends them (moto sends no notifications), delivered to
either detection worker in any order, duplicated or not; kills at any write of a store (a
`BaseException` raised at a fault point: the message is not settled and comes back); a grouping
lease that expires while its holder writes (another worker takes the user over meanwhile).

The reference model is the gallery as S3 holds it: key -> (bytes, upload time). After every
drain (every pending event delivered, the group queue worked empty):
- image and face documents are exactly a function of the objects S3 holds now (the version
  stored is the object's ETag, its face count its faces; no document for a deleted photo or one
  uploaded before an erasure);
- every face of a present photo has exactly one assignment (placed or waiting); no assignment,
  crop or cover without its face; no person holds a face of a deleted or replaced version, and
  no face is in two people; named people keep their names; person ids are unique.

CI runs 10 fixed (derandomized) examples of up to 30 steps (about 270 steps and 40 faces, ~20 s
on the shared 2-core host; LIFECYCLE_EXAMPLES=N runs more); `--run-slow` runs 200 fresh random
examples of up to 50 steps. Every failure it found is a fixed example at the end of this file.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from facefleet.common.config import Settings
from facefleet.common.messages import ErasureRequest, now_ms
from facefleet.common.s3keys import image_key
from facefleet.worker.detection.analyzer import FaceAnalyzer
from facefleet.worker.detection.service import DetectionService
from facefleet.worker.grouping.corrections import Corrections
from facefleet.worker.grouping.service import GroupingService
from facefleet.worker.privacy.worker import build_service
from facefleet.worker.runtime.consumer import ReceivedMessage
from facefleet.worker.runtime.outcome import Outcome
from tests.sqs_helpers import create_bucket, create_queue

PHOTOS = [
    ("lfw", "Colin_Powell", 0),
    ("lfw", "Colin_Powell", 1),
    ("lfw", "Colin_Powell", 2),
    ("lfw", "Tony_Blair", 0),
    ("lfw", "Tony_Blair", 1),
    ("groups", "couple.jpg", 0),
]
KEYS = ["a.jpg", "b.jpg", "c.jpg", "d.jpg"]
FAULT_POINTS = ["claim", "faces", "crops", "commit", "supersede", "drop-image"]


class Killed(BaseException):
    """The worker process died at a write (not an Exception: nothing in the handler catches it)."""


def load_photos(faces_dir: Path) -> list[bytes]:
    photos = []
    for folder, name, index in PHOTOS:
        if folder == "lfw":
            path = sorted((faces_dir / "lfw" / name).iterdir())[index]
        else:
            path = faces_dir / folder / name
        photos.append(path.read_bytes())
    return photos


class World:
    """The servers' resources shared by every example (each example is its own user)."""

    def __init__(self, env: Any, analyzer: FaceAnalyzer, photos: list[bytes]) -> None:
        names = env.names
        self.env = env
        self.analyzer = analyzer
        self.photos = photos
        self.bucket = create_bucket(env, f"{names.prefix}-gallery")
        self.face_bucket = create_bucket(env, f"{names.prefix}-faces")
        self.indexing = create_queue(env, names.indexing_queue)
        self.group_queue = create_queue(env, names.group_face_queue, max_receive_count=50)
        self.s3 = env.aws.client("s3")
        self.sqs = env.aws.client("sqs")
        self.settings = Settings.from_env(
            {
                **env.environment(),
                "QUEUE_URL": self.indexing.url,
                "GROUP_FACE_QUEUE_URL": self.group_queue.url,
                "BUCKET_NAME": self.bucket,
                "FACE_GROUP_BUCKET_NAME": self.face_bucket,
                "MAX_FACE_WORKERS": "2",
            }
        )
        self.detection = [DetectionService.from_settings(self.settings, analyzer) for _ in "ab"]
        self.grouping = [build_service(self.settings) for _ in "ab"]
        self.corrections = Corrections(
            self.grouping[0].store, s3=self.s3, bucket=self.face_bucket, lease_wait_seconds=5
        )
        self.users = 0
        self.steps = 0
        self.faces_checked = 0

    def close(self) -> None:
        for service in self.detection:
            service.close()


def event(bucket: str, user: str, key: str, created: bool, sequencer: int, at_ms: int) -> str:
    """An S3 notification as S3 sends it, with the per-key sequencer (hexadecimal)."""
    when = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(at_ms / 1000))
    record = {
        "eventName": "ObjectCreated:Put" if created else "ObjectRemoved:Delete",
        "eventTime": f"{when}.{at_ms % 1000:03d}Z",
        "s3": {
            "bucket": {"name": bucket},
            "object": {"key": quote_plus(image_key(user, key)), "sequencer": f"{sequencer:016X}"},
        },
    }
    return json.dumps({"Records": [record]})


def lifecycle_machine(world: World) -> type[RuleBasedStateMachine]:
    class Lifecycle(RuleBasedStateMachine):
        """One user's gallery; the reference model is what S3 holds."""

        @initialize()
        def start(self) -> None:
            self.world = world
            world.users += 1
            self.user = f"{world.env.names.prefix}-u{world.users}"
            self.gallery: dict[str, tuple[int, int]] = {}  # key -> (photo, upload ms)
            self.pending: list[str] = []  # undelivered indexing bodies
            self.sequencer = 0
            self.erased_at = 0
            self.erasing = False
            self.names: dict[int, str] = {}
            self.messages = 0

        # -- the gallery (S3) -----------------------------------------------------------------

        def _emit(self, key: str, created: bool, at_ms: int) -> None:
            self.sequencer += 1
            body = event(world.bucket, self.user, key, created, self.sequencer, at_ms)
            self.pending.append(body)

        @rule(key=st.sampled_from(KEYS), photo=st.integers(0, len(PHOTOS) - 1))
        def upload(self, key: str, photo: int) -> None:
            """An upload, an overwrite with new content, or the same bytes again."""
            world.s3.put_object(
                Bucket=world.bucket, Key=image_key(self.user, key), Body=world.photos[photo]
            )
            at = max(now_ms(), self.erased_at + 1)
            self.gallery[key] = (photo, at)
            self._emit(key, True, at)

        @rule(
            uploads=st.lists(
                st.tuples(st.sampled_from(KEYS), st.integers(0, len(PHOTOS) - 1)),
                min_size=2,
                max_size=4,
            )
        )
        def upload_several(self, uploads: list[tuple[str, int]]) -> None:
            """A burst of uploads (a phone syncing), so the gallery fills up."""
            for key, photo in uploads:
                self.upload(key, photo)

        @rule(key=st.sampled_from(KEYS))
        def delete(self, key: str) -> None:
            world.s3.delete_object(Bucket=world.bucket, Key=image_key(self.user, key))
            self.gallery.pop(key, None)
            self._emit(key, False, now_ms())

        # -- delivery ---------------------------------------------------------------------------

        def _handle(self, worker: int, body: str, fault: Callable[[str], None] | None) -> bool:
            """True when the message is settled (deleted from the queue)."""
            service = world.detection[worker]
            service.fault = fault
            self.messages += 1
            message = ReceivedMessage(f"m{self.messages}", f"r{self.messages}", body)
            try:
                outcomes = service.handle([message])
            except Killed:
                return False
            finally:
                service.fault = None
            return outcomes[message.message_id] is Outcome.DONE

        @precondition(lambda self: self.pending)
        @rule(
            data=st.data(),
            worker=st.integers(0, 1),
            duplicate=st.booleans(),
        )
        def deliver(self, data: st.DataObject, worker: int, duplicate: bool) -> None:
            """Any pending event (out of order), to either worker; a duplicate stays pending."""
            position = data.draw(st.integers(0, len(self.pending) - 1))
            body = self.pending[position]
            if self._handle(worker, body, None) and not duplicate:
                self.pending.pop(position)

        @precondition(lambda self: self.pending)
        @rule(data=st.data(), point=st.sampled_from(FAULT_POINTS), skip=st.integers(0, 1))
        def kill_at_a_write(self, data: st.DataObject, point: str, skip: int) -> None:
            """The worker dies at a write: the message comes back later (redelivery)."""
            position = data.draw(st.integers(0, len(self.pending) - 1))
            seen = {"count": 0}

            def fault(step: str) -> None:
                if step == point:
                    seen["count"] += 1
                    if seen["count"] > skip:
                        raise Killed(step)

            if self._handle(0, self.pending[position], fault):
                self.pending.pop(position)

        # -- grouping side ------------------------------------------------------------------------

        # Once per example, after some history: an erasure empties the user.
        @precondition(lambda self: self.erased_at == 0 and self.sequencer >= 6)
        @rule()
        def erase(self) -> None:
            self.erased_at = now_ms()
            self.erasing = True
            self.names.clear()
            body = ErasureRequest(self.user, self.erased_at).to_body()
            world.sqs.send_message(QueueUrl=world.group_queue.url, MessageBody=body)

        # Names given while an erasure waits in the queue go with it: name after the drain.
        @precondition(lambda self: not self.erasing)
        @rule(data=st.data())
        def name_someone(self, data: st.DataObject) -> None:
            people = world.grouping[0].store.people.people_of_user(self.user)
            if not people:
                return
            person = data.draw(st.sampled_from(people))
            name = f"n{person.person_id}"
            named = world.corrections.name(self.user, person.person_id, name)
            self.names[named] = name

        @precondition(lambda self: not self.erasing)
        @rule(data=st.data())
        def merge_two(self, data: st.DataObject) -> None:
            people = world.grouping[0].store.people.people_of_user(self.user)
            if len(people) < 2:
                return
            keep, absorb = data.draw(st.permutations(people))[:2]
            kept = world.corrections.merge(self.user, keep.person_id, absorb.person_id)
            name = self.names.pop(absorb.person_id, None)
            if name is not None and kept not in self.names and keep.name is None:
                self.names[kept] = name

        @rule()
        def consolidate(self) -> None:
            if world.grouping[0].store.user_doc(self.user):
                world.corrections.consolidate(self.user)

        @rule(worker=st.integers(0, 1))
        def group_some(self, worker: int) -> None:
            self._group_batch(world.grouping[worker])

        @rule()
        def lease_expires_mid_write(self) -> None:
            """Worker A's lease lapses after it placed faces and before it writes; worker B takes
            the user over and works the queue. A's writes must be refused (its messages back)."""
            first, second = world.grouping
            add = first.add

            def add_then_stall(session: Any, faces: Any) -> Any:
                update = add(session, faces)
                first.store.people.leases.update_one(
                    {"_id": self.user}, {"$set": {"expires_at": 0}}
                )
                self._group_batch(second)
                return update

            first.add = add_then_stall  # type: ignore[method-assign]
            try:
                self._group_batch(first)
            finally:
                first.add = add  # type: ignore[method-assign]

        def _group_batch(self, service: GroupingService) -> int:
            response = world.sqs.receive_message(
                QueueUrl=world.group_queue.url, MaxNumberOfMessages=10, VisibilityTimeout=30
            )
            batch = [ReceivedMessage.from_sqs(m) for m in response.get("Messages", [])]
            if not batch:
                return 0
            outcomes = service.handle(batch)
            for message in batch:
                if outcomes.get(message.message_id) is Outcome.DONE:
                    world.sqs.delete_message(
                        QueueUrl=world.group_queue.url, ReceiptHandle=message.receipt_handle
                    )
                else:
                    assert outcomes.get(message.message_id) is not Outcome.MALFORMED, message.body
                    world.sqs.change_message_visibility(
                        QueueUrl=world.group_queue.url,
                        ReceiptHandle=message.receipt_handle,
                        VisibilityTimeout=0,
                    )
            return len(batch)

        # -- the drain and what must hold after it -----------------------------------------------

        def _drain(self) -> None:
            for _ in range(3 * len(self.pending) + 3):
                if not self.pending:
                    break
                if self._handle(0, self.pending[0], None):
                    self.pending.pop(0)
            assert not self.pending, "indexing messages never settled"
            idle = 0
            for _ in range(200):
                idle = idle + 1 if self._group_batch(world.grouping[0]) == 0 else 0
                if idle >= 2:
                    self.erasing = False
                    return
            raise AssertionError("the group queue never drained")

        @rule()
        def drain_and_check(self) -> None:
            self._drain()
            self._check()

        def teardown(self) -> None:
            self._drain()
            self._check()

        def _check(self) -> None:
            store = world.grouping[0].store
            gallery = store.gallery
            user = self.user
            images = {d["image_id"]: d for d in gallery.images.find({"user_id": user})}
            faces = list(gallery.faces.find({"user_id": user}, {"embedding": 0}))
            indexed = {
                key for key, (_, at) in self.gallery.items() if at > self.erased_at
            }  # uploaded after the last erasure
            # Image and face documents: a function of what S3 holds.
            for key in KEYS:
                if key not in indexed:
                    assert key not in images or images[key].get("face_count", 0) == 0, key
                    assert not [f for f in faces if f["image_id"] == key], key
                    continue
                head = world.s3.head_object(Bucket=world.bucket, Key=image_key(user, key))
                doc = images.get(key)
                assert doc is not None and doc["status"] == "done", (key, doc)
                assert doc["version"] == "e:" + head["ETag"].strip('"'), key
                mine = [f for f in faces if f["image_id"] == key]
                assert len(mine) == doc["face_count"], key
                assert all(f["version"] == doc["version"] for f in mine), key
            present = {f["_id"] for f in faces}
            world.faces_checked += len(present)
            # Every face assigned or waiting exactly once; no assignment without its face.
            rows = list(store.assignments.find({"user_id": user}))
            assert sorted(r["_id"] for r in rows) == sorted(present)
            # People: members are present faces, no face twice, assignments agree.
            people = store.people.people_of_user(user)
            ids = [p.person_id for p in people]
            assert len(ids) == len(set(ids))
            held: dict[str, int] = {}
            for person in people:
                for face_id in person.member_face_ids:
                    assert face_id in present, "a person holds a face of a gone version"
                    assert face_id not in held, "a face in two people"
                    held[face_id] = person.person_id
                if person.cover_face_id is not None:
                    assert person.cover_face_id in person.member_face_ids
            for row in rows:
                assert held.get(row["_id"]) == row["person_id"], row
            # Names the user gave stay.
            named = {p.person_id: p.name for p in people}
            for person_id, name in self.names.items():
                assert named.get(person_id) == name, (person_id, name)
            # No crop or cover without its face or person.
            crops = _keys(world.s3, world.face_bucket, f"faces/{user}/")
            assert crops == {f["crop_key"] for f in faces if f.get("crop_key")}
            covers = _keys(world.s3, world.face_bucket, f"people/{user}/")
            assert covers == {p.cover_key for p in people if p.cover_key}

        @invariant()
        def count_steps(self) -> None:
            world.steps += 1

    return Lifecycle


def _keys(s3: Any, bucket: str, prefix: str) -> set[str]:
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return {o["Key"] for page in pages for o in page.get("Contents", [])}


@pytest.fixture(scope="module")
def analyzer(models_dir: Path) -> FaceAnalyzer:
    return FaceAnalyzer.from_pack(models_dir)


def _run(
    env: Any,
    analyzer: FaceAnalyzer,
    faces_dir: Path,
    examples: int,
    steps: int,
    derandomize: bool = True,
) -> None:
    world = World(env, analyzer, load_photos(faces_dir))
    machine = lifecycle_machine(world)
    machine.TestCase.settings = settings(
        max_examples=examples,
        stateful_step_count=steps,
        deadline=None,
        derandomize=derandomize,
        suppress_health_check=list(HealthCheck),
        database=None,
    )
    try:
        machine.TestCase().runTest()
    finally:
        world.close()
    print(f"lifecycle machine: {world.users} examples, {world.steps} steps, ", end="")
    print(f"{world.faces_checked} faces checked")
    # The run really stepped and really indexed faces.
    assert world.steps >= examples * steps // 3 and world.faces_checked > 0


def test_the_index_follows_the_gallery(env, analyzer: FaceAnalyzer, faces_dir: Path) -> None:
    examples = int(os.environ.get("LIFECYCLE_EXAMPLES", 10))
    _run(env, analyzer, faces_dir, examples, steps=30)


@pytest.mark.slow
def test_the_index_follows_the_gallery_long(env, analyzer: FaceAnalyzer, faces_dir: Path) -> None:
    # Fresh random examples every run (CI's are fixed).
    _run(env, analyzer, faces_dir, examples=200, steps=50, derandomize=False)


# -- what the machine found (each a fixed example; failed before its fix) ------------------------


def _replay(
    env: Any, analyzer: FaceAnalyzer, faces_dir: Path, steps: Callable[[Any], None]
) -> None:
    world = World(env, analyzer, load_photos(faces_dir))
    try:
        machine: Any = lifecycle_machine(world)()
        machine.start()
        steps(machine)
        machine.teardown()
    finally:
        world.close()


def test_found_a_person_emptied_by_a_replaced_photo_keeps_no_cover(
    env, analyzer: FaceAnalyzer, faces_dir: Path
) -> None:
    """Both photos saved over with the same new content: the people of their old faces are
    emptied and deleted, and their cover copies must go too (one stayed behind)."""

    def steps(m: Any) -> None:
        m.upload(key="c.jpg", photo=0)
        m.drain_and_check()
        m.upload(key="a.jpg", photo=2)
        m.drain_and_check()
        m.upload(key="c.jpg", photo=4)
        m.upload(key="a.jpg", photo=4)

    _replay(env, analyzer, faces_dir, steps)


def test_found_a_kill_after_the_commit_still_removes_the_old_version(
    env, analyzer: FaceAnalyzer, faces_dir: Path
) -> None:
    """Killed after committing a new version and before removing the old version's faces: the
    redelivered create finds its version stored (the same bytes) and must still finish the
    replacement (the old faces stayed, two faces for a one-face photo)."""

    def steps(m: Any) -> None:
        m.upload(key="c.jpg", photo=5)
        m.drain_and_check()
        m.upload(key="c.jpg", photo=4)
        m.kill_at_a_write(_Data(0), "supersede", 0)

    _replay(env, analyzer, faces_dir, steps)


class _Data:
    """Stands in for hypothesis' `st.data()` in a fixed example: draws a fixed value."""

    def __init__(self, value: Any) -> None:
        self.value = value

    def draw(self, strategy: Any) -> Any:
        return self.value


def test_found_a_named_person_emptied_by_replaced_photos_keeps_no_cover(
    env, analyzer: FaceAnalyzer, faces_dir: Path
) -> None:
    """A named person whose faces all go (their photos saved over) stays, named and empty, but
    its cover copy, a crop of a face that is gone, must go (it stayed)."""

    def steps(m: Any) -> None:
        m.upload(key="a.jpg", photo=0)
        m.upload(key="b.jpg", photo=1)
        m.upload(key="c.jpg", photo=2)
        m.drain_and_check()
        people = world_of(m).grouping[0].store.people.people_of_user(m.user)
        assert people, "the three photos of one person make a person"
        m.name_someone(_Data(people[0]))
        for key in ("a.jpg", "b.jpg", "c.jpg"):
            m.upload(key=key, photo=3)
        m.drain_and_check()

    _replay(env, analyzer, faces_dir, steps)


def world_of(machine: Any) -> World:
    world: World = machine.world
    return world
