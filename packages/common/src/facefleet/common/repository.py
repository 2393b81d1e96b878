"""MongoDB repositories over pymongo: the gallery database (images, faces) and HUEMN (people).

Every write is an idempotent upsert keyed by the deterministic ids of `documents`, so a retried
batch converges on the same state. Driver errors are left to propagate: the consumer loop treats
them as an outage (retry with backoff, message kept), never as bad input.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import timedelta
from typing import Any

from pymongo import ASCENDING, MongoClient, UpdateOne
from pymongo.database import Database
from pymongo.errors import DuplicateKeyError

from facefleet.common.documents import (
    FaceDoc,
    ImageDoc,
    ImageStatus,
    PersonDoc,
    encode_time,
    image_doc_id,
    now,
)

Document = dict[str, Any]


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

    def mark_processing(self, image: ImageDoc) -> None:
        image.status = ImageStatus.PROCESSING
        image.updated_at = now()
        self.images.bulk_write([upsert(image.to_mongo())])

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


class PeopleRepository:
    """People of the HUEMN database, and the per-user leases that keep one clusterer per user."""

    def __init__(self, database: Database[Document]) -> None:
        self.people = database["people"]
        self.leases = database["leases"]

    def ensure_indexes(self) -> None:
        self.people.create_index([("user_id", ASCENDING), ("person_id", ASCENDING)], unique=True)

    def acquire_lease(self, user_id: str, owner: str, ttl: timedelta) -> None:
        """Take or renew the user's lease; raise LeaseHeld while another owner's is unexpired.

        The _id is the user, so two workers racing to create it collide on the unique key.
        """
        current, expires = encode_time(now()), encode_time(now() + ttl)
        taken = self.leases.find_one_and_update(
            {"_id": user_id, "$or": [{"owner": owner}, {"expires_at": {"$lt": current}}]},
            {"$set": {"owner": owner, "expires_at": expires}},
        )
        if taken is not None:
            return
        try:
            self.leases.insert_one({"_id": user_id, "owner": owner, "expires_at": expires})
        except DuplicateKeyError:
            raise LeaseHeld(f"user {user_id!r} is being grouped by another worker") from None

    def release_lease(self, user_id: str, owner: str) -> None:
        self.leases.delete_one({"_id": user_id, "owner": owner})

    def save_people(self, people: Iterable[PersonDoc]) -> None:
        operations = [upsert(p.to_mongo()) for p in people]
        if operations:
            self.people.bulk_write(operations, ordered=False)

    def delete_people(self, user_id: str, person_ids: Iterable[int]) -> None:
        ids = list(person_ids)
        if ids:
            self.people.delete_many({"user_id": user_id, "person_id": {"$in": ids}})

    def people_of_user(self, user_id: str) -> list[PersonDoc]:
        cursor = self.people.find({"user_id": user_id}).sort("person_id", ASCENDING)
        return [PersonDoc.from_mongo(d) for d in cursor]
