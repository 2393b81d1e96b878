"""The consent mode (FACE_RECOGNITION_CONSENT) through the detection worker, against the moto
server and nx-27017 (dev model): under opt_in a photo is indexed only after the user's explicit
opt-in; the upload is recorded as the user's last interaction either way."""

from __future__ import annotations

from pathlib import Path

import pytest

from facefleet.common.documents import ImageStatus
from facefleet.common.privacy import PrivacyRepository
from facefleet.tools.cli import main as cli
from facefleet.worker.detection.analyzer import FaceAnalyzer
from facefleet.worker.privacy.activity import ActivityRepository
from facefleet.worker.privacy.consent import REASONS, ConsentMode, Recognition, decide
from tests.test_detection_privacy import crops
from tests.test_detection_service import USER, Stack


@pytest.fixture(scope="module")
def analyzer(models_dir: Path) -> FaceAnalyzer:
    return FaceAnalyzer.from_pack(models_dir)


@pytest.mark.parametrize(
    ("mode", "stored", "expected"),
    [
        ("opt_out", None, Recognition.ON),  # today's behaviour: on unless switched off
        ("opt_out", True, Recognition.ON),
        ("opt_out", False, Recognition.OFF),
        ("opt_in", None, Recognition.NO_CONSENT),
        ("opt_in", "yes", Recognition.NO_CONSENT),  # only an explicit true is consent
        ("opt_in", True, Recognition.ON),
        ("opt_in", False, Recognition.OFF),
    ],
)
def test_decide(mode: str, stored: object, expected: Recognition) -> None:
    assert decide(ConsentMode(mode), stored) is expected


def test_opt_in_indexes_only_after_consent(
    env, analyzer: FaceAnalyzer, faces_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch
) -> None:
    stack = Stack(env)
    data = (faces_dir / "groups" / "couple.jpg").read_bytes()
    opt_in = {"FACE_RECOGNITION_CONSENT": "opt_in"}
    activity = ActivityRepository(stack.repository.faces.database)

    # No choice recorded: the photo is done with no faces, no crops, nothing for grouping.
    request = stack.upload("before.jpg", data)
    stack.send(request.to_body())
    assert stack.drain(analyzer, **opt_in) == 0
    image = stack.repository.get_image(USER, "before.jpg")
    assert image is not None and image.status == ImageStatus.DONE and image.face_count == 0
    assert image.reason == REASONS[Recognition.NO_CONSENT]
    assert stack.repository.count_faces(USER) == 0 and not crops(stack, "before.jpg")
    assert stack.grouping_requests() == []
    assert activity.last(USER) == request.requested_at  # an upload is an interaction

    # Before the opt-in nothing can be re-indexed.
    for key, value in {**stack.environment(), **opt_in}.items():
        monkeypatch.setenv(key, value)
    assert cli(["people", "reindex", "--user", USER]) == 2
    assert "no_consent" in capsys.readouterr().out

    # The user opts in (the CLI writes `face_recognition: true`): new photos are indexed.
    assert cli(["people", "recognition", "--user", USER, "on"]) == 0
    assert "face recognition on" in capsys.readouterr().out
    stack.send(stack.upload("after.jpg", data).to_body())
    assert stack.drain(analyzer, **opt_in) == 0
    image = stack.repository.get_image(USER, "after.jpg")
    assert image is not None and image.face_count >= 1 and image.reason is None
    assert stack.repository.count_faces(USER) == image.face_count
    assert len(crops(stack, "after.jpg")) == image.face_count
    [grouping] = stack.grouping_requests()
    assert grouping["type"] == "group" and grouping["image_ids"] == ["after.jpg"]
    # The photo uploaded before the opt-in is not indexed by it, until asked for.
    before = stack.repository.get_image(USER, "before.jpg")
    assert before is not None and before.face_count == 0
    assert cli(["people", "reindex", "--user", USER, "--dry-run"]) == 0
    assert "1 photos of u1 would be sent" in capsys.readouterr().out
    assert stack.drain(analyzer, **opt_in) == 0 and stack.grouping_requests() == []
    assert cli(["people", "reindex", "--user", USER]) == 0
    assert "1 photos of u1 sent" in capsys.readouterr().out
    assert stack.drain(analyzer, **opt_in) == 0
    before = stack.repository.get_image(USER, "before.jpg")
    assert before is not None and before.face_count >= 1 and before.reason is None
    assert [r["image_ids"] for r in stack.grouping_requests()] == [["before.jpg"]]
    assert cli(["people", "reindex", "--user", USER]) == 0  # nothing left: idempotent
    assert "0 photos of u1 sent" in capsys.readouterr().out


def test_switching_to_opt_in_erases_nothing_by_itself(
    env, analyzer: FaceAnalyzer, faces_dir: Path
) -> None:
    stack = Stack(env)
    data = (faces_dir / "groups" / "couple.jpg").read_bytes()
    stack.send(stack.upload("old.jpg", data).to_body())
    assert stack.drain(analyzer) == 0  # opt_out (the default): indexed
    faces = stack.repository.count_faces(USER)
    assert faces >= 1
    stack.grouping_requests()

    stack.send(stack.upload("new.jpg", data).to_body())
    assert stack.drain(analyzer, FACE_RECOGNITION_CONSENT="opt_in") == 0
    new = stack.repository.get_image(USER, "new.jpg")
    assert new is not None and new.face_count == 0
    assert stack.repository.count_faces(USER) == faces  # the faces indexed before stay
    assert stack.grouping_requests() == []  # no erasure asked: only `off` erases

    # An explicit `off` under opt_in erases as under opt_out.
    PrivacyRepository(stack.repository.faces.database).set_recognition(USER, False)
    stack.send(stack.upload("later.jpg", data).to_body())
    assert stack.drain(analyzer, FACE_RECOGNITION_CONSENT="opt_in") == 0
    [request] = stack.grouping_requests()
    assert request["type"] == "erase" and request["reason"] == "opt_out"
