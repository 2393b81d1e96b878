"""MongoDB repositories over pymongo: the gallery database (images, faces) and HUEMN (people).

Every write is an idempotent upsert keyed by the deterministic ids of `documents`, so a retried
batch converges on the same state. Driver errors are left to propagate: the consumer loop treats
them as an outage (retry with backoff, message kept), never as bad input.

Two kinds of writes are conditional as well:
- a photo's store is a compare-and-set on its image document (`claim_image`, `commit_image`):
  refused when a later create or delete of the photo was already stored, so writers of two
  versions of one photo never undo each other (the protocol is `worker.privacy.photos`);
- a write under a user's grouping lease carries the lease's fence (`Lease.fence`, one more at
  every acquisition) and only lands where no later holder wrote: `fenced` / `fenced_delete`.
  nx-27017 answers a conditional upsert that matches nothing but an existing `_id` with the
  duplicate-key error MongoDB gives (tests/test_mongo_conformance.py).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from pymongo import ASCENDING, MongoClient, ReturnDocument, UpdateOne
from pymongo.database import Database
from pymongo.errors import BulkWriteError, DuplicateKeyError

from facefleet.common.documents import (
    FaceDoc,
    ImageDoc,
    ImageStatus,
    PersonDoc,
    encode_time,
    image_doc_id,
    now,
)
from facefleet.common.messages import EventOrder, happened_after

Document = dict[str, Any]
DUPLICATE_KEY = 11000


def upsert(document: Document) -> UpdateOne:
    """Write a whole document by _id. A `$set` upsert, not ReplaceOne: nx-27017 ignores the
    filter's _id when a ReplaceOne upserts (and fails replacing binary fields). Every document
    sets all of its fields. nx-27017 stores a top-level datetime in a `$set` of an existing
    document as a string, so documents hold no datetimes: times are `encode_time` ints
    (tests/test_mongo_conformance.py names each deviation and its way around)."""
    fields = {k: v for k, v in document.items() if k != "_id"}
    return UpdateOne({"_id": document["_id"]}, {"$set": fields}, upsert=True)


GALLERY_DEFAULT_DB = "gallery_images"
HUEMN_DEFAULT_DB = "huemn"


def connect(uri: str, default_database: str, timeout_ms: int = 5000) -> Database[Document]:
    """Open the database named in the URI path, or `default_database` when the URI names none."""
    client: MongoClient[Document] = MongoClient(
        uri,
        serverSelectionTimeoutMS=timeout_ms,
        connectTimeoutMS=timeout_ms,
        socketTimeoutMS=max(timeout_ms * 6, 30000),
        retryWrites=False,  # nx-27017 and standalone servers have no retryable writes
        tz_aware=True,
    )
    return client.get_default_database(default_database)


def stored_order(doc: Document) -> EventOrder:
    """The event order an image or face document was stored under."""
    return EventOrder(doc.get("requested_at"), doc.get("sequencer"))


@dataclass(frozen=True)
class Claim:
    """A store's hold on a photo's image document; `unchanged`: that version is stored already
    (the same bytes again), only the event order moved on."""

    token: str
    unchanged: bool


class Contention(RuntimeError):
    """A compare-and-set kept losing to other writers (retried later, like an outage)."""


class GalleryRepository:
    """Images and faces of the gallery database."""

    def __init__(self, database: Database[Document]) -> None:
        self.images = database["images"]
        self.faces = database["faces"]

    def ensure_indexes(self) -> None:
        self.images.create_index([("user_id", ASCENDING), ("status", ASCENDING)])
        # Grouping loads a user's faces for one model; the detector replaces an image's faces.
        self.faces.create_index([("user_id", ASCENDING), ("model_id", ASCENDING)])
        self.faces.create_index([("user_id", ASCENDING), ("image_id", ASCENDING)])

    def save_result(self, image: ImageDoc, faces: list[FaceDoc]) -> None:
        """Store an image's faces, drop faces a previous run of the same model left beyond them,
        then mark the image done: the image turns DONE only after its faces are durable."""
        if faces:
            self.faces.bulk_write(
                [upsert(f.to_mongo()) for f in faces],
                ordered=False,
            )
        keep = [f.doc_id for f in faces]
        self.faces.delete_many(
            {
                "user_id": image.user_id,
                "image_id": image.image_id,
                "model_id": image.model_id,
                "_id": {"$nin": keep},
            }
        )
        image.status = ImageStatus.DONE
        image.face_count = len(faces)
        image.updated_at = now()
        self.images.bulk_write([upsert(image.to_mongo())])

    # -- a photo version's store: compare-and-set on the image document ---------------------

    def claim_image(self, image: ImageDoc, attempts: int = 8) -> Claim | None:
        """Claim the photo for a store of `image` (its version and event order, `claim` set
        here). None: a later create or delete of this photo is stored already. The same
        version already DONE is not rewritten: only its order moves on (`unchanged`)."""
        order = EventOrder(image.requested_at, image.sequencer)
        for _ in range(attempts):
            current = self.images.find_one({"_id": image.doc_id})
            if current is not None and happened_after(stored_order(current), order):
                return None
            same = (
                current is not None
                and image.version is not None
                and current.get("version") == image.version
                and current.get("status") == ImageStatus.DONE
            )
            if same:
                assert current is not None
                fields: Document = {
                    "requested_at": image.requested_at,
                    "sequencer": image.sequencer,
                    "updated_at": encode_time(now()),
                }
                token = current.get("claim") or uuid.uuid4().hex
                fields["claim"] = token
            else:
                token = uuid.uuid4().hex
                image.claim, image.status, image.updated_at = token, ImageStatus.PROCESSING, now()
                fields = {k: v for k, v in image.to_mongo().items() if k != "_id"}
            if current is None:
                try:
                    self.images.insert_one({"_id": image.doc_id, **fields})
                except DuplicateKeyError:
                    continue
                return Claim(token, False)
            result = self.images.update_one(
                {"_id": image.doc_id, "claim": current.get("claim")}, {"$set": fields}
            )
            if result.matched_count:
                image.claim = token
                return Claim(token, same)
        raise Contention(f"image {image.doc_id!r}: {attempts} claims lost to other writers")

    def write_faces(self, faces: list[FaceDoc]) -> None:
        if faces:
            self.faces.bulk_write([upsert(f.to_mongo()) for f in faces], ordered=False)

    def commit_image(self, image: ImageDoc, status: ImageStatus, face_count: int) -> bool:
        """Publish a claimed store; False when another store or a delete took the photo since."""
        image.status, image.face_count, image.updated_at = status, face_count, now()
        fields = {k: v for k, v in image.to_mongo().items() if k != "_id"}
        result = self.images.update_one(
            {"_id": image.doc_id, "claim": image.claim}, {"$set": fields}
        )
        return result.matched_count == 1

    def faces_of_image(self, user_id: str, image_id: str) -> list[Document]:
        """The photo's face documents without embeddings (ids, versions, claims, orders)."""
        query = {"user_id": user_id, "image_id": image_id}
        return list(self.faces.find(query, {"embedding": 0, "landmarks": 0}))

    def delete_faces(self, face_ids: Iterable[str]) -> int:
        ids = sorted(set(face_ids))
        return self.faces.delete_many({"_id": {"$in": ids}}).deleted_count if ids else 0

    def drop_image(self, user_id: str, image_id: str, order: EventOrder, attempts: int = 8) -> bool:
        """Delete the image document unless a later store holds it (a compare-and-set)."""
        doc_id = image_doc_id(user_id, image_id)
        for _ in range(attempts):
            current = self.images.find_one({"_id": doc_id})
            if current is None or happened_after(stored_order(current), order):
                return False
            if self.images.delete_one({"_id": doc_id, "claim": current.get("claim")}).deleted_count:
                return True
        raise Contention(f"image {doc_id!r}: {attempts} deletes lost to other writers")

    # -- what erasure and the opt-out need ----------------------------------------------------

    def has_faces(self, user_id: str) -> bool:
        return self.faces.find_one({"user_id": user_id}, {"_id": 1}) is not None

    def face_ids_of_user(self, user_id: str) -> set[str]:
        return {d["_id"] for d in self.faces.find({"user_id": user_id}, {"_id": 1})}

    def crop_keys_of_user(self, user_id: str) -> set[str]:
        found = self.faces.find({"user_id": user_id}, {"crop_key": 1})
        return {d["crop_key"] for d in found if d.get("crop_key")}

    def erase_faces_of_user(self, user_id: str) -> tuple[int, int]:
        """Delete the user's faces; the image documents keep only that the photo exists
        (`face_count` 0, `faces_erased_at`). Returns (faces deleted, images cleared)."""
        faces = self.faces.delete_many({"user_id": user_id}).deleted_count
        cleared = self.images.update_many(
            {"user_id": user_id, "face_count": {"$gt": 0}},
            {"$set": {"face_count": 0, "faces_erased_at": encode_time(now())}},
        ).modified_count
        return faces, cleared

    def mark_failed(self, image: ImageDoc, reason: str) -> None:
        image.status = ImageStatus.FAILED
        image.reason = reason
        image.updated_at = now()
        self.images.bulk_write([upsert(image.to_mongo())])

    def get_image(self, user_id: str, image_id: str) -> ImageDoc | None:
        data = self.images.find_one({"_id": image_doc_id(user_id, image_id)})
        return ImageDoc.from_mongo(data) if data else None

    def faces_of_user(self, user_id: str, model_id: str | None = None) -> list[FaceDoc]:
        query: Document = {"user_id": user_id}
        if model_id is not None:
            query["model_id"] = model_id
        return [FaceDoc.from_mongo(d) for d in self.faces.find(query).sort("_id", ASCENDING)]

    def faces_of_images(
        self, user_id: str, image_ids: Iterable[str], model_id: str | None = None
    ) -> list[FaceDoc]:
        query: Document = {"user_id": user_id, "image_id": {"$in": list(image_ids)}}
        if model_id is not None:
            query["model_id"] = model_id
        return [FaceDoc.from_mongo(d) for d in self.faces.find(query).sort("_id", ASCENDING)]

    def count_faces(self, user_id: str | None = None) -> int:
        return self.faces.count_documents({} if user_id is None else {"user_id": user_id})


