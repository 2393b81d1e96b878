"""End to end, one photo: provisioned stack, upload, detection request, dispatch ticks in local
mode start a detection job and then a grouping job as local processes; the faces are stored once,
crops are in S3, the image is done, the faces are grouped, the queues are drained and the jobs
scale back to zero."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from facefleet.common.documents import ImageStatus
from facefleet.common.repository import GalleryRepository
from facefleet.tools.demo.gallery import Photo
from tests.e2e_support import E2EStack, localized_stack

USER = "e2e-single"
NO_COOLDOWN = {"cooldown_s": 0}


@pytest.fixture
def stack(env, tmp_path: Path, models_dir: Path, monkeypatch) -> Iterator[E2EStack]:
    yield from localized_stack(env, tmp_path, models_dir, monkeypatch)


def test_one_photo_through_detection_and_grouping(stack: E2EStack, faces_dir: Path) -> None:
    path = faces_dir / "groups" / "group_six.jpg"
    photo = Photo(USER, "six", path, "group")
    assert stack.send_photos([photo]) == 1

    seconds = stack.run_until_drained(NO_COOLDOWN, timeout=150)

    kinds = [s["kind"] for tick in stack.ticks for s in tick["submissions"]]
    assert kinds == ["detection", "grouping"], [t["reasons"] for t in stack.ticks]
    children = stack.executor.children()
    assert sorted((c.kind, c.status, c.exit_codes) for c in children) == [
        ("detection", "SUCCEEDED", (0,)),
        ("grouping", "SUCCEEDED", (0,)),
    ], stack.report()

    totals = stack.assert_processed_once([photo])
    image = stack.image_statuses(USER)["six"]
    assert image["status"] == ImageStatus.DONE and image["face_count"] == 6
    assert totals["faces"] == 6
    faces = GalleryRepository(stack.gallery()).faces_of_images(USER, ["six"])
    assert sorted(f.index for f in faces) == list(range(6))
    assert all(f.embedding.ndim == 1 and f.crop_key for f in faces)
    crops = sorted(stack.crop_keys())
    assert len(crops) == 6 and all(k.startswith(f"faces/{USER}/six/") for k in crops)
    # Six strangers in one photo: each face is placed (an assignment each); a person needs more
    # than one sighting, so none may exist yet.
    assignments, _people = stack.assert_grouped(USER)
    assert assignments == 6
    stack.assert_queues_empty()
    stack.assert_scaled_to_zero(NO_COOLDOWN)
    print(f"one photo, 6 faces, detected and grouped in {seconds:.1f} s")
