"""Each user's last interaction, for the retention purge (`retention`).

Gallery database `face_activity`: `{_id: user, last_at: epoch ms}`, indexed on `last_at`, so the
users inactive since a cutoff are one range query. The detection worker writes it for every
photo it is asked to index (the S3 event or request time, so a late or redelivered message never
moves it back: `$max`); the user's own corrections (name, merge, move, reject) are read from
HUEMN `corrections`, already indexed by (user, time). Ids and times only: no face data.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from pymongo import ASCENDING, UpdateOne
from pymongo.database import Database

from facefleet.common.messages import DetectionRequest, now_ms
from facefleet.common.repository import Document

ACTIVITY = "face_activity"


def upload_times(requests: Iterable[DetectionRequest]) -> dict[str, int]:
    """user -> the latest upload among the requests (now for a request with no time)."""
    latest: dict[str, int] = {}
    for request in requests:
        at = request.requested_at if request.requested_at is not None else now_ms()
        latest[request.user_id] = max(at, latest.get(request.user_id, 0))
    return latest


class ActivityRepository:
    def __init__(self, gallery: Database[Document]) -> None:
        self.activity = gallery[ACTIVITY]

    def ensure_indexes(self) -> None:
        self.activity.create_index([("last_at", ASCENDING)])

    def touch(self, times: Mapping[str, int]) -> None:
        """Move each user's last interaction forward to `times[user]` (never back)."""
        if times:
            self.activity.bulk_write(
                [
                    UpdateOne({"_id": user}, {"$max": {"last_at": int(at)}}, upsert=True)
                    for user, at in sorted(times.items())
                ],
                ordered=False,
            )

    def last(self, user_id: str) -> int | None:
        doc = self.activity.find_one({"_id": user_id})
        return None if doc is None else int(doc["last_at"])

    def inactive_since(self, cutoff_ms: int) -> list[tuple[str, int]]:
        """(user, last interaction) of users last seen before the cutoff, oldest first."""
        found = self.activity.find({"last_at": {"$lt": cutoff_ms}}).sort("last_at", ASCENDING)
        return [(doc["_id"], int(doc["last_at"])) for doc in found]

    def known(self, user_ids: Iterable[str]) -> set[str]:
        wanted = sorted(set(user_ids))
        return {d["_id"] for d in self.activity.find({"_id": {"$in": wanted}}, {"_id": 1})}

    def forget(self, user_id: str, last_at: int) -> bool:
        """Drop the record after a purge, unless the user came back meanwhile."""
        query: dict[str, Any] = {"_id": user_id, "last_at": {"$lte": last_at}}
        return self.activity.delete_one(query).deleted_count == 1
