"""FaceAnalyzer on the dev pack: six faces, LFW verification, fixed-batch recognisers, quality."""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest

from facefleet.worker.detection.analyzer import FaceAnalyzer
from facefleet.worker.detection.detector import detection_canvas, with_batch_axis
from facefleet.worker.detection.imaging import DecodedImage, decode_image
from facefleet.worker.detection.pack import load_pack
from facefleet.worker.detection.pipeline import StageClock, run_pipeline
from facefleet.worker.models import ModelPackError

SHARED = Path(os.environ.get("FACEFLEET_SHARED", Path(__file__).resolve().parents[2] / "shared"))
FIXTURES = Path(__file__).resolve().parent / "fixtures"
PAIRS = 50  # per kind: enough for a 98 % bar, small enough to run in seconds


@pytest.fixture(scope="module")
def analyzer() -> FaceAnalyzer:
    return FaceAnalyzer.from_pack(SHARED / "models" / "facefleet-dev")


def read(path: Path) -> np.ndarray:
    image = cv2.imread(str(path))
    assert image is not None, path
    return image


def central_face(faces, image: np.ndarray):
    """The LFW subject: the largest face nearest the centre (backgrounds hold other people)."""
    height, width = image.shape[:2]

    def score(face) -> float:
        x1, y1, x2, y2 = face.bbox
        off = np.hypot((x1 + x2) / 2 - width / 2, (y1 + y2) / 2 - height / 2)
        return (x2 - x1) * (y2 - y1) - 4 * off * off

    return max(faces, key=score)


def test_six_faces_with_unit_embeddings(analyzer: FaceAnalyzer, faces_dir: Path) -> None:
    image = read(faces_dir / "groups" / "group_six.jpg")
    [faces] = analyzer.analyze([image])
    assert len(faces) == 6
    for face in faces:
        assert face.embedding.dtype == np.float32
        assert face.embedding.shape == (analyzer.embedding_dim,) == (128,)
        assert abs(float(np.linalg.norm(face.embedding)) - 1) < 1e-4
        assert face.landmarks.shape == (5, 2)
        assert 0 <= face.quality <= 1 and 0 < face.det_score <= 1
        assert face.crop is not None and face.crop.shape == (112, 112, 3)
        x1, y1, x2, y2 = face.bbox
        assert 0 <= x1 < x2 <= image.shape[1] and 0 <= y1 < y2 <= image.shape[0]
    # Six different people: no two embeddings as close as the same person's usually are.
    vectors = np.stack([f.embedding for f in faces])
    similarity = vectors @ vectors.T
    assert similarity[~np.eye(6, dtype=bool)].max() < 0.6


def test_lfw_verification_accuracy(faces_dir: Path, models_dir: Path) -> None:
    # LFW photos are 250 px: a 320 canvas finds their faces at a quarter of the 640 cost.
    analyzer = FaceAnalyzer.from_pack(models_dir, det_size=320, keep_crops=False)
    people = [
        p
        for p in sorted((faces_dir / "lfw").iterdir())
        if p.is_dir() and len(list(p.glob("*.jpg"))) >= 2
    ][: PAIRS + 1]
    paths = [sorted(p.glob("*.jpg"))[:2] for p in people]
    images = {path: read(path) for pair in paths for path in pair}
    order = list(images)
    results = analyzer.analyze([images[p] for p in order])
    embedding = {
        p: central_face(faces, images[p]).embedding for p, faces in zip(order, results, strict=True)
    }
    same = [float(embedding[a] @ embedding[b]) for a, b in paths[:PAIRS]]
    different = [float(embedding[paths[i][0]] @ embedding[paths[i + 1][1]]) for i in range(PAIRS)]
    scores = np.array(same + different)
    truth = np.array([True] * len(same) + [False] * len(different))
    accuracy = max(float(((scores >= t) == truth).mean()) for t in np.unique(scores))
    assert accuracy >= 0.98, (accuracy, np.mean(same), np.mean(different))
    assert np.mean(same) > 0.45 and np.mean(different) < 0.15


def test_fixed_batch_recogniser_and_fixed_detector(
    tmp_path: Path, analyzer: FaceAnalyzer, faces_dir: Path
) -> None:
    extra = SHARED / "models" / "extra"
    (tmp_path / "det.onnx").symlink_to(extra / "det_2.5g_kps_fixed640.onnx")
    (tmp_path / "rec.onnx").symlink_to(extra / "rec_mobilefacenet_batch1.onnx")
    fixed = FaceAnalyzer(load_pack(tmp_path), rec_batch_size=32)
    assert fixed.rec_batch_size == 1 and fixed.pack.det_fixed_size == (640, 640)
    image = read(faces_dir / "groups" / "group_six.jpg")
    [faces] = fixed.analyze([image])
    [reference] = analyzer.analyze([image])
    assert len(faces) == 6
    # The same recogniser weights: embeddings agree face by face.
    cos = np.stack([f.embedding for f in faces]) @ np.stack([f.embedding for f in reference]).T
    assert np.all(cos.max(axis=1) > 0.98)


