"""MongoDB document schemas: images and faces (gallery database) and people (HUEMN database).

Documents are plain dicts at the driver boundary; these dataclasses are the typed form the code
works with. Ids are deterministic, so a redelivered message or a re-run overwrites, never adds.
Embeddings are stored as little-endian float16 bytes: half the size of float32, and cosine
similarities move by under 1e-3, far below any grouping threshold.

Times are stored as integer milliseconds since the epoch (UTC), not BSON dates. nx-27017 (the
embedded MongoDB) turns a top-level datetime written by `$set` on an existing document into a
string, so a reprocessed image's face would compare a `str` with a `datetime`, and a renewed
lease would stop matching `$lt` and never expire. An int keeps its type on every write path of
both servers, sorts and compares the same, and keeps millisecond precision like a BSON date.
`decode_time` also reads BSON dates and the strings older rows may hold.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import numpy as np
from bson.binary import Binary

EMBEDDING_DTYPE = np.dtype("<f2")


class ImageStatus(StrEnum):
    PROCESSING = "processing"
    DONE = "done"
    FAILED = "failed"


def now() -> datetime:
    return datetime.now(UTC)


def encode_time(moment: datetime) -> int:
    """A time as stored: integer milliseconds since the epoch (see the module docstring)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return round(moment.timestamp() * 1000)


def decode_time(value: Any) -> datetime:
    """A stored time back to an aware UTC datetime: epoch milliseconds, a BSON date, or the
    ISO-like string nx-27017 leaves after a `$set` of a datetime (rows written before ints)."""
    if isinstance(value, bool):
        raise TypeError(f"not a stored time: {value!r}")
    if isinstance(value, int | float):
        return datetime.fromtimestamp(value / 1000, UTC)
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if isinstance(value, datetime):
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    raise TypeError(f"not a stored time: {value!r}")


def image_doc_id(user_id: str, image_id: str) -> str:
    return f"{user_id}/{image_id}"


def face_doc_id(
    user_id: str, image_id: str, model_id: str, index: int, version: str | None = None
) -> str:
    """Stable face id: the same photo version (its bytes: S3's ETag or version id), model and
    face index always give the same id; an edit saved over the same key is a new version, so
    its faces are new faces. Faces stored before versions existed have `version` None."""
    text = f"{user_id}\0{image_id}\0{model_id}\0{index}"
    if version:
        text += f"\0{version}"
    return hashlib.sha1(text.encode()).hexdigest()[:24]


def person_doc_id(user_id: str, person_id: int) -> str:
    return f"{user_id}/p{person_id:06d}"


def encode_embedding(vector: np.ndarray) -> Binary:
    return Binary(np.asarray(vector, dtype=EMBEDDING_DTYPE).tobytes())


def decode_embedding(data: bytes) -> np.ndarray:
    """Back to a float32 unit vector (re-normalised: float16 rounding shifts the norm slightly)."""
    vector = np.frombuffer(data, dtype=EMBEDDING_DTYPE).astype(np.float32)
    norm = float(np.linalg.norm(vector))
    return vector / norm if norm > 0 else vector


@dataclass
class ImageDoc:
    user_id: str
    image_id: str
    bucket: str
    key: str
    status: ImageStatus
    model_id: str | None = None
    face_count: int = 0
    reason: str | None = None
    width: int | None = None
    height: int | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)
    updated_at: datetime = field(default_factory=now)
    # The create this document comes from (`messages.EventOrder`): a delete known to be older
    # (a photo re-uploaded since) leaves the faces alone.
    requested_at: int | None = None
    sequencer: str | None = None
    # The photo version stored (S3 version id or ETag) and the claim of the store that wrote
    # it: every store is a compare-and-set on `claim` (`GalleryRepository.claim_image`).
    version: str | None = None
    claim: str | None = None

    @property
    def doc_id(self) -> str:
        return image_doc_id(self.user_id, self.image_id)

    def to_mongo(self) -> dict[str, Any]:
        data = asdict(self)
        data["status"] = str(self.status)
        data["updated_at"] = encode_time(self.updated_at)
        data["_id"] = self.doc_id
        return data

    @classmethod
    def from_mongo(cls, data: dict[str, Any]) -> ImageDoc:
        # Fields other writers add (erasure's `faces_erased_at`) are not part of the schema.
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["status"] = ImageStatus(values["status"])
        values["updated_at"] = (
            decode_time(values["updated_at"]) if "updated_at" in values else now()
        )
        return cls(**values)


