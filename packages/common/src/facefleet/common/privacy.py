"""What FaceFleet remembers in order to forget: tombstones and the per-user opt-out.

Gallery database:
- `tombstones`: one document per deleted photo (`_id` = `<user>/<image>`, its `EventOrder`:
  `at_ms`, `sequencer`) and one per erased user (`_id` = `<user>`, `erased_at`). Ids and times
  only, no face data. A create that is not known to come after its photo's tombstone (a late
  or redelivered message, an ObjectCreated overtaken by its ObjectRemoved) is skipped, so a
  delete can never be undone by a message already on its way; a create older than a user's
  erasure is skipped the same way. A re-upload (a later sequencer or time) indexes normally.
- `users`: the gallery's own per-user settings; FaceFleet only reads `face_recognition`
  (`false` = off: no faces are stored, nothing is grouped; `true` = the explicit opt-in that
  FACE_RECOGNITION_CONSENT=opt_in requires) and writes it for the CLI.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pymongo.database import Database

from facefleet.common.documents import encode_time, image_doc_id, now
from facefleet.common.messages import DetectionRequest, EventOrder, happened_after
from facefleet.common.repository import Document, upsert

RECOGNITION_FIELD = "face_recognition"


class PrivacyRepository:
    """Tombstones and opt-out settings of the gallery database."""

    def __init__(self, gallery: Database[Document]) -> None:
        self.tombstones = gallery["tombstones"]
        self.users = gallery["users"]

    # -- opt-out ------------------------------------------------------------------------------

    def recognition_enabled(self, user_ids: Iterable[str]) -> dict[str, bool]:
        """user -> face recognition on (the default when the gallery wrote nothing)."""
        return {u: value is not False for u, value in self.recognition_settings(user_ids).items()}

    def recognition_settings(self, user_ids: Iterable[str]) -> dict[str, Any]:
        """user -> the stored `face_recognition` value (None where the gallery wrote none); the
        consent mode decides what None means (`worker.privacy.consent`)."""
        wanted = sorted(set(user_ids))
        stored: dict[str, Any] = dict.fromkeys(wanted)
        for doc in self.users.find({"_id": {"$in": wanted}}, {RECOGNITION_FIELD: 1}):
            stored[doc["_id"]] = doc.get(RECOGNITION_FIELD)
        return stored

    def set_recognition(self, user_id: str, enabled: bool) -> None:
        self.users.update_one({"_id": user_id}, {"$set": {RECOGNITION_FIELD: enabled}}, upsert=True)

    # -- tombstones ---------------------------------------------------------------------------

    def mark_deleted(self, user_id: str, image_id: str, order: EventOrder) -> EventOrder:
        """Record the photo's deletion; keeps the later of two tombstones. Returns the kept one."""
        doc_id = image_doc_id(user_id, image_id)
        current = self.tombstones.find_one({"_id": doc_id})
        if current is not None:
            stored = _order(current)
            if not happened_after(order, stored) and stored.known:
                return stored
        self.tombstones.bulk_write(
            [
                upsert(
                    {
                        "_id": doc_id,
                        "kind": "image",
                        "user_id": user_id,
                        "image_id": image_id,
                        "at_ms": order.at_ms,
                        "sequencer": order.sequencer,
                        "written_at": encode_time(now()),
                    }
                )
            ]
        )
        return order

    def mark_erased(self, user_id: str, at_ms: int) -> int:
        """Record the user's erasure (the later time wins); returns the stored time."""
        current = self.tombstones.find_one({"_id": user_id}) or {}
        erased_at = max(at_ms, int(current.get("erased_at") or 0))
        self.tombstones.bulk_write(
            [
                upsert(
                    {
                        "_id": user_id,
                        "kind": "user",
                        "user_id": user_id,
                        "erased_at": erased_at,
                        "written_at": encode_time(now()),
                    }
                )
            ]
        )
        return erased_at

    def blocked(self, requests: Iterable[DetectionRequest]) -> list[str | None]:
        """Per request (in order): why its create must be skipped, for creates that a deletion
        or an erasure already overtook, else None. Each create is judged by its own event
        order, never by its key: an older create's block never skips a re-upload of the same
        photo in the same batch. One query for the whole batch."""
        work = list(requests)
        ids = {r.user_id for r in work} | {image_doc_id(r.user_id, r.image_id) for r in work}
        found = {d["_id"]: d for d in self.tombstones.find({"_id": {"$in": sorted(ids)}})}
        reasons: list[str | None] = []
        for request in work:
            image = found.get(image_doc_id(request.user_id, request.image_id))
            user = found.get(request.user_id)
            if image is not None and not happened_after(request.order, _order(image)):
                reasons.append("photo deleted")
            elif user is not None and not (
                request.requested_at is not None
                and request.requested_at > int(user.get("erased_at") or 0)
            ):
                reasons.append("user erased")
            else:
                reasons.append(None)
        return reasons

    def deletion_of(self, user_id: str, image_id: str) -> EventOrder | None:
        """The order of the photo's latest recorded deletion, if any."""
        doc = self.tombstones.find_one({"_id": image_doc_id(user_id, image_id)})
        return None if doc is None else _order(doc)


def _order(doc: dict[str, Any]) -> EventOrder:
    return EventOrder(doc.get("at_ms"), doc.get("sequencer"))
