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
or `locate_many(images)` (detect + align + quality) and `embed_located(...)` (batched recognition
over the faces of a whole message batch), both run on `analyzer.pool`, one thread per inference
stream (`ModelPack.inference_streams`).

The models own their pre- and post-processing (`detector.Detector`: letterbox, SCRFD decoding,
NMS; `recogniser.Recogniser`: crop normalisation); this module aligns and scores the faces between
them. Alignment: the 4-parameter least-squares similarity in closed form, vectorised over the faces
of an image: the same transform as scikit-image's Umeyama estimate (in 2-D the two problems are
the same) without its per-face object, SVD and warnings (measured on the 2-core CPU, dev pack).

When the first detection pass finds nothing, a second pass runs on the image padded with a border:
SCRFD misses faces that fill the whole frame (a close-up selfie, an LFW-style crop). It runs on a
canvas of half the side (a quarter of the cost): a face that fills the frame still spans over half
of the padded canvas, far above the detector's smallest anchors. On 163 tight face crops of the
gallery that needed the second pass, the half-size pass found the same faces on 160, one more face
on 2 and one fewer on 1.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from insightface.utils import face_align

from facefleet.worker.detection.detector import DET_STRIDE, Detections
from facefleet.worker.detection.pack import ModelPack, load_pack

# The ArcFace template (112x112): eye centres, nose tip, mouth corners.
TEMPLATE = face_align.arcface_dst
_TEMPLATE_EYE_DISTANCE = float(TEMPLATE[1, 0] - TEMPLATE[0, 0])


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


def similarity_transforms(points: np.ndarray, template: np.ndarray) -> np.ndarray:
    """(F, 2, 3) least-squares similarity transforms taking each (5, 2) point set of `points`
    (F, 5, 2) onto `template` (5, 2): x' = a x - b y + tx, y' = b x + a y + ty.

    The same transform as scikit-image's `SimilarityTransform.estimate` (Umeyama): in 2-D a scaled
    rotation is exactly the matrix [[a, -b], [b, a]], so both minimise the same squared error over
    the same set; here in closed form, for all faces at once."""
    src = points.astype(np.float64)
    dst = template.astype(np.float64)
    src_mean = src.mean(axis=1, keepdims=True)
    dst_mean = dst.mean(axis=0)
    sx, sy = (src - src_mean)[..., 0], (src - src_mean)[..., 1]
    dx, dy = (dst - dst_mean)[:, 0], (dst - dst_mean)[:, 1]
    norm = np.maximum((sx * sx + sy * sy).sum(axis=1), 1e-12)
    a = (sx * dx + sy * dy).sum(axis=1) / norm
    b = (sx * dy - sy * dx).sum(axis=1) / norm
    mx, my = src_mean[:, 0, 0], src_mean[:, 0, 1]
    matrices = np.empty((len(src), 2, 3), dtype=np.float64)
    matrices[:, 0, 0], matrices[:, 0, 1] = a, -b
    matrices[:, 1, 0], matrices[:, 1, 1] = b, a
    matrices[:, 0, 2] = dst_mean[0] - (a * mx - b * my)
    matrices[:, 1, 2] = dst_mean[1] - (b * mx + a * my)
    return matrices


