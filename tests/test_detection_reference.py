"""The worker's detector and recogniser against insightface's own SCRFD and ArcFace classes: the
same sessions, the same photos, the same numbers (boxes, landmarks and embeddings within 1e-5).

The worker decodes SCRFD's heads and normalises crops itself (`detection.detector`,
`detection.recogniser`); insightface is the reference it must agree with, on every detector graph
the shared models hold (dynamic input, fixed 640 input with batch-major outputs, the batch axis
the GPU path adds) and on both recogniser exports.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from insightface.model_zoo import SCRFD, ArcFaceONNX

from facefleet.worker.detection.detector import Detector, nms, read_heads
from facefleet.worker.detection.pack import load_pack
from facefleet.worker.detection.recogniser import Recogniser
from facefleet.worker.models import cpu_session

SHARED = Path(os.environ.get("FACEFLEET_SHARED", Path(__file__).resolve().parents[2] / "shared"))
EXTRA = SHARED / "models" / "extra"
CPU = ["CPUExecutionProvider"]
TOLERANCE = 1e-5


def photos(faces_dir: Path) -> list[np.ndarray]:
    """Group photos, a slice of the gallery (sizes and aspect ratios vary) and a few LFW crops."""
    paths = sorted(p for p in (faces_dir / "groups").iterdir() if p.is_file())
    paths += sorted((faces_dir / "gallery").glob("*/*.jpg"))[::20]
    paths += sorted((faces_dir / "lfw").glob("*/*.jpg"))[:2]
    images = [cv2.imread(str(p)) for p in paths]
    return [image for image in images if image is not None]


@pytest.fixture(scope="module")
def images(faces_dir: Path) -> list[np.ndarray]:
    return photos(faces_dir)


def detectors(models_dir: Path) -> list[tuple[str, Detector, list[tuple[int, bool]]]]:
    """Each detector graph with the canvases (det_size, square) the worker gives it."""
    plain = models_dir / "det_2.5g_bnkps.onnx"
    return [
        ("dynamic input", Detector(plain, CPU).load(), [(640, False), (320, False)]),
        ("batch axis added", Detector(plain, CPU, batch=True).load(), [(640, True)]),
        (
            "fixed 640, batch-major",
            Detector(EXTRA / "det_2.5g_kps_fixed640.onnx", CPU).load(),
            [(640, False)],
        ),
        ("500m", Detector(EXTRA / "det_500m_kps.onnx", CPU).load(), [(640, False)]),
    ]


def test_detections_match_insightface(models_dir: Path, images: list[np.ndarray]) -> None:
    found = 0
    for label, detector, canvases in detectors(models_dir):
        assert detector.session is not None
        reference = SCRFD(
            model_file=detector.model_file, session=detector.session, static_shape_sessions=False
        )
        for image in images:
            for det_size, square in canvases:
                canvas = detector.canvas(image.shape[1], image.shape[0], det_size, square)
                [(boxes, points)] = detector.predict([image], det_size, square=square)
                want_boxes, want_points = reference.detect(image, input_size=canvas.size)
                assert boxes.shape == want_boxes.shape, label
                np.testing.assert_allclose(boxes, want_boxes, atol=TOLERANCE, err_msg=label)
                np.testing.assert_allclose(points, want_points, atol=TOLERANCE, err_msg=label)
                found += len(boxes)
    assert found > 100  # faces were found, so the comparison compared something


def test_the_heads_are_read_from_the_graph(models_dir: Path) -> None:
    import onnx

    for path in [models_dir / "det_2.5g_bnkps.onnx", *sorted(EXTRA.glob("det_*.onnx"))]:
        heads = read_heads(onnx.load(str(path)), cpu_session(path), path.name)
        # SCRFD's three levels, two anchors per cell; outputs ordered scores, boxes, landmarks.
        assert heads.strides == (8, 16, 32), path.name
        assert heads.anchors_per_cell == 2
        assert (heads.scores, heads.boxes, heads.points) == ((0, 1, 2), (3, 4, 5), (6, 7, 8))


def test_embeddings_match_insightface(models_dir: Path, images: list[np.ndarray]) -> None:
    pack = load_pack(models_dir, CPU, warm=False)
    crops = []
    for image in images[:6]:
        [(_, points)] = pack.detector.predict([image], 640, square=False)
        crops += [_crop(image, landmarks) for landmarks in points]
    assert len(crops) > 10
    for path in (models_dir / "rec_mobilefacenet.onnx", EXTRA / "rec_mobilefacenet_b.onnx"):
        recogniser = Recogniser(path, CPU).load()
        reference = ArcFaceONNX(model_file=str(path), session=recogniser.session)
        assert (recogniser.input_mean, recogniser.input_std) == (
            reference.input_mean,
            reference.input_std,
        )
        got = recogniser.predict(crops)
        assert got.shape == (len(crops), recogniser.embedding_dim)
        np.testing.assert_allclose(got, reference.get_feat(crops), atol=TOLERANCE)


def _crop(image: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    from insightface.utils import face_align

    return face_align.norm_crop(image, landmarks, image_size=112)


_BOXES = hnp.arrays(
    np.float32,
    st.tuples(st.integers(0, 40), st.just(4)),
    elements=st.floats(0, 200, width=32),
)


@settings(max_examples=200, deadline=None)
@given(_BOXES, st.data())
def test_nms_keeps_what_insightface_keeps(corners: np.ndarray, data: st.DataObject) -> None:
    low, high = (
        np.minimum(corners[:, :2], corners[:, 2:]),
        np.maximum(corners[:, :2], corners[:, 2:]),
    )
    scores = data.draw(
        hnp.arrays(np.float32, (len(corners), 1), elements=st.floats(0.5, 1, width=32))
    )
    candidates = np.hstack((low, high, scores)).astype(np.float32)
    reference = SCRFD.nms(SimpleNamespace(nms_thresh=0.4), candidates)
    assert nms(candidates) == [int(i) for i in reference]
