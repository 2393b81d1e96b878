"""One image of a batch on its way through the handler, and the documents and crops it becomes."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from facefleet.common.documents import FaceDoc, ImageDoc, ImageStatus, face_doc_id
from facefleet.common.messages import DetectionRequest
from facefleet.common.s3keys import crop_key
from facefleet.worker.detection.analyzer import DetectedFace
from facefleet.worker.detection.imaging import (
    DecodedImage,
    FailureReason,
    ImageError,
    describe_error,
)
from facefleet.worker.detection.pipeline import StageClock
from facefleet.worker.privacy.photos import StoreResult

CROP_JPEG_QUALITY = 92


@dataclass
class ImageWork:
    """One image of a batch on its way through the pipeline."""

    request: DetectionRequest
    message_id: str
    clock: StageClock | None = None  # set by the pipeline, the one owner of the image's timings
    decoded: DecodedImage | None = None
    faces: list[DetectedFace] = field(default_factory=list)
    failure: ImageError | None = None
    outage: BaseException | None = None
    error: BaseException | None = None
    # The photo version read (S3 version id, else ETag) and what storing it did.
    version: str | None = None
    result: StoreResult | None = None


def image_doc(work: ImageWork, model_id: str) -> ImageDoc:
    request = work.request
    decoded = work.decoded
    return ImageDoc(
        user_id=request.user_id,
        image_id=request.image_id,
        bucket=request.bucket,
        key=request.key,
        status=ImageStatus.PROCESSING,
        model_id=model_id,
        width=decoded.width if decoded else None,
        height=decoded.height if decoded else None,
        timings_ms=work.clock.timings_ms() if work.clock else {},
        requested_at=request.requested_at,
        sequencer=request.sequencer,
        version=work.version,
    )


def face_docs(work: ImageWork, model_id: str) -> list[FaceDoc]:
    request, decoded = work.request, work.decoded
    assert decoded is not None
    back = 1.0 / decoded.scale  # to the original image's pixels
    docs = []
    for index, face in enumerate(work.faces):
        face_id = face_doc_id(request.user_id, request.image_id, model_id, index, work.version)
        docs.append(
            FaceDoc(
                user_id=request.user_id,
                image_id=request.image_id,
                model_id=model_id,
                index=index,
                bbox=tuple(float(v) * back for v in face.bbox),  # type: ignore[arg-type]
                landmarks=tuple((float(x) * back, float(y) * back) for x, y in face.landmarks),
                det_score=face.det_score,
                quality=face.quality,
                embedding=np.asarray(face.embedding, dtype=np.float32),
                embedding_norm=face.embedding_norm,
                crop_key=crop_key(request.user_id, request.image_id, face_id)
                if face.crop is not None
                else None,
                version=work.version,
            )
        )
    return docs


def upload_crops(
    s3: Any, bucket: str | None, executor: ThreadPoolExecutor, faces: list[FaceDoc], work: ImageWork
) -> None:
    """Put each face's JPEG crop in parallel; an outage surfaces here, before the image is DONE."""
    uploads = []
    for doc, face in zip(faces, work.faces, strict=True):
        if face.crop is None or doc.crop_key is None:
            continue
        ok, encoded = cv2.imencode(".jpg", face.crop, [cv2.IMWRITE_JPEG_QUALITY, CROP_JPEG_QUALITY])
        if not ok:
            raise RuntimeError(f"cannot encode the crop of face {doc.doc_id}")
        uploads.append(
            executor.submit(
                s3.put_object,
                Bucket=bucket,
                Key=doc.crop_key,
                Body=encoded.tobytes(),
                ContentType="image/jpeg",
            )
        )
    for upload in uploads:
        upload.result()


def processing_error(error: BaseException) -> ImageError:
    """An unexpected per-image error as the image's failure reason (the log has the trace)."""
    return ImageError(
        FailureReason.PROCESSING_ERROR,
        f"the image could not be processed ({type(error).__name__}: {describe_error(error)})",
    )
