"""Retention: the faces of users inactive past the schedule are erased; old tombstones go.

The schedule and its reasons are in the README ("Retention schedule"). In short:
- faces, embeddings, crops, people (centroids, covers, names), assignments and corrections of a
  user whose last interaction is older than RETENTION_INACTIVE_DAYS (default 730, at most 1,095:
  Illinois BIPA 740 ILCS 14/15(a)) are erased by `erasure.erase_user` with reason `retention`,
  which writes the receipt;
- tombstones older than TOMBSTONE_RETENTION_DAYS (default 90, more than the 56 days a message
  can live) are deleted.

A user's last interaction is the latest of: a photo the user uploaded (the detection worker
records its event time in `activity`), and a correction the user made (name, merge, move,
reject: HUEMN `corrections`). Face data older than the activity record (written before it
existed) counts from its newest face or person (read once, on the first run).

The purge erases with the user's last interaction as the erasure time: a create still queued
that is older is blocked by the user's tombstone, a newer upload (the user is back) indexes
normally. A user erased (or back) is dropped from the activity candidates, so a second run finds
nothing and writes no receipt. A user whose lease a worker holds is left for the next run.

It runs from `facefleet people purge-inactive` / `purge-tombstones`, and at most every
RETENTION_RUN_HOURS when a grouping worker starts (`run_if_due`): the grouping worker is the
process that already holds every store and the user leases, and it starts whenever photos are
indexed, so no new scheduler, role or message type is needed.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from pymongo import ASCENDING, DESCENDING
from pymongo.database import Database
from pymongo.errors import DuplicateKeyError

from facefleet.common.config import Settings
from facefleet.common.documents import decode_time, encode_time
from facefleet.common.messages import now_ms
from facefleet.common.privacy import PrivacyRepository
from facefleet.common.repository import Document, LeaseHeld
from facefleet.worker.grouping.store import GroupingStore
from facefleet.worker.privacy.activity import ActivityRepository
from facefleet.worker.privacy.erasure import erase_user, has_face_data
from facefleet.worker.runtime.outcome import Outcome, classify

log = logging.getLogger(__name__)

DAY_MS = 86_400_000
# Corrections the user makes (the others are an operator's: consolidate, recluster, migrate).
USER_CORRECTIONS = ("name", "merge", "move", "reject")
RUNS = "retention_runs"  # HUEMN: when the next automatic run is due; the one-time backfill
# The automatic run delays a grouping worker's first batch: it stops taking users after this and
# leaves the run due, so the next worker to start goes on (an erasure of a 10,000-face user took
# 10-15 s here, README "Privacy"; most users are far smaller).
AUTO_RUN_SECONDS = 120.0


@dataclass(frozen=True)
class InactiveUser:
    user_id: str
    last_at: int  # epoch ms


@dataclass
class PurgeReport:
    cutoff_ms: int
    dry_run: bool
    purged: list[str] = field(default_factory=list)  # erased (dry run: would be)
    receipts: list[str] = field(default_factory=list)
    held: list[str] = field(default_factory=list)  # a worker holds the lease: next run
    active: int = 0  # inactive by uploads, active by a recent correction or upload
    remaining: int = 0  # left for the next run: the time budget ran out


def purge_inactive(
    store: GroupingStore,
    s3: Any,
    bucket: str,
    *,
    days: int,
    owner: str,
    dry_run: bool = False,
    now: int | None = None,
    lease_ttl: timedelta = timedelta(minutes=30),
    lease_wait_seconds: float = 0.0,
    max_seconds: float | None = None,
) -> PurgeReport:
    """Erase the face data of every user inactive for `days`; a dry run writes nothing. With
    `max_seconds`, no user is started after that long (`report.remaining` says how many)."""
    deadline = None if max_seconds is None else time.monotonic() + max_seconds
    activity = ActivityRepository(store.gallery.faces.database)
    cutoff = (now_ms() if now is None else now) - days * DAY_MS
    if not dry_run:
        activity.ensure_indexes()
    report = PurgeReport(cutoff, dry_run)
    inactive, report.active = find_inactive(store, activity, cutoff, record=not dry_run)
    for position, user in enumerate(inactive):
        if deadline is not None and time.monotonic() >= deadline:
            report.remaining = len(inactive) - position
            break
        if not has_face_data(store, user.user_id):
            if not dry_run:  # erased before, nothing to keep a record for
                activity.forget(user.user_id, user.last_at)
            continue
        if dry_run:
            report.purged.append(user.user_id)
            continue
        latest = activity.last(user.user_id)
        if latest is not None and latest >= cutoff:  # an upload since the query
            report.active += 1
            continue
        try:
            receipt = erase_user(
                store,
                s3,
                bucket,
                user.user_id,
                owner=owner,
                requested_at=user.last_at,
                reason="retention",
                lease_ttl=lease_ttl,
                lease_wait_seconds=lease_wait_seconds,
            )
        except LeaseHeld:
            report.held.append(user.user_id)
            continue
        activity.forget(user.user_id, user.last_at)
        report.purged.append(user.user_id)
        report.receipts.append(receipt.receipt_id)
    log.info(
        "retention purge" + (" (dry run)" if dry_run else ""),
        extra={
            "cutoff_ms": cutoff,
            "users": len(report.purged),
            "held": len(report.held),
            "remaining": report.remaining,
            "days": days,
        },
    )
    return report


def find_inactive(
    store: GroupingStore, activity: ActivityRepository, cutoff_ms: int, *, record: bool
) -> tuple[list[InactiveUser], int]:
    """Users last seen before the cutoff (oldest first), and how many of the activity record's
    candidates a recent correction keeps. `record` writes what it learns into the record."""
    candidates = dict(activity.inactive_since(cutoff_ms))
    runs = store.users.database[RUNS]
    if runs.find_one({"_id": "backfill"}) is None:
        # Once: face data from before the record existed. Every later face comes through the
        # detection worker, which records the upload first.
        holders = _holders(store.gallery.faces) | _holders(store.people.people)
        for user_id in sorted(holders - activity.known(holders)):
            at = _newest_trace(store, user_id)
            if record:
                activity.touch({user_id: at})
            if at < cutoff_ms:
                candidates[user_id] = at
        if record:
            runs.update_one({"_id": "backfill"}, {"$set": {"at": now_ms()}}, upsert=True)
    inactive: list[InactiveUser] = []
    active = 0
    for user_id, at in sorted(candidates.items(), key=lambda item: (item[1], item[0])):
        corrected = _last_correction(store, user_id)
        if corrected is not None and corrected >= cutoff_ms:
            if record:
                activity.touch({user_id: corrected})
            active += 1
            continue
        inactive.append(InactiveUser(user_id, max(at, corrected or 0)))
    return inactive, active


def purge_tombstones(
    gallery: Database[Document], *, days: int, now: int | None = None, dry_run: bool = False
) -> int:
    """Delete tombstones written more than `days` ago; returns how many (dry run: would)."""
    tombstones = PrivacyRepository(gallery).tombstones
    cutoff = (now_ms() if now is None else now) - days * DAY_MS
    query = {"written_at": {"$lt": cutoff}}
    if dry_run:
        return tombstones.count_documents(query)
    tombstones.create_index([("written_at", ASCENDING)])
    purged = tombstones.delete_many(query).deleted_count
    log.info("tombstones purged", extra={"count": purged, "days": days, "cutoff_ms": cutoff})
    return purged


def run_if_due(
    store: GroupingStore, s3: Any, bucket: str, settings: Settings, *, owner: str
) -> PurgeReport | None:
    """The automatic run at a grouping worker's start: at most one per RETENTION_RUN_HOURS
    across all workers. Never stops the worker: an error is logged and the next run retries."""
    if settings.retention_run_hours <= 0:
        return None
    try:
        if not _claim(store.users.database[RUNS], owner, settings.retention_run_hours):
            return None
        report = purge_inactive(
            store,
            s3,
            bucket,
            days=settings.retention_inactive_days,
            owner=owner,
            max_seconds=AUTO_RUN_SECONDS,
        )
        purge_tombstones(store.gallery.faces.database, days=settings.tombstone_retention_days)
        if report.remaining or report.held:  # due again: the next worker to start goes on
            store.users.database[RUNS].update_one({"_id": "purge"}, {"$set": {"next_at": 0}})
        return report
    except Exception as error:
        log.warning(
            "retention purge failed: retried at the next run",
            exc_info=classify(error) is not Outcome.RETRY,
            extra={"error": repr(error)},
        )
        return None


def _claim(runs: Any, owner: str, hours: float) -> bool:
    """Take the next run: only one worker wins, the others see it not due."""
    current = now_ms()
    fields = {"owner": owner, "started_at": current, "next_at": current + int(hours * 3600_000)}
    if runs.find_one_and_update({"_id": "purge", "next_at": {"$lte": current}}, {"$set": fields}):
        return True
    try:
        runs.insert_one({"_id": "purge", **fields})
    except DuplicateKeyError:
        return False
    return True


def _holders(collection: Any) -> set[str]:
    """Users with documents in the collection (a cursor: no 16 MiB limit as with `distinct`)."""
    return {d["_id"] for d in collection.aggregate([{"$group": {"_id": "$user_id"}}])}


def _newest_trace(store: GroupingStore, user_id: str) -> int:
    """The newest face or person of a user with no activity record (epoch ms)."""
    times = [0]
    face = store.gallery.faces.find_one(
        {"user_id": user_id}, {"created_at": 1}, sort=[("created_at", DESCENDING)]
    )
    if face is not None and face.get("created_at") is not None:
        times.append(encode_time(decode_time(face["created_at"])))
    person = store.people.people.find_one(
        {"user_id": user_id}, {"updated_at": 1}, sort=[("updated_at", DESCENDING)]
    )
    if person is not None and person.get("updated_at") is not None:
        times.append(encode_time(decode_time(person["updated_at"])))
    return max(times)


def _last_correction(store: GroupingStore, user_id: str) -> int | None:
    doc = store.corrections.find_one(
        {"user_id": user_id, "op": {"$in": list(USER_CORRECTIONS)}},
        {"at": 1},
        sort=[("at", DESCENDING)],
    )
    return None if doc is None else encode_time(decode_time(doc["at"]))
