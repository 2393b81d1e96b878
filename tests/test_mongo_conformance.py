"""MongoDB conformance: every operation the repositories use, against a real nx-27017 server.

Each test runs one kind of operation the way the repositories issue it (insert, `$set` updates,
upserts, bulk writes, `find_one_and_update` leases with expiry, unique indexes, sorting on times)
and asserts the round-trip types and results that MongoDB documents for it. Where nx-27017
deviates from MongoDB, a test named `test_deviation_*` pins the deviation (so we learn when it is
fixed) and the test after it shows the repository's way around it.

Known deviations of nx-27017 and what the repositories do about them:
- a top-level datetime written by `$set` to an existing document is stored as a string (MongoDB
  keeps a BSON date): documents hold times as epoch-millisecond ints (`encode_time`);
- a ReplaceOne upsert ignores the filter's `_id`: writes are `$set` upserts (`upsert`);
- `find_one_and_update` ignores an `_id` beside a top-level `$or` (it matched another user's
  expired lease): the lease filter puts both under `$and`.
"""

from __future__ import annotations

import dataclasses
import time
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from pymongo import ASCENDING, DESCENDING, ReplaceOne, UpdateOne
from pymongo.errors import DuplicateKeyError

from facefleet.common.documents import (
    FaceDoc,
    ImageDoc,
    ImageStatus,
    PersonDoc,
    decode_time,
    encode_time,
    now,
)
from facefleet.common.repository import (
    GALLERY_DEFAULT_DB,
    HUEMN_DEFAULT_DB,
    GalleryRepository,
    LeaseHeld,
    LeaseLost,
    PeopleRepository,
    connect,
    upsert,
)
from tests.conftest import ServerEnv


def _face(image_id: str, index: int, created_at: datetime | None = None) -> FaceDoc:
    vector = np.random.default_rng(index).standard_normal(128).astype(np.float32)
    return FaceDoc(
        user_id="u1",
        image_id=image_id,
        model_id="dev",
        index=index,
        bbox=(1.5, 2.5, 41.5, 62.5),
        landmarks=tuple((float(i), float(i) + 0.5) for i in range(5)),
        det_score=0.875,
        quality=0.5,
        embedding=vector / np.linalg.norm(vector),
        crop_key=f"faces/u1/{image_id}/{index}.jpg",
        created_at=created_at or now(),
    )


@pytest.fixture
def gallery(env: ServerEnv) -> GalleryRepository:
    repository = GalleryRepository(connect(env.gallery_uri, GALLERY_DEFAULT_DB))
    repository.ensure_indexes()
    return repository


@pytest.fixture
def people(env: ServerEnv) -> PeopleRepository:
    repository = PeopleRepository(connect(env.huemn_uri, HUEMN_DEFAULT_DB))
    repository.ensure_indexes()
    return repository


# -- deviations, pinned -----------------------------------------------------------------------


def test_deviation_set_of_a_datetime_on_an_existing_document_stores_a_string(
    gallery: GalleryRepository,
) -> None:
    """MongoDB keeps a BSON date on every write path; nx-27017 keeps it on insert and on an
    upsert that inserts, and stores `str(datetime)` when `$set` updates an existing document.
    When this test fails, nx-27017 is fixed and `encode_time` could go back to BSON dates."""
    raw = gallery.images.database["deviation"]
    moment = now()
    raw.update_one({"_id": 1}, {"$set": {"at": moment}}, upsert=True)
    assert isinstance(raw.find_one({"_id": 1})["at"], datetime)  # the insert: a date
    raw.update_one({"_id": 1}, {"$set": {"at": moment}}, upsert=True)
    assert isinstance(raw.find_one({"_id": 1})["at"], str)  # the update: a string


def test_times_keep_their_type_through_every_write_path(gallery: GalleryRepository) -> None:
    """The way around: documents store times as ints, which every path keeps."""
    image = ImageDoc("u1", "a.jpg", "bucket", "users/u1/a.jpg", ImageStatus.PROCESSING)
    gallery.images.bulk_write([upsert(image.to_mongo())])  # upsert that inserts
    gallery.save_result(image, [_face("a.jpg", 0)])  # `$set` on the existing image
    gallery.save_result(image, [_face("a.jpg", 0)])  # and on the existing face (reprocessing)
    gallery.mark_failed(image, "test")
    raw_image = gallery.images.find_one({"_id": image.doc_id})
    raw_face = gallery.faces.find_one({"image_id": "a.jpg"})
    assert isinstance(raw_image["updated_at"], int)
    assert isinstance(raw_face["created_at"], int)
    stored = gallery.get_image("u1", "a.jpg")
    assert stored is not None and stored.updated_at.tzinfo is not None
    assert abs(stored.updated_at - image.updated_at) < timedelta(milliseconds=1)
    (face,) = gallery.faces_of_user("u1")
    assert isinstance(face.created_at, datetime) and face.created_at.tzinfo is not None


