"""Fetching one photo from S3 and decoding it, and what a fetch error means for the photo."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError

from facefleet.common.messages import DetectionRequest
from facefleet.worker.detection.imaging import DecodedImage, FailureReason, ImageError, decode_image
from facefleet.worker.detection.pipeline import StageClock

_MISSING_CODES = frozenset({"NoSuchKey", "NoSuchBucket", "404", "NotFound"})
# The job role may list the gallery bucket, so S3 says NoSuchKey for a missing photo; a denial is
# then a permission problem of the deployment, not of the photo: the message is kept (RETRY,
# then the DLQ) instead of the photo being marked failed.
_DENIED_CODES = frozenset({"AccessDenied", "403"})


def denied(error: BaseException) -> bool:
    """S3 refused the read: the deployment's fault, never the photo's."""
    return isinstance(error, ClientError) and (
        str(error.response.get("Error", {}).get("Code", "")) in _DENIED_CODES
    )


@dataclass(frozen=True)
class FetchLimits:
    max_image_bytes: int
    max_image_pixels: int
    detection_size: int


def get_photo(s3: Any, request: DetectionRequest) -> Mapping[str, Any]:
    """The S3 GetObject response for the photo. A missing photo raises `ImageError` (the photo
    fails); other errors propagate (an outage, or a denial: see `denied`)."""
    try:
        response: Mapping[str, Any] = s3.get_object(Bucket=request.bucket, Key=request.key)
    except ClientError as error:
        code = str(error.response.get("Error", {}).get("Code", ""))
        if code in _MISSING_CODES:
            raise ImageError(
                FailureReason.MISSING, f"s3://{request.bucket}/{request.key}: {code}"
            ) from None
        raise
    return response


def read_and_decode(
    response: Mapping[str, Any], limits: FetchLimits, clock: StageClock, started: float
) -> DecodedImage:
    """Read the body (refused past MAX_IMAGE_BYTES) and decode it; record both stages."""
    body = response["Body"]
    try:
        length = int(response.get("ContentLength", 0))
        if length > limits.max_image_bytes:
            raise ImageError(
                FailureReason.TOO_LARGE,
                f"{length} bytes exceeds MAX_IMAGE_BYTES={limits.max_image_bytes}",
            )
        data = body.read()
    finally:
        body.close()
    clock.record("download", started)
    started = time.perf_counter()
    decoded = decode_image(
        data,
        max_pixels=limits.max_image_pixels,
        max_bytes=limits.max_image_bytes,
        max_side=2 * limits.detection_size,
    )
    clock.record("decode", started)
    return decoded


def version_of(response: Mapping[str, Any]) -> str | None:
    """The photo version read: S3's version id on a versioned bucket, else the ETag (a digest
    of the bytes: the same bytes saved again are the same version)."""
    version_id = response.get("VersionId")
    if version_id and version_id != "null":
        return f"v:{version_id}"
    etag = str(response.get("ETag") or "").strip('"')
    return f"e:{etag}" if etag else None
