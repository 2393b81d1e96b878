"""Erase every trace of a user's faces, and write a receipt that proves it without holding any.

Under the user's grouping lease (so no grouping worker interleaves), in this order:
1. the user's tombstone (`common.privacy`): from now on a create older than the erasure, still
   waiting in the indexing queue, stores nothing; a waiting grouping request finds no faces;
2. S3 (FACE_GROUP_BUCKET_NAME): every object under `faces/<user>/` and `people/<user>/`, and any
   crop or cover key a face or person document names elsewhere;
3. gallery: the user's face documents; the image documents keep only that the photo exists
   (`face_count` 0, `faces_erased_at`);
4. HUEMN: assignments, people (centroids, covers, names), corrections, suggested questions, the
   grouping user document (its revision: every cached session and FAISS index of the user is
   then invalid); others' leases end (the lease document stays, ids and a fence only);
5. the receipt in HUEMN `erasure_receipts`: user id, reason, when asked and done, counts per store.
Every step is a delete by user id, so a second run (or a retry after a crash) completes what is
left and its receipt counts zero.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import asdict, dataclass
from datetime import timedelta
from typing import Any

from facefleet.common.messages import ErasureReason, now_ms
from facefleet.common.privacy import PrivacyRepository
from facefleet.common.s3keys import FACES_PREFIX, PEOPLE_PREFIX
from facefleet.worker.grouping.answers import QuestionBook
from facefleet.worker.grouping.store import LEASE_TTL, GroupingStore, user_lease
from facefleet.worker.privacy.s3objects import delete_keys, keys_under

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ErasureReceipt:
    receipt_id: str
    user_id: str
    reason: str
    requested_at: int  # epoch ms
    completed_at: int
    seconds: float
    counts: dict[str, int]

    def to_mongo(self) -> dict[str, Any]:
        data = asdict(self)
        data["_id"] = data.pop("receipt_id")
        return data


def erase_user(
    store: GroupingStore,
    s3: Any,
    bucket: str,
    user_id: str,
    *,
    owner: str,
    requested_at: int | None = None,
    reason: ErasureReason = "request",
    lease_ttl: timedelta = LEASE_TTL,
    lease_wait_seconds: float = 0.0,
) -> ErasureReceipt:
    """Erase the user's faces everywhere; raises `LeaseHeld` if a grouping worker keeps the
    user's lease past `lease_wait_seconds` (a message is then retried)."""
    started = time.monotonic()
    requested = now_ms() if requested_at is None else requested_at
    with user_lease(store, user_id, owner, lease_ttl, wait_seconds=lease_wait_seconds):
        gallery, people = store.gallery, store.people
        PrivacyRepository(gallery.faces.database).mark_erased(user_id, requested)

        keys = gallery.crop_keys_of_user(user_id) | people.cover_keys_of_user(user_id)
        crops = set(keys_under(s3, bucket, f"{FACES_PREFIX}/{user_id}/"))
        covers = set(keys_under(s3, bucket, f"{PEOPLE_PREFIX}/{user_id}/"))
        elsewhere = keys - crops - covers
        counts = {
            "s3_crops": delete_keys(s3, bucket, crops),
            "s3_covers": delete_keys(s3, bucket, covers),
            "s3_other_keys": delete_keys(s3, bucket, elsewhere),
        }
        counts["gallery_faces"], counts["gallery_images_cleared"] = gallery.erase_faces_of_user(
            user_id
        )
        counts.update(store.erase_user_state(user_id))
        counts["huemn_people"] = people.erase_people_of_user(user_id)
        counts["huemn_questions"] = QuestionBook.of(store.users.database).erase(user_id)
        # Leases of others (expired: ours was taken over them) end; the lease document stays,
        # released with ours, so its fence keeps refusing a stalled holder's late writes.
        counts["huemn_leases"] = people.end_other_leases(user_id, owner)
    receipt = ErasureReceipt(
        receipt_id=uuid.uuid4().hex,
        user_id=user_id,
        reason=reason,
        requested_at=requested,
        completed_at=now_ms(),
        seconds=round(time.monotonic() - started, 3),
        counts=counts,
    )
    store.save_receipt(receipt.to_mongo())
    log.info(
        "user erased",
        extra={"user_id": user_id, "reason": reason, "counts": counts, "seconds": receipt.seconds},
    )
    return receipt


def receipts_of(store: GroupingStore, user_id: str) -> list[dict[str, Any]]:
    return store.receipts_of(user_id)


def has_face_data(store: GroupingStore, user_id: str) -> bool:
    """Anything left to erase (cheap: one indexed lookup per collection)."""
    return (
        store.gallery.has_faces(user_id)
        or store.has_assignments(user_id)
        or store.people.has_people(user_id)
    )