class LeaseHeld(RuntimeError):
    """Another worker holds this user's lease."""


class LeaseLost(RuntimeError):
    """This worker's lease on the user expired and another holder took it: stop writing."""


@dataclass
class Lease:
    """One acquisition of a user's lease: `token` names it, `fence` orders it after every
    earlier one (writes carry the fence and only land where no later holder wrote)."""

    user_id: str
    owner: str
    token: str
    fence: int
    ttl: timedelta
    lost: bool = False

    def check(self) -> None:
        if self.lost:
            raise LeaseLost(f"lease on user {self.user_id!r} was taken over (fence {self.fence})")


def _fence_filter(fence: int) -> Document:
    return {"$or": [{"fence": {"$lte": fence}}, {"fence": {"$exists": False}}]}


def fenced(document: Document, lease: Lease | None) -> UpdateOne:
    """`upsert` that lands only where no later lease holder wrote (see the module docstring)."""
    if lease is None:
        return upsert(document)
    fields = {k: v for k, v in document.items() if k != "_id"}
    fields["fence"] = lease.fence
    condition = {"$and": [{"_id": document["_id"]}, _fence_filter(lease.fence)]}
    return UpdateOne(condition, {"$set": fields}, upsert=True)


def fenced_query(query: Document, lease: Lease | None) -> Document:
    """A delete's filter, narrowed to documents no later lease holder wrote."""
    return query if lease is None else {"$and": [query, _fence_filter(lease.fence)]}


