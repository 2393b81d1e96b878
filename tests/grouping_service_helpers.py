"""Synthetic galleries for the grouping-service tests: FaceDocs in the real gallery database,
crops in the real (moto) bucket, grouping requests on a real queue."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from facefleet.common.config import Settings
from facefleet.common.documents import FaceDoc, ImageDoc, ImageStatus
from facefleet.common.messages import GroupingRequest
from facefleet.common.metrics import MetricsEmitter
from facefleet.common.repository import GALLERY_DEFAULT_DB, HUEMN_DEFAULT_DB, connect
from facefleet.common.s3keys import image_key
from facefleet.worker.grouping.service import GroupingService
from facefleet.worker.grouping.store import GroupingStore
from facefleet.worker.privacy.worker import build_service
from facefleet.worker.runtime.consumer import Consumer, ConsumerConfig, Handler
from tests.sqs_helpers import TestQueue, create_bucket, create_queue, send

DIM = 128
MODEL = "m1"


def unit(vector: np.ndarray) -> np.ndarray:
    return (vector / np.linalg.norm(vector)).astype(np.float32)


@dataclass
class Identities:
    """Well-separated identities on the sphere; each photo of one is its centre plus noise."""

    count: int
    seed: int = 7
    noise: float = 0.55
    centres: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.rng = np.random.default_rng(self.seed)
        self.centres = np.stack([unit(self.rng.normal(size=DIM)) for _ in range(self.count)])

    def sample(self, identity: int, centres: np.ndarray | None = None) -> np.ndarray:
        centre = (self.centres if centres is None else centres)[identity]
        return unit(centre + self.noise * unit(self.rng.normal(size=DIM)))


@dataclass
class Gallery:
    """One user's photos: photo id -> identities shown (one face each), and the truth."""

    env: Any
    user_id: str
    bucket: str
    ids: Identities
    model_id: str = MODEL
    truth: dict[str, int] = field(default_factory=dict)  # face id -> identity

    def repo(self) -> GroupingStore:
        return store_for(self.env)

    def add_photo(
        self,
        image_id: str,
        identities: list[int],
        *,
        size: float = 112.0,
        centres: np.ndarray | None = None,
    ) -> list[FaceDoc]:
        s3 = self.env.aws.client("s3")
        faces = []
        for index, identity in enumerate(identities):
            crop = f"crops/{self.user_id}/{image_id}/{self.model_id}/{index}.jpg"
            s3.put_object(Bucket=self.bucket, Key=crop, Body=f"{image_id}:{index}".encode())
            x = 200.0 * index
            faces.append(
                FaceDoc(
                    user_id=self.user_id,
                    image_id=image_id,
                    model_id=self.model_id,
                    index=index,
                    bbox=(x, 0.0, x + size, size),
                    landmarks=((1.0, 1.0),) * 5,
                    det_score=0.95,
                    quality=0.9,
                    embedding=self.ids.sample(identity, centres),
                    crop_key=crop,
                )
            )
            self.truth[faces[-1].doc_id] = identity
        image = ImageDoc(
            self.user_id,
            image_id,
            "gallery",
            image_key(self.user_id, image_id),
            ImageStatus.PROCESSING,
            model_id=self.model_id,
        )
        self.repo().gallery.save_result(image, faces)
        return faces

    def photos(self, prefix: str, per_identity: int, identities: range | list[int]) -> list[str]:
        """One single-face photo per (identity, n); returns the photo ids in arrival order."""
        image_ids = []
        for n in range(per_identity):
            for identity in identities:
                image_id = f"{prefix}{identity:02d}x{n:02d}"
                self.add_photo(image_id, [identity])
                image_ids.append(image_id)
        return image_ids


def store_for(env: Any, timeout_ms: int = 2000) -> GroupingStore:
    """The stores the settings point at (a test may point them at its own nx-27017)."""
    settings = Settings.from_env()
    assert settings.gallery_images_mongo_uri and settings.huemn_mongo_uri
    return GroupingStore(
        connect(settings.gallery_images_mongo_uri, GALLERY_DEFAULT_DB, timeout_ms=timeout_ms),
        connect(settings.huemn_mongo_uri, HUEMN_DEFAULT_DB, timeout_ms=timeout_ms),
    )


@dataclass
class Setup:
    env: Any
    queue: TestQueue
    bucket: str

    def service(self, metrics: MetricsEmitter | None = None) -> GroupingService:
        return build_service(Settings.from_env(), metrics)

    def request(self, user_id: str, image_ids: list[str]) -> str:
        return send(self.env, self.queue.url, GroupingRequest(user_id, tuple(image_ids)).to_body())

    def consume(self, service: GroupingService, **overrides: Any) -> int:
        return self.consume_with(service.handle, **overrides)

    def consume_with(self, handler: Handler, **overrides: Any) -> int:
        values: dict[str, Any] = dict(
            queue_url=self.queue.url,
            batch_size=10,
            visibility_timeout=30,
            poll_wait_seconds=1,
            idle_exit_seconds=1.0,
            shutdown_deadline_seconds=5.0,
            backoff_initial_seconds=0.2,
            backoff_max_seconds=0.5,
            aws=self.env.aws,
        )
        values.update(overrides)
        return Consumer(ConsumerConfig(**values), handler).run()


def make_setup(env: Any, monkeypatch: Any, max_receive_count: int = 2) -> Setup:
    queue = create_queue(env, env.names.group_face_queue, max_receive_count=max_receive_count)
    bucket = create_bucket(env, f"{env.names.prefix}-faces")
    monkeypatch.setenv("GROUP_FACE_QUEUE_URL", queue.url)
    monkeypatch.setenv("FACE_GROUP_BUCKET_NAME", bucket)
    return Setup(env, queue, bucket)


def people(env: Any, user_id: str) -> dict[int, dict[str, Any]]:
    """person id -> {name, members (set of face ids), cover}: the stored people, comparable."""
    return {
        p.person_id: {
            "name": p.name,
            "members": frozenset(p.member_face_ids),
            "cover": p.cover_face_id,
            "cover_key": p.cover_key,
        }
        for p in store_for(env).people.people_of_user(user_id)
    }


def by_identity(truth: dict[str, int], stored: dict[int, dict[str, Any]]) -> dict[int, set[int]]:
    """identity -> the people holding its faces."""
    found: dict[int, set[int]] = {}
    for person_id, person in stored.items():
        for face_id in person["members"]:
            found.setdefault(truth[face_id], set()).add(person_id)
    return found