def test_times_written_before_the_int_encoding_still_read(gallery: GalleryRepository) -> None:
    """Rows an earlier version left (a BSON date, or nx-27017's string) decode to the same time."""
    moment = datetime(2026, 11, 30, 12, 0, 0, 123000, tzinfo=UTC)
    assert decode_time(encode_time(moment)) == moment
    assert decode_time(moment) == moment
    assert decode_time(str(moment.replace(tzinfo=None))) == moment
    raw = gallery.images.database["legacy"]
    raw.update_one({"_id": 1}, {"$set": {"at": moment}}, upsert=True)
    raw.update_one({"_id": 1}, {"$set": {"at": moment}}, upsert=True)
    assert decode_time(raw.find_one({"_id": 1})["at"]) == moment
    with pytest.raises(TypeError):
        decode_time(True)


def test_deviation_replace_one_upsert_ignores_the_filter_id(gallery: GalleryRepository) -> None:
    """MongoDB gives an upserted ReplaceOne the filter's `_id`; nx-27017 generates one. The
    repositories therefore write whole documents with `upsert` (a `$set` upsert)."""
    raw = gallery.images.database["replace"]
    raw.bulk_write([ReplaceOne({"_id": "wanted"}, {"x": 1}, upsert=True)])
    assert raw.find_one({"_id": "wanted"}) is None
    raw.bulk_write([upsert({"_id": "wanted", "x": 1})])
    assert raw.find_one({"_id": "wanted"}) == {"_id": "wanted", "x": 1}


# -- operations as MongoDB documents them ------------------------------------------------------


def test_insert_and_find_round_trip_every_field_type(gallery: GalleryRepository) -> None:
    face = _face("b.png", 3)
    gallery.faces.insert_one(face.to_mongo())
    raw = gallery.faces.find_one({"_id": face.doc_id})
    assert isinstance(raw["index"], int) and isinstance(raw["det_score"], float)
    assert isinstance(raw["embedding"], bytes) and raw["embedding_dim"] == 128
    assert raw["bbox"] == [1.5, 2.5, 41.5, 62.5] and raw["crop_key"] == face.crop_key
    back = FaceDoc.from_mongo(raw)
    assert back.bbox == face.bbox and back.landmarks == face.landmarks
    assert back.embedding.dtype == np.float32 and float(back.embedding @ face.embedding) > 0.999


def test_set_upsert_inserts_then_updates_in_place(gallery: GalleryRepository) -> None:
    collection = gallery.images.database["upserts"]
    result = collection.update_one({"_id": "k"}, {"$set": {"n": 1, "s": "a"}}, upsert=True)
    assert result.upserted_id == "k"
    result = collection.update_one({"_id": "k"}, {"$set": {"n": 2}}, upsert=True)
    assert result.matched_count == 1 and result.upserted_id is None
    assert collection.find_one({"_id": "k"}) == {"_id": "k", "n": 2, "s": "a"}
    assert collection.count_documents({}) == 1


def test_unordered_bulk_upserts_are_idempotent(gallery: GalleryRepository) -> None:
    faces = [_face("c.jpg", i) for i in range(20)]
    for _ in range(3):  # a redelivered batch writes the same documents again
        gallery.faces.bulk_write([upsert(f.to_mongo()) for f in faces], ordered=False)
    assert gallery.count_faces("u1") == 20
    mixed = [UpdateOne({"_id": f.doc_id}, {"$set": {"quality": 0.25}}) for f in faces[:5]]
    result = gallery.faces.bulk_write(mixed, ordered=False)
    assert result.matched_count == 5
    assert gallery.faces.count_documents({"quality": 0.25}) == 5


def test_save_result_drops_faces_a_previous_run_left(gallery: GalleryRepository) -> None:
    image = ImageDoc("u1", "d.jpg", "bucket", "users/u1/d.jpg", ImageStatus.PROCESSING, "dev")
    gallery.save_result(image, [_face("d.jpg", i) for i in range(3)])
    gallery.save_result(image, [_face("d.jpg", 0)])  # `$nin` delete of the other two
    assert [f.index for f in gallery.faces_of_images("u1", ["d.jpg"])] == [0]