def write_fenced(collection: Any, operations: list[UpdateOne], lease: Lease | None) -> None:
    """Bulk-write fenced upserts; a document a later holder wrote means this lease is lost."""
    if not operations:
        return
    if lease is not None:
        lease.check()
    try:
        collection.bulk_write(operations, ordered=False)
    except BulkWriteError as error:
        codes = {e.get("code") for e in error.details.get("writeErrors", [])}
        if lease is not None and codes == {DUPLICATE_KEY}:
            lease.lost = True
            raise LeaseLost(
                f"user {lease.user_id!r}: a later lease holder wrote (fence {lease.fence})"
            ) from None
        raise


class PeopleRepository:
    """People of the HUEMN database, and the per-user leases that keep one clusterer per user."""

    def __init__(self, database: Database[Document]) -> None:
        self.people = database["people"]
        self.leases = database["leases"]

    def ensure_indexes(self) -> None:
        self.people.create_index([("user_id", ASCENDING), ("person_id", ASCENDING)], unique=True)

    def acquire_lease(self, user_id: str, owner: str, ttl: timedelta) -> Lease:
        """Take the user's lease (a new token and the next fence); raise LeaseHeld while another
        owner's is unexpired. The same owner taking it again gets a new acquisition.

        The _id is the user, so two workers racing to create it collide on the unique key. The
        document outlives releases: its fence only ever grows.
        """
        current, expires = encode_time(now()), encode_time(now() + ttl)
        token = uuid.uuid4().hex
        # `$and`: nx-27017's find_one_and_update drops an `_id` beside a top-level `$or` and
        # took another user's expired lease (tests/test_mongo_conformance.py).
        free = {"$or": [{"owner": owner}, {"expires_at": {"$lt": current}}]}
        taken = self.leases.find_one_and_update(
            {"$and": [{"_id": user_id}, free]},
            {"$set": {"owner": owner, "expires_at": expires, "token": token}, "$inc": {"fence": 1}},
            return_document=ReturnDocument.AFTER,
        )
        if taken is not None:
            return Lease(user_id, owner, token, int(taken["fence"]), ttl)
        try:
            self.leases.insert_one(
                {"_id": user_id, "owner": owner, "expires_at": expires, "token": token, "fence": 1}
            )
        except DuplicateKeyError:
            raise LeaseHeld(f"user {user_id!r} is being grouped by another worker") from None
        return Lease(user_id, owner, token, 1, ttl)

    def renew_lease(self, lease: Lease) -> None:
        """Push the expiry on while this acquisition still holds the lease; else LeaseLost."""
        expires = encode_time(now() + lease.ttl)
        result = self.leases.update_one(
            {"_id": lease.user_id, "token": lease.token}, {"$set": {"expires_at": expires}}
        )
        if not result.matched_count:
            lease.lost = True
            lease.check()

    def release_lease(self, user_id: str, owner: str) -> None:
        """Expire the owner's lease now (the document and its fence stay)."""
        self.leases.update_one(
            {"_id": user_id, "owner": owner},
            {"$set": {"owner": None, "expires_at": 0, "token": None}},
        )

    def save_people(self, people: Iterable[PersonDoc], lease: Lease | None = None) -> None:
        write_fenced(self.people, [fenced(p.to_mongo(), lease) for p in people], lease)

    def delete_people(
        self, user_id: str, person_ids: Iterable[int], lease: Lease | None = None
    ) -> None:
        ids = list(person_ids)
        if ids:
            if lease is not None:
                lease.check()
            query = {"user_id": user_id, "person_id": {"$in": ids}}
            self.people.delete_many(fenced_query(query, lease))

    def has_people(self, user_id: str) -> bool:
        return self.people.find_one({"user_id": user_id}, {"_id": 1}) is not None

    def cover_keys_of_user(self, user_id: str) -> set[str]:
        found = self.people.find({"user_id": user_id}, {"cover_key": 1})
        return {d["cover_key"] for d in found if d.get("cover_key")}

    def erase_people_of_user(self, user_id: str) -> int:
        return self.people.delete_many({"user_id": user_id}).deleted_count

    def end_other_leases(self, user_id: str, owner: str) -> int:
        """Expire any lease of the user that `owner` does not hold (the document and its fence
        stay, so a stalled holder's late writes are still refused)."""
        return self.leases.update_many(
            {"_id": user_id, "owner": {"$nin": [owner, None]}},
            {"$set": {"owner": None, "expires_at": 0, "token": None}},
        ).modified_count

    def people_of_user(self, user_id: str) -> list[PersonDoc]:
        cursor = self.people.find({"user_id": user_id}).sort("person_id", ASCENDING)
        return [PersonDoc.from_mongo(d) for d in cursor]
