"""A photo's versions in the gallery database: storing one, replacing an older one, deleting.

A face belongs to a photo version (S3's version id, else its ETag): an edit saved over the same
key is a new version whose faces are new faces (`documents.face_doc_id`). Every create and
delete carries its event order (`messages.EventOrder`); the image document records the order
and version stored, and every write to it is a compare-and-set (`GalleryRepository`):

store (`store_version`): claim the image document (refused when a later create or delete is
  stored; the same version already stored only moves its order on: the same bytes are a
  no-op), write the faces tagged with the claim and the create's order, upload their crops,
  commit (refused when another store or a delete took the photo since: then only this claim's
  faces go, and only if the stored version is not the same one), then remove the faces the
  new version supersedes (older orders, other versions): a replacement, which grouping hears
  of as a forget;
delete (`delete_photo`): tombstone first (from then on no older create can claim), then the
  faces whose create is not later than the delete, their crops and any crop left under the
  photo's prefix without a face, then (the caller, after telling grouping) the image document
  unless a later store holds it.

Each step is idempotent and ordered so that a redelivery after a crash at any write finishes
the job, and two workers holding two versions of one photo never undo each other's store.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from facefleet.common.documents import FaceDoc, ImageDoc, ImageStatus
from facefleet.common.messages import DeleteRequest, EventOrder, happened_after
from facefleet.common.privacy import PrivacyRepository
from facefleet.common.repository import Document, GalleryRepository, stored_order
from facefleet.common.s3keys import FACES_PREFIX
from facefleet.worker.privacy.s3objects import delete_keys, keys_under

log = logging.getLogger(__name__)

# Test hook: called with a step name before each write of a store or delete (fault injection
# in the model-based test; None in production).
FaultHook = Callable[[str], None]


@dataclass(frozen=True)
class StoreResult:
    stored: bool  # this version is what the image document now holds
    unchanged: bool = False  # the same version was stored already: nothing written
    replaced: int = 0  # faces of superseded versions removed (grouping must forget them)


@dataclass(frozen=True)
class PhotoDeletion:
    user_id: str
    image_id: str
    faces: int
    crops: int
    known: bool  # an image document or faces existed
    stale: bool  # the photo was uploaded again after this delete: nothing removed


def _point(hook: FaultHook | None, step: str) -> None:
    if hook is not None:
        hook(step)


def store_version(
    gallery: GalleryRepository,
    s3: Any,
    face_bucket: str,
    image: ImageDoc,
    faces: list[FaceDoc],
    upload_crops: Callable[[list[FaceDoc]], None],
    status: ImageStatus = ImageStatus.DONE,
    fault: FaultHook | None = None,
) -> StoreResult:
    """Store `faces` as the photo's version `image.version` (see the module docstring)."""
    order = EventOrder(image.requested_at, image.sequencer)
    _point(fault, "claim")
    claim = gallery.claim_image(image)
    if claim is None:
        return StoreResult(stored=False)
    if claim.unchanged:
        # Still finish a replacement a crash may have cut short (idempotent, usually nothing).
        _point(fault, "supersede")
        replaced = _remove(gallery, s3, face_bucket, _superseded(gallery, image, claim.token))
        return StoreResult(stored=True, unchanged=True, replaced=replaced)
    for face in faces:
        face.claim, face.requested_at, face.sequencer = claim.token, order.at_ms, order.sequencer
        face.version = image.version
    _point(fault, "faces")
    gallery.write_faces(faces)
    _point(fault, "crops")
    upload_crops(faces)
    _point(fault, "commit")
    if not gallery.commit_image(image, status, len(faces)):
        _abandon(gallery, s3, face_bucket, image)
        return StoreResult(stored=False)
    _point(fault, "supersede")
    replaced = _remove(gallery, s3, face_bucket, _superseded(gallery, image, claim.token))
    return StoreResult(stored=True, replaced=replaced)


def _superseded(gallery: GalleryRepository, image: ImageDoc, claim: str) -> list[Document]:
    """Faces of the photo another store wrote under an order not later than this one's: older
    versions, and stores cut short (a later store's faces are never touched)."""
    order = EventOrder(image.requested_at, image.sequencer)
    return [
        f
        for f in gallery.faces_of_image(image.user_id, image.image_id)
        if f.get("claim") != claim and not happened_after(stored_order(f), order)
    ]


def _abandon(gallery: GalleryRepository, s3: Any, face_bucket: str, image: ImageDoc) -> None:
    """A store that lost its claim removes what it wrote, unless the photo now holds the same
    version (a later create of the same bytes: the faces, same ids, are its faces too)."""
    current = gallery.get_image(image.user_id, image.image_id)
    if current is not None and current.version == image.version:
        return
    mine = [
        f
        for f in gallery.faces_of_image(image.user_id, image.image_id)
        if f.get("claim") == image.claim
    ]
    _remove(gallery, s3, face_bucket, mine)


def _remove(gallery: GalleryRepository, s3: Any, face_bucket: str, faces: list[Document]) -> int:
    """Crops first, then the face documents (a crash between leaves documents to find again)."""
    if not faces:
        return 0
    delete_keys(s3, face_bucket, [f["crop_key"] for f in faces if f.get("crop_key")])
    return gallery.delete_faces(f["_id"] for f in faces)


def remove_faces_before(
    gallery: GalleryRepository,
    s3: Any,
    face_bucket: str,
    user_id: str,
    image_id: str,
    order: EventOrder | None,
) -> tuple[int, int]:
    """Every face of the photo whose create is not later than `order` (None: every face), with
    its crop, and any crop under the photo's prefix that no remaining face names. Returns
    (faces, crop keys deleted)."""
    faces = gallery.faces_of_image(user_id, image_id)
    gone = [f for f in faces if order is None or not happened_after(stored_order(f), order)]
    kept = {f.get("crop_key") for f in faces if f not in gone}
    keys = {f["crop_key"] for f in gone if f.get("crop_key")}
    keys.update(
        k
        for k in keys_under(s3, face_bucket, f"{FACES_PREFIX}/{user_id}/{image_id}/")
        if k not in kept
    )
    crops = delete_keys(s3, face_bucket, keys)
    return gallery.delete_faces(f["_id"] for f in gone), crops


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
    faces, crops = remove_faces_before(gallery, s3, face_bucket, user_id, image_id, request.order)
    return PhotoDeletion(user_id, image_id, faces, crops, image is not None or faces > 0, False)


def remove_faces(
    gallery: GalleryRepository, s3: Any, face_bucket: str, user_id: str, image_ids: Iterable[str]
) -> tuple[int, int]:
    """Every face and crop of the photos, whatever their version (an erased user's)."""
    faces = crops = 0
    for image_id in sorted(set(image_ids)):
        removed, keys = remove_faces_before(gallery, s3, face_bucket, user_id, image_id, None)
        faces, crops = faces + removed, crops + keys
    return faces, crops


def drop_image_docs(
    gallery: GalleryRepository, user_id: str, image_ids: Iterable[str], order: EventOrder
) -> int:
    """The image documents of deleted photos, each unless a store later than `order` holds it."""
    return sum(gallery.drop_image(user_id, image_id, order) for image_id in sorted(set(image_ids)))