def test_a_pack_without_a_recogniser_is_refused(tmp_path: Path) -> None:
    (tmp_path / "det.onnx").symlink_to(SHARED / "models" / "extra" / "det_500m_kps.onnx")
    with pytest.raises(ModelPackError, match="needs a detector and a recogniser"):
        load_pack(tmp_path, warm=False)
    with pytest.raises(ModelPackError, match=r"holds no \.onnx"):
        load_pack(tmp_path / "empty", warm=False)


def test_a_face_that_fills_the_frame_is_found(analyzer: FaceAnalyzer, faces_dir: Path) -> None:
    image = read(faces_dir / "groups" / "group_six.jpg")
    [faces] = analyzer.analyze([image])
    x1, y1, x2, y2 = (int(v) for v in faces[0].bbox)
    tight = np.ascontiguousarray(image[y1:y2, x1:x2])  # nothing around the face
    tight = cv2.resize(tight, (400, int(400 * (y2 - y1) / (x2 - x1))))
    [found] = analyzer.analyze([tight])
    assert len(found) == 1
    # The plain SCRFD pass misses it: the padded second pass is what finds it.
    assert FaceAnalyzer(analyzer.pack, pad_ratio=0).locate(tight) == []


def test_quality_ranks_a_blurred_face_lower(analyzer: FaceAnalyzer, faces_dir: Path) -> None:
    image = read(faces_dir / "groups" / "group_six.jpg")
    blurred = cv2.GaussianBlur(image, (0, 0), 4)
    [sharp_faces], [blurred_faces] = analyzer.analyze([image]), analyzer.analyze([blurred])
    assert max(f.quality for f in blurred_faces) < max(f.quality for f in sharp_faces)


def test_detection_canvas_keeps_the_scale_and_the_stride() -> None:
    assert detection_canvas(1280, 886, 640) == (640, 448)
    assert detection_canvas(250, 250, 640) == (640, 640)
    assert detection_canvas(500, 1200, 640) == (288, 640)


def test_gallery_face_counts_are_unchanged(analyzer: FaceAnalyzer, faces_dir: Path) -> None:
    """The worker's path (reduced decode, then `run_pipeline`) finds on every gallery photo the
    faces the code found before the issue-18 speed work: counts measured with that code, one per
    photo, in tests/fixtures/gallery_face_counts.json."""
    expected = json.loads((FIXTURES / "gallery_face_counts.json").read_text())
    gallery = faces_dir / "gallery"
    names = sorted(str(p.relative_to(gallery)) for p in gallery.glob("*/*"))
    assert names == sorted(expected)

    def fetch(name: str, clock: StageClock) -> DecodedImage:
        return decode_image((gallery / name).read_bytes(), max_side=2 * analyzer.det_size)

    with ThreadPoolExecutor(4) as executor:
        results = run_pipeline(analyzer, names, fetch, executor)
    assert all(r.error is None for r in results)
    found = {name: len(r.faces) for name, r in zip(names, results, strict=True)}
    assert found == expected


def test_the_batch_axis_keeps_each_image_apart(models_dir: Path, faces_dir: Path) -> None:
    """The GPU path on the CPU: the detector given a batch axis, images padded to one square canvas
    per call, find per image what the same canvas finds one image at a time."""
    original = onnx.load(str(models_dir / "det_2.5g_bnkps.onnx"))
    rewritten = with_batch_axis(original)
    assert rewritten is not None
    probe = np.random.default_rng(0).standard_normal((2, 3, 320, 256)).astype(np.float32)
    plain = ort.InferenceSession(original.SerializeToString(), providers=["CPUExecutionProvider"])
    batched = ort.InferenceSession(
        rewritten.SerializeToString(), providers=["CPUExecutionProvider"]
    )
    for image in range(2):
        alone = plain.run(None, {"input.1": probe[image : image + 1]})
        together = batched.run(None, {"input.1": probe})
        for a, b in zip(alone, together, strict=True):
            np.testing.assert_allclose(b[image], a, rtol=1e-4, atol=1e-4)

    pack = load_pack(models_dir, batch_detector=True)
    assert pack.det_batched
    batching = FaceAnalyzer(pack, det_batch_size=3)
    one_by_one = FaceAnalyzer(pack, det_batch_size=1)
    assert batching.batched and not one_by_one.batched
    paths = [faces_dir / "groups" / "group_six.jpg"]
    paths += sorted((faces_dir / "gallery").glob("*/*.jpg"))[:4]
    images = [read(p) for p in paths]
    together = batching.locate_many(images)
    for image, faces in zip(images, together, strict=True):
        [alone] = one_by_one._detect_group([image], 640, square=True)
        assert len(faces) == len(alone[0])
        boxes = np.array([f.bbox for f in faces]).reshape(-1, 4)
        np.testing.assert_allclose(boxes, alone[0][:, :4], atol=0.05)
    assert len(together[0]) == 6

    def fetch(path: Path, clock: StageClock) -> DecodedImage:
        return decode_image(path.read_bytes(), max_side=1280)

    with ThreadPoolExecutor(2) as executor:
        results = run_pipeline(batching, paths, fetch, executor)
    assert [len(r.faces) for r in results] == [
        len(f)
        for f in batching.locate_many([r.decoded.pixels for r in results if r.decoded is not None])
    ]
    assert all(r.faces and r.faces[0].embedding.shape == (128,) for r in results)
