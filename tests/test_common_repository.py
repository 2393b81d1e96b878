"""Documents and repositories against a real nx-27017 server through pymongo."""

from __future__ import annotations

import threading
from datetime import timedelta

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from facefleet.common.documents import (
    FaceDoc,
    ImageDoc,
    ImageStatus,
    PersonDoc,
    decode_embedding,
    encode_embedding,
)
from facefleet.common.repository import (
    GALLERY_DEFAULT_DB,
    GalleryRepository,
    LeaseHeld,
    PeopleRepository,
    connect,
    upsert,
)
from tests.conftest import ServerEnv


def unit(dim: int, seed: int) -> np.ndarray:
    vector = np.random.default_rng(seed).standard_normal(dim).astype(np.float32)
    return vector / np.linalg.norm(vector)


def face(image_id: str, index: int, dim: int = 128, user: str = "u1") -> FaceDoc:
    return FaceDoc(
        user_id=user,
        image_id=image_id,
        model_id="dev",
        index=index,
        bbox=(10.0 * index, 5.0, 10.0 * index + 40, 60.0),
        landmarks=tuple((float(i), float(i + 1)) for i in range(5)),
        det_score=0.9,
        quality=0.8,
        embedding=unit(dim, index),
    )


@given(
    arrays(np.float32, st.sampled_from([128, 512]), elements=st.floats(-1, 1, width=32)).filter(
        lambda v: np.linalg.norm(v) > 0.1
    )
)
def test_compact_embeddings_keep_cosine_similarity(vector: np.ndarray) -> None:
    vector = vector / np.linalg.norm(vector)
    restored = decode_embedding(bytes(encode_embedding(vector)))
    assert restored.dtype == np.float32 and restored.shape == vector.shape
    assert float(restored @ vector) > 0.999


@settings(max_examples=25)
@given(st.integers(0, 30), st.sampled_from([128, 512]))
def test_face_document_round_trips(index: int, dim: int) -> None:
    original = face("img", index, dim)
    restored = FaceDoc.from_mongo(original.to_mongo())
    assert restored.doc_id == original.doc_id
    assert restored.bbox == original.bbox and restored.landmarks == original.landmarks
    assert float(restored.embedding @ original.embedding) > 0.999


def test_face_ids_are_deterministic_and_distinct() -> None:
    assert face("a", 0).doc_id == face("a", 0).doc_id
    assert len({face("a", 0).doc_id, face("a", 1).doc_id, face("b", 0).doc_id}) == 3


def test_database_comes_from_the_uri(env: ServerEnv) -> None:
    assert connect(env.gallery_uri, GALLERY_DEFAULT_DB).name == f"gallery_{env.namespace}"
    assert connect(env.stack.mongo_uri, GALLERY_DEFAULT_DB).name == GALLERY_DEFAULT_DB


def test_saving_an_image_twice_never_duplicates_faces(env: ServerEnv) -> None:
    repo = GalleryRepository(connect(env.gallery_uri, GALLERY_DEFAULT_DB))
    repo.ensure_indexes()
    image = ImageDoc(
        "u1", "img", "gallery", "users/u1/img.jpg", ImageStatus.PROCESSING, model_id="dev"
    )
    repo.images.bulk_write([upsert(image.to_mongo())])  # the upsert every write path uses
    assert repo.get_image("u1", "img").status is ImageStatus.PROCESSING  # type: ignore[union-attr]
    for _ in range(2):
        repo.save_result(image, [face("img", i) for i in range(3)])
    assert repo.count_faces("u1") == 3
    stored = repo.get_image("u1", "img")
    assert stored is not None and stored.status is ImageStatus.DONE and stored.face_count == 3
    # A re-run that finds fewer faces leaves no stale ones behind.
    repo.save_result(image, [face("img", 0)])
    assert [f.index for f in repo.faces_of_user("u1", "dev")] == [0]


def test_failed_image_keeps_its_reason(env: ServerEnv) -> None:
    repo = GalleryRepository(connect(env.gallery_uri, GALLERY_DEFAULT_DB))
    image = ImageDoc("u1", "bad", "gallery", "users/u1/bad.jpg", ImageStatus.PROCESSING)
    repo.mark_failed(image, "corrupt image: cannot identify image file")
    stored = repo.get_image("u1", "bad")
    assert stored is not None and stored.status is ImageStatus.FAILED
    assert stored.reason == "corrupt image: cannot identify image file"


def test_faces_of_images_filters_by_user_and_image(env: ServerEnv) -> None:
    repo = GalleryRepository(connect(env.gallery_uri, GALLERY_DEFAULT_DB))
    for user in ("u1", "u2"):
        for image_id in ("a", "b"):
            image = ImageDoc(
                user,
                image_id,
                "g",
                f"users/{user}/{image_id}.jpg",
                ImageStatus.PROCESSING,
                model_id="dev",
            )
            repo.save_result(image, [face(image_id, 0, user=user), face(image_id, 1, user=user)])
    found = repo.faces_of_images("u1", ["a"], "dev")
    assert {(f.user_id, f.image_id) for f in found} == {("u1", "a")} and len(found) == 2


def test_people_round_trip(env: ServerEnv) -> None:
    repo = PeopleRepository(connect(env.huemn_uri, "huemn"))
    repo.ensure_indexes()
    person = PersonDoc("u1", 1, "dev", ["f1", "f2"], "f1", unit(128, 1), name="Ada")
    repo.save_people([person])
    repo.save_people([person])
    [stored] = repo.people_of_user("u1")
    assert stored.name == "Ada" and stored.member_face_ids == ["f1", "f2"]
    assert stored.face_count == 2
    repo.delete_people("u1", [1])
    assert repo.people_of_user("u1") == []


def test_lease_excludes_a_second_worker_until_it_expires(env: ServerEnv) -> None:
    repo = PeopleRepository(connect(env.huemn_uri, "huemn"))
    repo.acquire_lease("u1", "worker-a", timedelta(minutes=5))
    repo.acquire_lease("u1", "worker-a", timedelta(minutes=5))  # renewal by the owner
    with pytest.raises(LeaseHeld, match="u1"):
        repo.acquire_lease("u1", "worker-b", timedelta(minutes=5))
    repo.release_lease("u1", "worker-a")
    repo.acquire_lease("u1", "worker-b", timedelta(seconds=-1))  # already expired
    repo.acquire_lease("u1", "worker-c", timedelta(minutes=5))


def test_concurrent_lease_race_has_one_winner(env: ServerEnv) -> None:
    repo = PeopleRepository(connect(env.huemn_uri, "huemn"))
    winners: list[str] = []
    barrier = threading.Barrier(4)

    def contend(owner: str) -> None:
        barrier.wait()
        try:
            repo.acquire_lease("race", owner, timedelta(minutes=5))
            winners.append(owner)
        except LeaseHeld:
            pass

    threads = [threading.Thread(target=contend, args=(f"w{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(winners) == 1


def test_outage_surfaces_as_a_driver_error() -> None:
    from pymongo.errors import ServerSelectionTimeoutError

    repo = GalleryRepository(connect("mongodb://127.0.0.1:9/gallery", GALLERY_DEFAULT_DB, 300))
    with pytest.raises(ServerSelectionTimeoutError):
        repo.count_faces()
