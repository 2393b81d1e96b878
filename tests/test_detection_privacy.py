"""The detection worker's privacy paths against the moto server and nx-27017 (dev model): S3
events ordered by sequencer (a delete that overtakes its create, a re-upload after it, a stale
delete after a re-upload), explicit deletes, the opt-out."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import quote_plus

import pytest

from facefleet.common.documents import ImageStatus
from facefleet.common.messages import DeleteRequest
from facefleet.common.privacy import PrivacyRepository
from facefleet.common.s3keys import image_key
from facefleet.worker.detection.analyzer import FaceAnalyzer
from tests.test_detection_service import USER, Stack


@pytest.fixture(scope="module")
def analyzer(models_dir: Path) -> FaceAnalyzer:
    return FaceAnalyzer.from_pack(models_dir)


def event(stack: Stack, image_id: str, name: str, sequencer: str) -> str:
    record = {
        "eventName": name,
        "eventTime": "2026-01-01T00:00:00.000Z",
        "s3": {
            "bucket": {"name": stack.bucket},
            "object": {"key": quote_plus(image_key(USER, image_id)), "sequencer": sequencer},
        },
    }
    return json.dumps({"Records": [record]})


def crops(stack: Stack, image_id: str) -> list[str]:
    listed = stack.s3.list_objects_v2(Bucket=stack.face_bucket, Prefix=f"faces/{USER}/{image_id}/")
    return [o["Key"] for o in listed.get("Contents", [])]


def test_s3_deletes_and_creates_in_any_order(env, analyzer: FaceAnalyzer, faces_dir: Path) -> None:
    stack = Stack(env)
    photo = (faces_dir / "groups" / "couple.jpg").read_bytes()
    stack.upload("couple.jpg", photo)
    # The delete (sequencer 20) arrives before its create (10): the create must not index.
    stack.send(event(stack, "couple.jpg", "ObjectRemoved:Delete", "0000000020"))
    stack.send(event(stack, "couple.jpg", "ObjectCreated:Put", "0000000010"))
    assert stack.drain(analyzer) == 0
    assert stack.repository.count_faces(USER) == 0 and not crops(stack, "couple.jpg")
    assert stack.repository.get_image(USER, "couple.jpg") is None

    # The re-upload (30) indexes normally; a duplicate of the old delete (20) changes nothing.
    stack.send(event(stack, "couple.jpg", "ObjectCreated:Put", "0000000030"))
    assert stack.drain(analyzer) == 0
    image = stack.repository.get_image(USER, "couple.jpg")
    assert image is not None and image.status == ImageStatus.DONE and image.face_count >= 1
    faces = stack.repository.count_faces(USER)
    assert faces == image.face_count and len(crops(stack, "couple.jpg")) == faces
    stack.send(event(stack, "couple.jpg", "ObjectRemoved:Delete", "0000000020"))
    assert stack.drain(analyzer) == 0
    assert stack.repository.count_faces(USER) == faces

    # A later delete (40) removes faces, crops and the image, and asks grouping to forget.
    stack.grouping_requests()  # (drops what is queued so far)
    stack.send(event(stack, "couple.jpg", "ObjectRemoved:DeleteMarkerCreated", "0000000040"))
    assert stack.drain(analyzer) == 0
    assert stack.repository.count_faces(USER) == 0 and not crops(stack, "couple.jpg")
    assert stack.repository.get_image(USER, "couple.jpg") is None
    assert stack.grouping_requests() == [
        {"type": "forget", "user_id": USER, "image_ids": ["couple.jpg"], "version": 1}
    ]
    # A delete of a photo nobody knows is a no-op that succeeds (nothing for grouping).
    stack.send(DeleteRequest(USER, "never.jpg", 5).to_body())
    stack.send(DeleteRequest("nobody", "x.jpg", 5).to_body())
    assert stack.drain(analyzer) == 0
    assert stack.grouping_requests() == []


def test_face_recognition_off_stores_no_faces_and_requests_erasure(
    env, analyzer: FaceAnalyzer, faces_dir: Path
) -> None:
    stack = Stack(env)
    data = (faces_dir / "groups" / "couple.jpg").read_bytes()
    stack.send(stack.upload("before.jpg", data).to_body())
    assert stack.drain(analyzer) == 0
    assert stack.repository.count_faces(USER) > 0
    stack.grouping_requests()

    PrivacyRepository(stack.repository.faces.database).set_recognition(USER, False)
    stack.send(stack.upload("after.jpg", data).to_body())
    assert stack.drain(analyzer) == 0
    image = stack.repository.get_image(USER, "after.jpg")
    assert image is not None and image.status == ImageStatus.DONE and image.face_count == 0
    assert stack.repository.faces_of_images(USER, ["after.jpg"]) == []
    assert not crops(stack, "after.jpg")
    [request] = stack.grouping_requests()
    assert request["type"] == "erase" and request["reason"] == "opt_out"
