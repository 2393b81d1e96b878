"""Take faces that are gone (their photo was deleted) out of a user's grouping state.

Called under the user's lease with the ids of deleted photos. The face documents are already
gone (the detection worker deleted them), so: delete the user's assignments whose face no longer
exists, rebuild the session from MongoDB (`load_session` keeps only stored faces and rebuilds the
FAISS index without them) and write back every person whose members changed: counts, centroid,
cover re-chosen from the remaining faces with its crop copied again; a person left empty is
deleted with its cover, a named one is kept, named and empty. The user document gets a new
revision, so no cached session of the user survives. Idempotent: a second run finds nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from facefleet.common.messages import ErasureRequest, ForgetRequest, now_ms
from facefleet.common.privacy import PrivacyRepository
from facefleet.common.repository import LeaseHeld, LeaseLost
from facefleet.worker.grouping.service import GroupingService
from facefleet.worker.grouping.state import ClusterParams, ClusterUpdate
from facefleet.worker.grouping.store import (
    GroupingStore,
    load_session,
    user_lease,
)
from facefleet.worker.grouping.writeback import save_changes
from facefleet.worker.privacy.erasure import erase_user, has_face_data
from facefleet.worker.runtime.consumer import ReceivedMessage
from facefleet.worker.runtime.outcome import OutageGuard, Outcome, classify

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class ForgetResult:
    assignments_removed: int
    people_rewritten: int
    people_removed: int


def forget_faces(
    store: GroupingStore,
    user_id: str,
    image_ids: Sequence[str],
    params: ClusterParams,
    *,
    s3: Any,
    bucket: str,
) -> ForgetResult:
    # Every orphan of the user, not only the named photos': a forget cut short is finished too.
    orphans = sorted(store.assignment_ids(user_id) - store.gallery.face_ids_of_user(user_id))
    store.delete_assignments(orphans, store.lease_of(user_id))
    before = {p.person_id: p for p in store.people.people_of_user(user_id)}
    session = load_session(store, user_id, params)
    if session.model_id is None:
        return ForgetResult(len(orphans), 0, 0)
    rewritten = len(session.dirty_people)
    save_changes(store, session, ClusterUpdate(), s3=s3, bucket=bucket)
    after = {p.person_id: p for p in store.people.people_of_user(user_id)}
    # A cover copy of a deleted face must not outlive it: stale people's covers, and covers
    # whose person has no face left (or whose new cover crop was missing).
    leftover = [
        old.cover_key
        for person_id, old in before.items()
        if old.cover_key and (person_id not in after or after[person_id].cover_key != old.cover_key)
    ]
    for key in leftover:
        s3.delete_object(Bucket=bucket, Key=key)
    removed = len(set(before) - set(after))
    log.info(
        "faces forgotten",
        extra={
            "user_id": user_id,
            "images": len(image_ids),
            "assignments_removed": len(orphans),
            "people_rewritten": rewritten,
            "people_removed": removed,
        },
    )
    return ForgetResult(len(orphans), rewritten, removed)


# -- the grouping worker's hooks -----------------------------------------------------------------


class PrivacyRequests:
    """The grouping worker's privacy hooks (`grouping.service.PrivacyHooks`): forget and erase
    requests, and the users who turned face recognition off."""

    def handle(
        self,
        service: GroupingService,
        items: Sequence[tuple[ReceivedMessage, ForgetRequest | ErasureRequest]],
        outage: bool,
    ) -> dict[str, Outcome]:
        return handle_privacy(service, items, outage)

    def split_opted_out(
        self, service: GroupingService, by_user: dict[str, list[tuple[ReceivedMessage, T]]]
    ) -> tuple[dict[str, list[tuple[ReceivedMessage, T]]], dict[str, Outcome]]:
        return split_opted_out(service, by_user)


def handle_privacy(
    service: GroupingService,
    items: Sequence[tuple[ReceivedMessage, ForgetRequest | ErasureRequest]],
    outage: bool,
) -> dict[str, Outcome]:
    """Forget and erase requests of a batch, one at a time under each user's lease."""
    outcomes: dict[str, Outcome] = {}
    for message, request in items:
        if outage:
            outcomes[message.message_id] = Outcome.RETRY
            continue
        outcome, outage = _run(service, request)
        outcomes[message.message_id] = outcome
    return outcomes


def _run(service: GroupingService, request: ForgetRequest | ErasureRequest) -> tuple[Outcome, bool]:
    """The request's outcome, and whether a dependency is down."""
    user_id = request.user_id
    service.sessions.pop(user_id, None)  # whatever happens next, the cached state is void
    try:
        if isinstance(request, ErasureRequest):
            erase_user(
                service.store,
                service.s3,
                service.bucket,
                user_id,
                owner=service.owner,
                requested_at=request.requested_at,
                reason=request.reason,
                lease_ttl=service.lease_ttl,
            )
        else:
            with user_lease(service.store, user_id, service.owner, service.lease_ttl):
                forget_faces(
                    service.store,
                    user_id,
                    request.image_ids,
                    service.params,
                    s3=service.s3,
                    bucket=service.bucket,
                )
    except (LeaseHeld, LeaseLost):
        log.info("user is being grouped elsewhere; deferred", extra={"user_id": user_id})
        return Outcome.DEFER, False
    except Exception as error:
        outcome = classify(error)
        if outcome is Outcome.RETRY:
            log.warning("outage while forgetting", extra={"user_id": user_id, "error": repr(error)})
        else:
            log.exception("forgetting failed", extra={"user_id": user_id})
        return outcome, outcome is Outcome.RETRY
    finally:
        service.sessions.pop(user_id, None)
    return Outcome.DONE, False


def split_opted_out(
    service: GroupingService, by_user: dict[str, list[tuple[ReceivedMessage, T]]]
) -> tuple[dict[str, list[tuple[ReceivedMessage, T]]], dict[str, Outcome]]:
    """Drop the grouping requests of users with face recognition off (their messages are DONE,
    doing nothing); a user who still has face data is erased first (switching off erases)."""
    if not by_user:
        return by_user, {}
    with OutageGuard() as guard:
        enabled = PrivacyRepository(service.store.gallery.faces.database).recognition_enabled(
            by_user
        )
    if guard.hit:
        return by_user, {}  # grouping itself will meet the outage and retry
    keep = {u: items for u, items in by_user.items() if enabled.get(u, True)}
    outcomes: dict[str, Outcome] = {}
    for user_id, items in by_user.items():
        if user_id in keep:
            continue
        outcome = Outcome.DONE
        with OutageGuard() as guard:
            if has_face_data(service.store, user_id):
                outcome, _ = _run(service, ErasureRequest(user_id, now_ms(), "opt_out"))
        if guard.hit:
            outcome = Outcome.RETRY
        log.info("face recognition is off: nothing grouped", extra={"user_id": user_id})
        for message, _ in items:
            outcomes[message.message_id] = outcome
    return keep, outcomes