def test_unique_index_refuses_a_second_document(people: PeopleRepository) -> None:
    person = PersonDoc("u1", 1, "dev", ["f1"], "f1", np.ones(4, dtype=np.float32))
    people.save_people([person])
    duplicate = {**person.to_mongo(), "_id": "another id"}
    with pytest.raises(DuplicateKeyError):
        people.people.insert_one(duplicate)


def test_lease_expires_after_renewals(people: PeopleRepository) -> None:
    """A renewed lease (a `find_one_and_update` `$set` of an existing document) must still
    expire: `expires_at` keeps a comparable type, so `$lt` matches once it has passed."""
    ttl = timedelta(milliseconds=300)
    people.acquire_lease("u1", "worker-a", ttl)
    people.acquire_lease("u1", "worker-a", ttl)  # renewal
    with pytest.raises(LeaseHeld):
        people.acquire_lease("u1", "worker-b", ttl)
    time.sleep(0.5)
    people.acquire_lease("u1", "worker-b", ttl)  # expired: taken over
    assert people.leases.find_one({"_id": "u1"})["owner"] == "worker-b"
    people.release_lease("u1", "worker-a")  # not the owner: no effect
    assert people.leases.find_one({"_id": "u1"}) is not None
    people.release_lease("u1", "worker-b")
    # Released: expired at once, its fence kept (the next holder's fence is one more).
    released = people.leases.find_one({"_id": "u1"})
    assert released["expires_at"] == 0 and released["fence"] == 3
    assert people.acquire_lease("u1", "worker-c", ttl).fence == 4


def test_deviation_find_one_and_update_drops_id_beside_or(people: PeopleRepository) -> None:
    people.leases.insert_one({"_id": "other", "owner": None, "expires_at": 0})
    loose = {"_id": "mine", "$or": [{"owner": "w"}, {"expires_at": {"$lt": 10}}]}
    assert list(people.leases.find(loose)) == []  # find honours the _id
    taken = people.leases.find_one_and_update(loose, {"$set": {"owner": "w"}})
    assert taken is not None and taken["_id"] == "other"  # MongoDB: None


def test_lease_of_one_user_never_takes_another_users(people: PeopleRepository) -> None:
    people.acquire_lease("u1", "worker-a", timedelta(minutes=1))
    people.release_lease("u1", "worker-a")  # expired, kept for its fence
    lease = people.acquire_lease("u2", "worker-b", timedelta(minutes=1))
    assert lease.fence == 1 and people.leases.find_one({"_id": "u1"})["owner"] is None


def test_fenced_writes_land_only_where_no_later_holder_wrote(people: PeopleRepository) -> None:
    """A conditional `$set` upsert on an existing `_id` that the condition excludes raises the
    duplicate-key error (as MongoDB does): the stale holder learns it lost the lease."""
    old = people.acquire_lease("u1", "worker-a", timedelta(minutes=1))
    people.leases.update_one({"_id": "u1"}, {"$set": {"expires_at": 0}})
    new = people.acquire_lease("u1", "worker-b", timedelta(minutes=1))
    assert new.fence == old.fence + 1
    person = PersonDoc("u1", 1, "dev", ["f1"], "f1", np.ones(4, dtype=np.float32))
    people.save_people([person], new)
    with pytest.raises(LeaseLost):
        people.save_people([dataclasses.replace(person, name="stale")], old)
    assert old.lost and people.people_of_user("u1")[0].name is None
    people.save_people([dataclasses.replace(person, name="Ann")], new)
    assert people.people_of_user("u1")[0].name == "Ann"
    with pytest.raises(LeaseLost):
        people.renew_lease(old)


def test_sorting_on_times_written_by_different_paths(gallery: GalleryRepository) -> None:
    """Faces first inserted, then rewritten by `$set` (reprocessing), sort chronologically."""
    base = datetime(2026, 1, 1, tzinfo=UTC)
    faces = [_face(f"s{i}.jpg", i, base + timedelta(minutes=i)) for i in range(4)]
    gallery.faces.insert_many([f.to_mongo() for f in faces[:2]])
    gallery.faces.bulk_write([upsert(f.to_mongo()) for f in faces], ordered=False)
    gallery.faces.bulk_write([upsert(f.to_mongo()) for f in faces[:3]], ordered=False)
    newest_first = [d["image_id"] for d in gallery.faces.find().sort("created_at", DESCENDING)]
    assert newest_first == ["s3.jpg", "s2.jpg", "s1.jpg", "s0.jpg"]
    after = {"created_at": {"$gte": encode_time(base + timedelta(minutes=2))}}
    oldest_first = gallery.faces.find(after).sort("created_at", ASCENDING)
    assert [d["image_id"] for d in oldest_first] == ["s2.jpg", "s3.jpg"]
