"""A deleted photo, in the detection worker: tombstone, crops, face documents, image document.

Order of writes, each idempotent, so a retry after a crash finishes the job: the tombstone first
(from then on no create of the photo can store faces: see `common.privacy`), then the crops,
then the face documents; the caller sends the grouping worker a `ForgetRequest` and only then
drops the image document (while it exists, a redelivered delete still knows to send it).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from facefleet.common.documents import image_doc_id
from facefleet.common.messages import DeleteRequest, EventOrder, happened_after
from facefleet.common.privacy import PrivacyRepository
from facefleet.common.repository import GalleryRepository
from facefleet.common.s3keys import FACES_PREFIX
from facefleet.worker.privacy.s3objects import delete_keys, keys_under

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PhotoDeletion:
    user_id: str
    image_id: str
    faces: int
    crops: int
    known: bool  # an image document or faces existed
    stale: bool  # the photo was uploaded again after this delete: nothing removed


def delete_photo(
    gallery: GalleryRepository,
    privacy: PrivacyRepository,
    s3: Any,
    face_bucket: str,
    request: DeleteRequest,
) -> PhotoDeletion:
    user_id, image_id = request.user_id, request.image_id
    image = gallery.get_image(user_id, image_id)
    if image is not None and happened_after(
        EventOrder(image.requested_at, image.sequencer), request.order
    ):
        return PhotoDeletion(user_id, image_id, 0, 0, True, True)
    privacy.mark_deleted(user_id, image_id, request.order)
    faces, crops = remove_faces(gallery, s3, face_bucket, user_id, [image_id])
    return PhotoDeletion(user_id, image_id, faces, crops, image is not None or faces > 0, False)


def remove_faces(
    gallery: GalleryRepository, s3: Any, face_bucket: str, user_id: str, image_ids: Iterable[str]
) -> tuple[int, int]:
    """Delete the photos' crops (every object under their crop prefix, and any crop key a face
    names elsewhere), then their face documents. Returns (faces, crop keys deleted)."""
    images = sorted(set(image_ids))
    query = {"user_id": user_id, "image_id": {"$in": images}}
    named = [d["crop_key"] for d in gallery.faces.find(query, {"crop_key": 1}) if d.get("crop_key")]
    keys = set(named)
    for image_id in images:
        keys.update(keys_under(s3, face_bucket, f"{FACES_PREFIX}/{user_id}/{image_id}/"))
    crops = delete_keys(s3, face_bucket, keys)
    faces = gallery.faces.delete_many(query).deleted_count
    return faces, crops


def drop_image_docs(gallery: GalleryRepository, user_id: str, image_ids: Iterable[str]) -> int:
    ids = [image_doc_id(user_id, i) for i in sorted(set(image_ids))]
    return gallery.images.delete_many({"_id": {"$in": ids}}).deleted_count