@dataclass
class FaceDoc:
    user_id: str
    image_id: str
    model_id: str
    index: int
    bbox: tuple[float, float, float, float]
    landmarks: tuple[tuple[float, float], ...]
    det_score: float
    quality: float
    embedding: np.ndarray
    crop_key: str | None = None
    created_at: datetime = field(default_factory=now)
    # The recogniser's raw embedding norm before L2 normalisation (None: detected before it was
    # stored); grouping's trust signal, with size and detection score.
    embedding_norm: float | None = None
    # The photo version the face belongs to, the claim of the store that wrote it, and that
    # store's event order: a delete or a newer store removes exactly the faces it supersedes.
    version: str | None = None
    claim: str | None = None
    requested_at: int | None = None
    sequencer: str | None = None

    @property
    def doc_id(self) -> str:
        return face_doc_id(self.user_id, self.image_id, self.model_id, self.index, self.version)

    @property
    def width_px(self) -> float:
        return self.bbox[2] - self.bbox[0]

    def to_mongo(self) -> dict[str, Any]:
        return {
            "_id": self.doc_id,
            "user_id": self.user_id,
            "image_id": self.image_id,
            "model_id": self.model_id,
            "index": self.index,
            "bbox": [float(v) for v in self.bbox],
            "landmarks": [[float(x), float(y)] for x, y in self.landmarks],
            "det_score": float(self.det_score),
            "quality": float(self.quality),
            "embedding": encode_embedding(self.embedding),
            "embedding_dim": int(self.embedding.shape[0]),
            "crop_key": self.crop_key,
            "created_at": encode_time(self.created_at),
            "embedding_norm": None if self.embedding_norm is None else float(self.embedding_norm),
            "version": self.version,
            "claim": self.claim,
            "requested_at": self.requested_at,
            "sequencer": self.sequencer,
        }

    @classmethod
    def from_mongo(cls, data: dict[str, Any]) -> FaceDoc:
        return cls(
            user_id=data["user_id"],
            image_id=data["image_id"],
            model_id=data["model_id"],
            index=int(data["index"]),
            bbox=tuple(data["bbox"]),
            landmarks=tuple((float(x), float(y)) for x, y in data["landmarks"]),
            det_score=float(data["det_score"]),
            quality=float(data["quality"]),
            embedding=decode_embedding(bytes(data["embedding"])),
            crop_key=data.get("crop_key"),
            created_at=decode_time(data["created_at"]) if "created_at" in data else now(),
            embedding_norm=(
                None if data.get("embedding_norm") is None else float(data["embedding_norm"])
            ),
            version=data.get("version"),
            claim=data.get("claim"),
            requested_at=data.get("requested_at"),
            sequencer=data.get("sequencer"),
        )


@dataclass
class PersonDoc:
    user_id: str
    person_id: int
    model_id: str
    member_face_ids: list[str]
    cover_face_id: str | None
    centroid: np.ndarray
    name: str | None = None
    cover_key: str | None = None
    updated_at: datetime = field(default_factory=now)

    @property
    def doc_id(self) -> str:
        return person_doc_id(self.user_id, self.person_id)

    @property
    def face_count(self) -> int:
        return len(self.member_face_ids)

    def to_mongo(self) -> dict[str, Any]:
        return {
            "_id": self.doc_id,
            "user_id": self.user_id,
            "person_id": self.person_id,
            "model_id": self.model_id,
            "member_face_ids": list(self.member_face_ids),
            "face_count": self.face_count,
            "cover_face_id": self.cover_face_id,
            "centroid": encode_embedding(self.centroid),
            "name": self.name,
            "cover_key": self.cover_key,
            "updated_at": encode_time(self.updated_at),
        }

    @classmethod
    def from_mongo(cls, data: dict[str, Any]) -> PersonDoc:
        return cls(
            user_id=data["user_id"],
            person_id=int(data["person_id"]),
            model_id=data["model_id"],
            member_face_ids=list(data["member_face_ids"]),
            cover_face_id=data.get("cover_face_id"),
            centroid=decode_embedding(bytes(data["centroid"])),
            name=data.get("name"),
            cover_key=data.get("cover_key"),
            updated_at=decode_time(data["updated_at"]) if "updated_at" in data else now(),
        )
