"""Faces of images: SCRFD detection, 5-point ArcFace alignment, batched ArcFace embeddings.

Public API (the grouping service and the benchmark use it)::

    analyzer = FaceAnalyzer.from_pack(Path("../shared/models/facefleet-dev"))
    faces_per_image = analyzer.analyze([bgr_image, ...])   # list[list[DetectedFace]]
    analyzer.model_id, analyzer.embedding_dim   # embeddings of two models never mix

`DetectedFace`: bbox (x1, y1, x2, y2) and landmarks (5x2: eyes, nose, mouth corners) in the
input image's pixels, det_score, quality in [0, 1], embedding (L2-normalised float32, dimension
from the pack: 128 for the dev pack, 512 for buffalo_l) and the aligned 112x112 BGR crop.

Recognition is batched across all faces of all images given (batch size per execution provider,
see `models.REC_BATCH_SIZES`). The worker pipelines further with the two halves: `locate(image)`
(detect + align + quality, per image, as images arrive) and `embed_located(...)` (one batched
recognition pass over the faces of a whole message batch).

When the first detection pass finds nothing, a second pass runs on the image padded with a border:
SCRFD misses faces that fill the whole frame (a close-up selfie, an LFW-style crop).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from insightface.utils import face_align

from facefleet.worker.models import ModelPack, load_pack

# The ArcFace template (112x112): eye centres, nose tip, mouth corners.
TEMPLATE = face_align.arcface_dst
_TEMPLATE_EYE_DISTANCE = float(TEMPLATE[1, 0] - TEMPLATE[0, 0])
DET_STRIDE = 32


@dataclass
class DetectedFace:
    bbox: tuple[float, float, float, float]
    landmarks: np.ndarray  # (5, 2) float32
    det_score: float
    quality: float
    embedding: np.ndarray  # (D,) float32, unit norm
    crop: np.ndarray | None = None  # aligned BGR crop, recogniser input size (112x112)
    # The recogniser's raw (pre-normalisation) norm: low for faces it cannot read (a trust signal;
    # None where it was not measured, so grouping falls back to the quality score).
    embedding_norm: float | None = None


@dataclass
class LocatedFace:
    """A face before recognition: what `locate` finds on one image."""

    bbox: tuple[float, float, float, float]
    landmarks: np.ndarray
    det_score: float
    quality: float
    crop: np.ndarray

    def with_embedding(
        self, embedding: np.ndarray, keep_crop: bool = True, norm: float | None = None
    ) -> DetectedFace:
        return DetectedFace(
            self.bbox,
            self.landmarks,
            self.det_score,
            self.quality,
            embedding,
            self.crop if keep_crop else None,
            norm,
        )


def face_quality(
    bbox: Sequence[float], aligned_landmarks: np.ndarray, det_score: float, crop: np.ndarray
) -> float:
    """A score in [0, 1] that ranks faces for covers and grouping: mean of four parts.

    - size: the shorter bbox side against the recogniser's 112 px (a 40 px face scores 0.36);
    - detection score;
    - sharpness: variance of the Laplacian of the aligned grey crop (blurred faces score low);
    - pose: nose offset from the template in aligned coordinates, relative to the eye distance
      (a frontal face scores 1, a profile near 0).
    """
    width, height = bbox[2] - bbox[0], bbox[3] - bbox[1]
    size = float(np.clip(min(width, height) / 112.0, 0.0, 1.0))
    grey = cv2.cvtColor(crop, cv2.COLOR_BGR2GRAY) if crop.ndim == 3 else crop
    sharpness = float(cv2.Laplacian(grey, cv2.CV_64F).var())
    blur = float(np.clip(sharpness / 300.0, 0.0, 1.0))
    nose = aligned_landmarks[2]
    offset = math.hypot(nose[0] - TEMPLATE[2, 0], nose[1] - TEMPLATE[2, 1])
    pose = float(np.clip(1.0 - 2.0 * offset / _TEMPLATE_EYE_DISTANCE, 0.0, 1.0))
    score = 0.25 * size + 0.25 * float(np.clip(det_score, 0, 1)) + 0.25 * blur + 0.25 * pose
    return float(np.clip(score, 0.0, 1.0))


def detection_canvas(width: int, height: int, det_size: int) -> tuple[int, int]:
    """The detector input (w, h) for an image: the long side at det_size, the short side scaled
    the same and rounded up to the stride. Same scale as a det_size square, less padding."""
    scale = det_size / max(width, height)
    canvas_w = max(DET_STRIDE, math.ceil(width * scale / DET_STRIDE) * DET_STRIDE)
    canvas_h = max(DET_STRIDE, math.ceil(height * scale / DET_STRIDE) * DET_STRIDE)
    return min(canvas_w, det_size), min(canvas_h, det_size)


class FaceAnalyzer:
    """Detector + recogniser of one model pack; safe to share across threads for `locate`."""

    def __init__(
        self,
        pack: ModelPack,
        *,
        det_size: int = 640,
        det_threshold: float = 0.5,
        rec_batch_size: int | None = None,
        pad_ratio: float = 0.4,
        keep_crops: bool = True,
    ) -> None:
        self.pack = pack
        self.det_size = det_size
        self.det_threshold = det_threshold
        self.rec_batch_size = pack.rec_batch_size(rec_batch_size)
        self.pad_ratio = pad_ratio
        self.keep_crops = keep_crops
        self.crop_size = int(pack.recogniser.input_size[0])

    @classmethod
    def from_pack(
        cls, path: Path, providers: list[str] | None = None, **options: object
    ) -> FaceAnalyzer:
        """Load (and warm) the pack at `path`; options as in the constructor."""
        return cls(load_pack(Path(path), providers), **options)  # type: ignore[arg-type]

    @property
    def model_id(self) -> str:
        return self.pack.model_id

    @property
    def embedding_dim(self) -> int:
        return self.pack.embedding_dim

    # -- detection ----------------------------------------------------------------------------
    def _detect_once(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        height, width = image.shape[:2]
        size = self.pack.det_fixed_size or detection_canvas(width, height, self.det_size)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            boxes, points = self.pack.detector.detect(
                image, input_size=size, det_thresh=self.det_threshold
            )
        if points is None:
            raise ValueError(f"detector {self.pack.detector.model_file} has no keypoints output")
        return boxes, points

    def detect(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Boxes (N, 5: x1, y1, x2, y2, score) and landmarks (N, 5, 2); a padded second pass
        when the first finds nothing."""
        boxes, points = self._detect_once(image)
        if len(boxes) or self.pad_ratio <= 0:
            return boxes, points
        height, width = image.shape[:2]
        pad = max(16, int(self.pad_ratio * max(height, width)))
        padded = cv2.copyMakeBorder(image, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=0)
        boxes, points = self._detect_once(padded)
        if not len(boxes):
            return boxes, points
        boxes = boxes.copy()
        boxes[:, :4] -= pad
        boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, width)
        boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, height)
        return boxes, points - pad

    def align(self, image: np.ndarray, landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The aligned crop and the landmarks in crop coordinates."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # scikit-image deprecation inside estimate_norm
            matrix = face_align.estimate_norm(landmarks, self.crop_size)
        crop = cv2.warpAffine(image, matrix, (self.crop_size, self.crop_size), borderValue=0.0)
        aligned = landmarks @ matrix[:, :2].T + matrix[:, 2]
        return crop, aligned

    def locate(self, image: np.ndarray) -> list[LocatedFace]:
        """Detect, align and score the faces of one BGR uint8 image (largest score first)."""
        _check_image(image)
        boxes, points = self.detect(image)
        faces = []
        for box, landmarks in zip(boxes, points, strict=True):
            crop, aligned = self.align(image, landmarks)
            bbox = (float(box[0]), float(box[1]), float(box[2]), float(box[3]))
            quality = face_quality(bbox, aligned / (self.crop_size / 112.0), float(box[4]), crop)
            faces.append(
                LocatedFace(bbox, landmarks.astype(np.float32), float(box[4]), quality, crop)
            )
        return faces

    # -- recognition --------------------------------------------------------------------------
    def embed(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        """(N, D) L2-normalised float32 embeddings of aligned crops, in recogniser batches."""
        return self.embed_with_norms(crops)[0]

    def embed_with_norms(self, crops: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """`embed`, plus each embedding's raw norm before normalisation, (N,) float32."""
        if not crops:
            return np.zeros((0, self.embedding_dim), dtype=np.float32), np.zeros(0, np.float32)
        parts = [
            np.asarray(
                self.pack.recogniser.get_feat(list(crops[i : i + self.rec_batch_size])),
                dtype=np.float32,
            ).reshape(-1, self.embedding_dim)
            for i in range(0, len(crops), self.rec_batch_size)
        ]
        vectors = np.concatenate(parts)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return vectors / np.maximum(norms, 1e-12), norms[:, 0]

    def embed_located(self, located: Sequence[Sequence[LocatedFace]]) -> list[list[DetectedFace]]:
        """One batched recognition pass over the faces of many images."""
        crops = [face.crop for faces in located for face in faces]
        vectors, norms = self.embed_with_norms(crops)
        result: list[list[DetectedFace]] = []
        position = 0
        for faces in located:
            result.append(
                [
                    face.with_embedding(
                        vectors[position + i], self.keep_crops, float(norms[position + i])
                    )
                    for i, face in enumerate(faces)
                ]
            )
            position += len(faces)
        return result

    def analyze(self, images: Sequence[np.ndarray]) -> list[list[DetectedFace]]:
        """Faces of each BGR uint8 image, recognition batched across all of them."""
        return self.embed_located([self.locate(image) for image in images])


def _check_image(image: np.ndarray) -> None:
    if (
        not isinstance(image, np.ndarray)
        or image.dtype != np.uint8
        or image.ndim != 3
        or image.shape[2] != 3
    ):
        shape = getattr(image, "shape", None)
        raise ValueError(f"expected a BGR uint8 image (H, W, 3), got {shape}")
