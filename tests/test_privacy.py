"""Forgetting faces, against the moto server and nx-27017 (no model): event order, tombstones,
a deleted photo taken out of people, user erasure and its receipt, the opt-out, bad input."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from facefleet.common.documents import encode_time, now
from facefleet.common.messages import (
    DeleteRequest,
    DetectionRequest,
    ErasureRequest,
    EventOrder,
    ForgetRequest,
    GroupingRequest,
    MalformedMessage,
    happened_after,
    parse_group_queue_message,
    parse_indexing_message,
)
from facefleet.common.privacy import PrivacyRepository
from facefleet.common.s3keys import image_key
from facefleet.worker.grouping.corrections import Corrections
from facefleet.worker.privacy.erasure import erase_user, receipts_of
from facefleet.worker.privacy.photos import delete_photo, drop_image_docs
from facefleet.worker.runtime.consumer import ReceivedMessage
from facefleet.worker.runtime.outcome import Outcome
from tests.grouping_service_helpers import Gallery, Identities, Setup, make_setup, people, store_for
from tests.sqs_helpers import send

# -- order: pure ------------------------------------------------------------------------------

hex_sequencers = st.text("0123456789ABCDEF", min_size=1, max_size=20)


def test_sequencers_compare_after_right_padding() -> None:
    # S3's documented rule: pad the shorter with zeros on the right, then compare.
    assert happened_after(EventOrder(sequencer="0A1B2C3D4E5F6A7B"), EventOrder(sequencer="0A1B"))
    assert not happened_after(EventOrder(sequencer="0A1B"), EventOrder(sequencer="0A1B0000"))
    assert happened_after(EventOrder(sequencer="0A2"), EventOrder(sequencer="0A1FFFFF"))
    # Sequencers win over times (clocks may disagree); without both, times decide.
    assert happened_after(EventOrder(1, "0B"), EventOrder(5, "0A"))
    assert happened_after(EventOrder(6, None), EventOrder(5, "0A"))
    # An unordered create never beats a delete.
    assert not happened_after(EventOrder(), EventOrder(5))
    assert not happened_after(EventOrder(5), EventOrder(5))


@given(hex_sequencers, hex_sequencers)
def test_order_is_strict_and_antisymmetric(a: str, b: str) -> None:
    first, second = EventOrder(sequencer=a), EventOrder(sequencer=b)
    assert not (happened_after(first, second) and happened_after(second, first))
    assert not happened_after(first, first)


# -- schemas ------------------------------------------------------------------------------------


def removed_event(key: str, sequencer: str | None = "00AA", when: str = "2026-01-01T00:00:01.000Z"):
    obj: dict[str, Any] = {"key": key}
    if sequencer:
        obj["sequencer"] = sequencer
    record = {
        "eventName": "ObjectRemoved:Delete",
        "eventTime": when,
        "s3": {"bucket": {"name": "gallery"}, "object": obj},
    }
    return json.dumps({"Records": [record]})


def test_delete_messages_parse() -> None:
    explicit = DeleteRequest("u1", "a.jpg", 1234)
    assert parse_indexing_message(explicit.to_body()) == [explicit]
    [from_s3] = parse_indexing_message(removed_event("users/u1/a.jpg"))
    assert from_s3 == DeleteRequest("u1", "a.jpg", 1767225601000, "00AA")
    for request in (
        ForgetRequest("u1", ("a.jpg",)),
        ErasureRequest("u1", 5, "opt_out"),
        GroupingRequest("u1", ("a",)),
    ):
        assert parse_group_queue_message(request.to_body()) == request
    # Requests carry ids and times only.
    assert set(json.loads(explicit.to_body())) == {
        "type",
        "user_id",
        "image_id",
        "requested_at",
        "version",
    }


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (json.dumps({"type": "delete", "version": 1, "user_id": "u1"}), "image_id"),
        (
            json.dumps({"type": "delete", "version": 1, "user_id": "u1", "image_id": "a"}),
            "requested_at",
        ),
        (
            json.dumps(
                {
                    "type": "delete",
                    "version": 9,
                    "user_id": "u1",
                    "image_id": "a",
                    "requested_at": 1,
                }
            ),
            "unknown schema version",
        ),
        (removed_event("users/u1/a.jpg", sequencer="xyz"), "not hexadecimal"),
        (removed_event("elsewhere/a.jpg"), "not under"),
    ],
)
def test_malformed_deletes(body: str, fragment: str) -> None:
    with pytest.raises(MalformedMessage, match=fragment):
        parse_indexing_message(body)


def test_malformed_erasures() -> None:
    with pytest.raises(MalformedMessage, match="requested_at"):
        parse_group_queue_message(json.dumps({"type": "erase", "version": 1, "user_id": "u"}))
    with pytest.raises(MalformedMessage, match="reason"):
        parse_group_queue_message(
            ErasureRequest("u", 1).to_body().replace('"request"', '"because"')
        )


# -- tombstones: a delete overtaking its create ---------------------------------------------------


def test_tombstones_block_older_creates_and_let_re_uploads_through(env) -> None:
    gallery_db = store_for(env).gallery.faces.database
    privacy = PrivacyRepository(gallery_db)
    user = f"{env.names.prefix}-tomb"

    def create(image: str, at: int | None, sequencer: str | None = None) -> DetectionRequest:
        return DetectionRequest(user, image, "g", image_key(user, image), 1, at, sequencer)

    privacy.mark_deleted(user, "a", EventOrder(1000, "0010"))
    privacy.mark_deleted(user, "a", EventOrder(900, "0008"))  # an older delete keeps the newer
    privacy.mark_deleted(user, "b", EventOrder(2000))
    blocked = privacy.blocked(
        [
            create("a", 5000, "0009"),  # the overtaken create: older sequencer
            create("b", 1500),  # explicit request, older than the delete
            create("b", None),  # a legacy body with no position
            create("c", 10),  # never deleted
        ]
    )
    assert blocked == ["photo deleted", "photo deleted", "photo deleted", None]
    assert privacy.blocked([create("a", 1, "0011"), create("b", 2001)]) == [None, None]
    # Judged per create, never per key: the older create's block skips no re-upload.
    assert privacy.blocked([create("a", 1, "0009"), create("a", 1, "0011")]) == [
        "photo deleted",
        None,
    ]

    privacy.mark_erased(user, 3000)
    assert privacy.blocked([create("c", 2999)]) == ["user erased"]
    assert privacy.blocked([create("c", 3001)]) == [None]


# -- grouping: a deleted photo leaves its people -------------------------------------------------


@pytest.fixture
def setup(env, monkeypatch) -> Setup:
    return make_setup(env, monkeypatch, max_receive_count=1)


def message(body: str, n: int = 0) -> ReceivedMessage:
    return ReceivedMessage(f"m{n}", f"r{n}", body, 1)


def grouped_gallery(setup: Setup, user: str) -> tuple[Gallery, Any]:
    g = Gallery(setup.env, user, setup.bucket, Identities(3, seed=11))
    image_ids = g.photos("p", 4, range(3))
    service = setup.service()
    assert service.handle([message(GroupingRequest(user, tuple(image_ids)).to_body())]) == {
        "m0": Outcome.DONE
    }
    return g, service


def delete(setup: Setup, user: str, image_ids: list[str], at: int) -> None:
    store = store_for(setup.env)
    privacy = PrivacyRepository(store.gallery.faces.database)
    s3 = setup.env.aws.client("s3")
    for image_id in image_ids:
        delete_photo(store.gallery, privacy, s3, setup.bucket, DeleteRequest(user, image_id, at))
    drop_image_docs(store.gallery, user, image_ids, EventOrder(at))


def test_forget_rewrites_people_and_keeps_a_named_one_empty(setup: Setup) -> None:
    user = f"{setup.env.names.prefix}-forget"
    g, service = grouped_gallery(setup, user)
    before = people(setup.env, user)
    assert len(before) == 3
    owner = {g.truth[next(iter(p["members"]))]: pid for pid, p in before.items()}
    s3 = setup.env.aws.client("s3")
    store = store_for(setup.env)
    Corrections(store, s3=s3, bucket=setup.bucket).name(user, owner[0], "Ada")

    # Identity 0: every photo goes (the person is named: kept, empty). Identity 1: every photo
    # goes (unnamed: removed with its cover). Identity 2: its cover face's photo goes.
    cover_2 = before[owner[2]]["cover"]
    cover_photo = next(f.image_id for f in store.gallery.faces_of_user(user) if f.doc_id == cover_2)
    gone = [f"p{i:02d}x{n:02d}" for i in (0, 1) for n in range(4)] + [cover_photo]
    gone_faces = _faces_of(store, user, gone)
    delete(setup, user, gone, encode_time(now()))
    body = ForgetRequest(user, tuple(gone)).to_body()
    assert service.handle([message(body)]) == {"m0": Outcome.DONE}

    after = people(setup.env, user)
    assert set(after) == {owner[0], owner[2]}
    assert after[owner[0]]["name"] == "Ada" and after[owner[0]]["members"] == frozenset()
    assert after[owner[0]]["cover"] is None and after[owner[0]]["cover_key"] is None
    assert after[owner[2]]["members"] == before[owner[2]]["members"] - gone_faces
    assert after[owner[2]]["cover"] not in gone_faces and after[owner[2]]["cover"] is not None
    # The cover object holds the new cover face's crop, and no cover of a gone face is left.
    new_cover = after[owner[2]]
    crop = next(
        f.crop_key for f in store.gallery.faces_of_user(user) if f.doc_id == new_cover["cover"]
    )
    assert _body(s3, setup.bucket, new_cover["cover_key"]) == _body(s3, setup.bucket, crop)
    keys = _keys(s3, setup.bucket, f"people/{user}/")
    assert keys == {new_cover["cover_key"]}
    stored = store.people.people.find_one({"user_id": user, "person_id": owner[2]})
    assert stored["face_count"] == len(new_cover["members"])
    assignments = {a["_id"] for a in store.assignments.find({"user_id": user})}
    assert not assignments & gone_faces
    assert not any(_keys(s3, setup.bucket, f"crops/{user}/{i}/") for i in gone)
    assert _keys(s3, setup.bucket, f"crops/{user}/")  # the other photos' crops stay

    # Idempotent: again, nothing changes. The cached session is rebuilt without the faces.
    assert service.handle([message(body)]) == {"m0": Outcome.DONE}
    assert people(setup.env, user) == after
    session = service.session(user, None)
    assert not set(session.state.face_ids) & gone_faces
    assert session.index is not None and session.index.matches(len(session.state.face_ids))


def _faces_of(store: Any, user: str, image_ids: list[str]) -> set[str]:
    return {f.doc_id for f in store.gallery.faces_of_images(user, image_ids)}


def _keys(s3: Any, bucket: str, prefix: str) -> set[str]:
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return {o["Key"] for page in pages for o in page.get("Contents", [])}


def _body(s3: Any, bucket: str, key: str) -> bytes:
    return s3.get_object(Bucket=bucket, Key=key)["Body"].read()


# -- erasure ------------------------------------------------------------------------------------


def test_erasure_removes_everything_writes_a_receipt_and_is_safe_twice(setup: Setup) -> None:
    user = f"{setup.env.names.prefix}-erase"
    other = f"{setup.env.names.prefix}-keep"
    grouped_gallery(setup, user)
    _, service = grouped_gallery(setup, other)
    kept = people(setup.env, other)
    store = store_for(setup.env)
    s3 = setup.env.aws.client("s3")
    Corrections(store, s3=s3, bucket=setup.bucket).name(user, 1, "Bo")
    faces = store.gallery.count_faces(user)

    body = ErasureRequest(user).to_body()
    assert service.handle([message(body)]) == {"m0": Outcome.DONE}
    [receipt] = receipts_of(store, user)
    counts = receipt["counts"]
    assert counts["gallery_faces"] == faces == counts["huemn_assignments"] == 12
    assert counts["s3_other_keys"] == faces  # this helper's crops live under crops/
    assert counts["huemn_people"] == 3 and counts["s3_covers"] == 3
    assert counts["huemn_grouping_users"] == 1 and counts["huemn_corrections"] == 1
    assert counts["gallery_images_cleared"] == 12
    assert set(receipt) == {
        "_id",
        "user_id",
        "reason",
        "requested_at",
        "completed_at",
        "seconds",
        "counts",
    }
    assert _nothing_left(store, s3, setup.bucket, user)
    assert people(setup.env, other) == kept

    again = erase_user(store, s3, setup.bucket, user, owner="test")
    assert set(again.counts.values()) == {0}
    assert len(receipts_of(store, user)) == 2
    # A grouping request still waiting for the user finds nothing and does nothing.
    waiting = GroupingRequest(user, tuple(f"p{i:02d}x00" for i in range(3))).to_body()
    assert service.handle([message(waiting)]) == {"m0": Outcome.DONE}
    assert _nothing_left(store, s3, setup.bucket, user)


def _nothing_left(store: Any, s3: Any, bucket: str, user: str) -> bool:
    by_user = {"user_id": user}
    return (
        store.gallery.faces.count_documents(by_user) == 0
        and store.assignments.count_documents(by_user) == 0
        and store.people.people.count_documents(by_user) == 0
        and store.corrections.count_documents(by_user) == 0
        and store.users.count_documents({"_id": user}) == 0
        # A released lease stays (ids and its fence only, no face data), expired and ownerless.
        and store.people.leases.count_documents({"_id": user, "owner": {"$ne": None}}) == 0
        and store.gallery.images.count_documents({**by_user, "face_count": {"$gt": 0}}) == 0
        and not _keys(s3, bucket, f"crops/{user}/")
        and not _keys(s3, bucket, f"people/{user}/")
    )


def test_opt_out_groups_nothing_and_erases(setup: Setup) -> None:
    user = f"{setup.env.names.prefix}-optout"
    g, service = grouped_gallery(setup, user)
    store = store_for(setup.env)
    PrivacyRepository(store.gallery.faces.database).set_recognition(user, False)
    g.add_photo("late", [0])
    body = GroupingRequest(user, ("late",)).to_body()
    assert service.handle([message(body)]) == {"m0": Outcome.DONE}
    [receipt] = receipts_of(store, user)
    assert receipt["reason"] == "opt_out"
    assert _nothing_left(store, setup.env.aws.client("s3"), setup.bucket, user)


def test_bad_input_on_the_group_queue(setup: Setup) -> None:
    service = setup.service()
    unknown = ForgetRequest("nobody-at-all", ("x.jpg",)).to_body()
    malformed = json.dumps({"type": "erase", "version": 1, "user_id": "../x", "requested_at": 1})
    outcomes = service.handle([message(unknown, 0), message(malformed, 1)])
    assert outcomes == {"m0": Outcome.DONE, "m1": Outcome.MALFORMED}
    # The same through the consumer: the malformed erasure reaches the dead-letter queue.
    send(setup.env, setup.queue.url, malformed)
    send(setup.env, setup.queue.url, ErasureRequest("nobody-at-all").to_body())
    assert setup.consume(service) == 0
    from tests.sqs_helpers import counts

    assert counts(setup.env, setup.queue.url) == (0, 0)
    assert counts(setup.env, setup.queue.dlq_url)[0] == 1