class FaceAnalyzer:
    """Detector + recogniser of one model pack; safe to share across threads for `locate`."""

    def __init__(
        self,
        pack: ModelPack,
        *,
        det_size: int = 640,
        det_threshold: float = 0.5,
        rec_batch_size: int | None = None,
        det_batch_size: int | None = None,
        pad_ratio: float = 0.4,
        keep_crops: bool = True,
    ) -> None:
        self.pack = pack
        self.det_size = det_size
        self.det_threshold = det_threshold
        self.rec_batch_size = pack.rec_batch_size(rec_batch_size)
        self.det_batch_size = pack.det_batch_size(det_batch_size)
        self.pad_ratio = pad_ratio
        self.keep_crops = keep_crops
        self.crop_size = int(pack.recogniser.input_size[0])
        self.streams = pack.inference_streams
        self._template = TEMPLATE * (self.crop_size / 112.0)
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()

    @classmethod
    def from_pack(
        cls, path: Path, providers: list[str] | None = None, **options: object
    ) -> FaceAnalyzer:
        """Load (and warm) the pack at `path`; options as in the constructor."""
        det_size = int(options.get("det_size", 640))  # type: ignore[call-overload]
        return cls(load_pack(Path(path), providers, det_size=det_size), **options)  # type: ignore[arg-type]

    @property
    def model_id(self) -> str:
        return self.pack.model_id

    @property
    def embedding_dim(self) -> int:
        return self.pack.embedding_dim

    @property
    def batched(self) -> bool:
        """Detection batched across images (GPU): `locate_many` shares one canvas size."""
        return self.det_batch_size > 1

    @property
    def pool(self) -> ThreadPoolExecutor:
        """The inference threads, one per stream; created on first use, shared by callers."""
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.streams, thread_name_prefix="infer")
            return self._pool

    # -- detection ----------------------------------------------------------------------------
    def _detect_group(
        self, images: Sequence[np.ndarray], det_size: int, square: bool, wide: bool = False
    ) -> list[Detections]:
        """One detector call over `images` (one canvas size for all of them)."""
        return self.pack.detector.predict(
            images, det_size, square=square, threshold=self.det_threshold, wide=wide
        )

    def _detect_images(
        self, images: Sequence[np.ndarray], det_size: int, wide: bool = False
    ) -> list[Detections]:
        if not self.batched:
            return [
                self._detect_group([image], det_size, square=False, wide=wide)[0]
                for image in images
            ]
        found: list[Detections] = []
        for start in range(0, len(images), self.det_batch_size):
            found += self._detect_group(
                images[start : start + self.det_batch_size], det_size, square=True
            )
        return found

    def _padded(self, image: np.ndarray) -> tuple[np.ndarray, int]:
        height, width = image.shape[:2]
        pad = max(16, int(self.pad_ratio * max(height, width)))
        return cv2.copyMakeBorder(image, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=0), pad

    def detect_many(self, images: Sequence[np.ndarray], *, wide: bool = False) -> list[Detections]:
        """Per image: boxes (N, 5: x1, y1, x2, y2, score) and landmarks (N, 5, 2); a padded
        second pass (half the canvas side) for the images where the first finds nothing.
        `wide`: on every core (the last image of a batch, when the other streams are idle)."""
        found = self._detect_images(images, self.det_size, wide)
        empty = [i for i, (boxes, _) in enumerate(found) if not len(boxes)]
        if not empty or self.pad_ratio <= 0:
            return found
        padded = [self._padded(images[i]) for i in empty]
        second_size = max(DET_STRIDE * 4, self.det_size // 2)
        again = self._detect_images([p for p, _ in padded], second_size, wide)
        for i, (_, pad), (boxes, points) in zip(empty, padded, again, strict=True):
            if not len(boxes):
                found[i] = (boxes, points)
                continue
            height, width = images[i].shape[:2]
            boxes = boxes.copy()
            boxes[:, :4] -= pad
            boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, width)
            boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, height)
            found[i] = (boxes, points - pad)
        return found

    def _faces(self, image: np.ndarray, boxes: np.ndarray, points: np.ndarray) -> list[LocatedFace]:
        if not len(boxes):
            return []
        matrices = similarity_transforms(points, self._template)
        aligned = np.einsum("fij,fkj->fki", matrices[:, :, :2], points) + matrices[:, None, :, 2]
        aligned /= self.crop_size / 112.0
        faces = []
        side = (self.crop_size, self.crop_size)
        for box, landmarks, matrix, crop_points in zip(
            boxes, points, matrices, aligned, strict=True
        ):
            crop = cv2.warpAffine(image, matrix, side, borderValue=0.0)
            bbox = (float(box[0]), float(box[1]), float(box[2]), float(box[3]))
            quality = face_quality(bbox, crop_points, float(box[4]), crop)
            faces.append(
                LocatedFace(bbox, landmarks.astype(np.float32), float(box[4]), quality, crop)
            )
        return faces

    def locate_many(
        self, images: Sequence[np.ndarray], *, wide: bool = False
    ) -> list[list[LocatedFace]]:
        """Detect, align and score the faces of BGR uint8 images (per image, largest score
        first); one detector call per `det_batch_size` images when batched."""
        for image in images:
            _check_image(image)
        found = self.detect_many(images, wide=wide)
        return [
            self._faces(image, boxes, points)
            for image, (boxes, points) in zip(images, found, strict=True)
        ]

    def locate(self, image: np.ndarray) -> list[LocatedFace]:
        """Detect, align and score the faces of one BGR uint8 image (largest score first)."""
        return self.locate_many([image])[0]

    # -- recognition --------------------------------------------------------------------------
    def _embed_chunk(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        return self.pack.recogniser.predict(crops)

    def embed(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        """(N, D) L2-normalised float32 embeddings of aligned crops, in recogniser batches."""
        return self.embed_with_norms(crops)[0]

    def embed_with_norms(self, crops: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """`embed`, plus each embedding's raw norm before normalisation, (N,) float32 (the
        grouping's trust signal). The batches run on the inference streams at once (each stream
        is one core on the CPU)."""
        if not crops:
            return np.zeros((0, self.embedding_dim), dtype=np.float32), np.zeros(0, np.float32)
        chunks = [
            crops[i : i + self.rec_batch_size] for i in range(0, len(crops), self.rec_batch_size)
        ]
        if len(chunks) == 1 or self.streams == 1 or _in_pool():
            parts = [self._embed_chunk(chunk) for chunk in chunks]
        else:
            parts = list(self.pool.map(self._embed_chunk, chunks))
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

    def locate_parallel(self, images: Sequence[np.ndarray]) -> list[list[LocatedFace]]:
        """`locate_many` spread over the inference streams (one image per stream on the CPU, one
        batch per call on a GPU)."""
        if self.batched:
            groups = [
                list(images[i : i + self.det_batch_size])
                for i in range(0, len(images), self.det_batch_size)
            ]
        else:
            groups = [[image] for image in images]
        if len(groups) <= 1 or self.streams == 1 or _in_pool():
            return [faces for group in groups for faces in self.locate_many(group)]
        return [faces for part in self.pool.map(self.locate_many, groups) for faces in part]

    def analyze(self, images: Sequence[np.ndarray]) -> list[list[DetectedFace]]:
        """Faces of each BGR uint8 image, recognition batched across all of them."""
        return self.embed_located(self.locate_parallel(images))

    def close(self) -> None:
        with self._pool_lock:
            if self._pool is not None:
                self._pool.shutdown(wait=False, cancel_futures=True)
                self._pool = None


def _in_pool() -> bool:
    """On an inference thread already: run inline (waiting on the pool from it could deadlock)."""
    return threading.current_thread().name.startswith("infer")


def _check_image(image: np.ndarray) -> None:
    if (
        not isinstance(image, np.ndarray)
        or image.dtype != np.uint8
        or image.ndim != 3
        or image.shape[2] != 3
    ):
        shape = getattr(image, "shape", None)
        raise ValueError(f"expected a BGR uint8 image (H, W, 3), got {shape}")
