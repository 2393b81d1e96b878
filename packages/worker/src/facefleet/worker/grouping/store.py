"""Where a user's grouping state lives, and how it is loaded and written back.

Homes (all in the HUEMN database except the faces themselves):

- gallery `faces`: the detector's FaceDocs (embeddings, quality, crop keys); read-only here.
- HUEMN `assignments`: one document per grouped face, `_id` = face id: `user_id`, `model_id`,
  `seq` (arrival order, so a rebuilt state replays ties the same way), `image_id`, `person_id`
  (null: waiting unassigned), and the user's constraints on that face: `pinned` (placed by the
  user) and `not_in` (people the user said it is not). This collection is the source of truth
  for membership; people documents are derived from it.
- HUEMN `people`: `PersonDoc`s (members, cover face and its crop key, count, centroid, model id,
  name), rewritten only for people that changed.
- HUEMN `grouping_users`: one document per user: current `model_id`, `next_person_id` (person ids
  are never reused), `merged_into` (retired person -> the person that absorbed it), `apart`
  (pairs of people the user said are different), and a
  `revision` token that every writer replaces after its writes: a cached state is used only
  while the stored revision is the one it wrote.
- HUEMN `corrections`: an append-only log of user corrections (audit; the effective
  constraints are on the assignments and in `merged_into`).

Writes (`writeback.save_changes`) go assignments, then people, then the user document, all
idempotent `$set` upserts. A
crash in between leaves assignments ahead of people; the next load notices people documents
that disagree with the assignments and rewrites them.

Every write happens under the user's lease (`user_lease`): short (LEASE_TTL), renewed by a
heartbeat while the holder works, and fenced: each write carries the acquisition's fence and
lands only where no later holder wrote (`repository.fenced`), so a holder that stalled past its
lease (and was taken over) fails with `LeaseLost` instead of writing over its successor.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import numpy as np
from pymongo import ASCENDING
from pymongo.database import Database

from facefleet.common.documents import FaceDoc, PersonDoc, now
from facefleet.common.repository import (
    Document,
    GalleryRepository,
    Lease,
    LeaseHeld,
    PeopleRepository,
    fenced_query,
)
from facefleet.worker.grouping.batch_partition import ConsolidateParams
from facefleet.worker.grouping.consolidate import consolidate
from facefleet.worker.grouping.index import FaceIndex
from facefleet.worker.grouping.state import (
    IGNORED,
    STRONG,
    UNASSIGNED,
    ClusterParams,
    ClusterUpdate,
    FaceInput,
    Person,
    UserClusterState,
)

log = logging.getLogger(__name__)

# An abandoned lease (a killed worker or CLI) frees its user after this long; a live holder
# renews it every third of it (`_Renewal`), so no batch is too long for it.
LEASE_TTL = timedelta(seconds=60)
RECEIPTS = "erasure_receipts"  # HUEMN: proofs of erasure (ids, times, counts; no face data)


def face_input(face: FaceDoc) -> FaceInput:
    return FaceInput(
        face_id=face.doc_id,
        photo_id=face.image_id,
        embedding=face.embedding,
        quality=face.quality,
        size_px=face.width_px,
        det_score=face.det_score,
        norm=face.embedding_norm,
        crop_key=face.crop_key,
    )


@dataclass
class UserSession:
    """One user's state for one model, with what the pure state does not hold: the FAISS index,
    stored covers and the revision this process last wrote (embeddings, crop keys and arrival
    numbers are columns of the state's `FaceTable`)."""

    user_id: str
    model_id: str | None
    state: UserClusterState = field(default_factory=UserClusterState)
    index: FaceIndex | None = None
    covers: dict[int, tuple[str | None, str | None]] = field(default_factory=dict)
    revision: str | None = None
    # Library size at the last consolidation pass (growth past a share of it triggers the next).
    consolidated_faces: int = 0
    # People whose stored document disagrees with the assignments (a write cut short).
    dirty_people: set[int] = field(default_factory=set)
    stale_people: set[int] = field(default_factory=set)

    def ensure_index(self, dim: int) -> FaceIndex:
        if self.index is None:
            self.index = FaceIndex(dim)
        return self.index


class _Renewal(threading.Thread):
    """The lease's heartbeat: renews it every third of its TTL; a renewal that finds the lease
    taken over marks it lost, and the holder's next write raises `LeaseLost`."""

    def __init__(self, people: PeopleRepository, lease: Lease) -> None:
        super().__init__(name=f"lease-{lease.user_id}", daemon=True)
        self.people = people
        self.lease = lease
        self.stopped = threading.Event()

    def run(self) -> None:
        interval = max(0.05, self.lease.ttl.total_seconds() / 3)
        while not self.stopped.wait(interval) and not self.lease.lost:
            try:
                self.people.renew_lease(self.lease)
            except Exception as error:  # an outage: the holder's own writes will meet it
                log.warning(
                    "lease renewal failed",
                    extra={"user_id": self.lease.user_id, "error": repr(error)},
                )


@contextmanager
def user_lease(
    store: GroupingStore,
    user_id: str,
    owner: str,
    ttl: timedelta = LEASE_TTL,
    *,
    wait_seconds: float = 0.0,
    poll_seconds: float = 0.5,
) -> Iterator[Lease]:
    """Hold the user's grouping lease for the block: every writer of a user's state (the
    grouping worker, corrections, consolidation, erasure) goes through here, so none
    interleave; the store's writes for the user are fenced with it while the block runs.

    Waits up to `wait_seconds` for another holder (then raises `LeaseHeld`). A failed release is
    logged, not raised: the lease expires on its own and the work is already durable.
    """
    deadline = time.monotonic() + wait_seconds
    while True:
        try:
            lease = store.people.acquire_lease(user_id, owner, ttl)
            break
        except LeaseHeld:
            if time.monotonic() >= deadline:
                raise
            time.sleep(poll_seconds)
    renewal = _Renewal(store.people, lease)
    renewal.start()
    store.held[user_id] = lease
    try:
        yield lease
    finally:
        renewal.stopped.set()
        renewal.join()  # a renewal in flight must not extend the lease after its release
        if store.held.get(user_id) is lease:
            del store.held[user_id]
        try:
            if not lease.lost:
                store.people.release_lease(user_id, owner)
        except Exception as error:
            log.warning("lease release failed", extra={"user_id": user_id, "error": repr(error)})


class GroupingStore:
    """The gallery faces and HUEMN grouping collections of one deployment."""

    def __init__(self, gallery: Database[Document], huemn: Database[Document]) -> None:
        self.gallery = GalleryRepository(gallery)
        self.people = PeopleRepository(huemn)
        self.assignments = huemn["assignments"]
        self.users = huemn["grouping_users"]
        self.corrections = huemn["corrections"]
        # The lease this process holds per user while it writes (set by `user_lease`).
        self.held: dict[str, Lease] = {}

    def lease_of(self, user_id: str) -> Lease | None:
        return self.held.get(user_id)

    def ensure_indexes(self) -> None:
        self.people.ensure_indexes()
        self.assignments.create_index(
            [("user_id", ASCENDING), ("model_id", ASCENDING), ("seq", ASCENDING)]
        )
        self.corrections.create_index([("user_id", ASCENDING), ("at", ASCENDING)])

    def user_doc(self, user_id: str) -> Document | None:
        return self.users.find_one({"_id": user_id})

    def assignment_ids(self, user_id: str) -> set[str]:
        return {r["_id"] for r in self.assignments.find({"user_id": user_id}, {"_id": 1})}

    def has_assignments(self, user_id: str) -> bool:
        return self.assignments.find_one({"user_id": user_id}, {"_id": 1}) is not None

    def delete_assignments(self, face_ids: Iterable[str], lease: Lease | None) -> int:
        ids = sorted(set(face_ids))
        if not ids:
            return 0
        if lease is not None:
            lease.check()
        query = fenced_query({"_id": {"$in": ids}}, lease)
        return self.assignments.delete_many(query).deleted_count

    def erase_user_state(self, user_id: str) -> dict[str, int]:
        """Delete the user's assignments, corrections and user document; counts per store."""
        by_user = {"user_id": user_id}
        return {
            "huemn_assignments": self.assignments.delete_many(by_user).deleted_count,
            "huemn_corrections": self.corrections.delete_many(by_user).deleted_count,
            "huemn_grouping_users": self.users.delete_many({"_id": user_id}).deleted_count,
        }

    def save_receipt(self, receipt: Document) -> None:
        self.users.database[RECEIPTS].insert_one(receipt)

    def receipts_of(self, user_id: str) -> list[Document]:
        found = self.users.database[RECEIPTS].find({"user_id": user_id})
        return list(found.sort("completed_at"))

    def log_correction(self, user_id: str, operation: str, **arguments: Any) -> None:
        self.corrections.insert_one(
            {"user_id": user_id, "op": operation, "args": arguments, "at": now()}
        )


# -- loading ------------------------------------------------------------------------------------


def load_session(
    store: GroupingStore, user_id: str, params: ClusterParams, model_id: str | None = None
) -> UserSession:
    """Rebuild a user's state and FAISS index from MongoDB (the model stored for the user wins
    over `model_id`, which only names the model of a user seen for the first time)."""
    doc = store.user_doc(user_id) or {}
    model = doc.get("model_id") or model_id
    session = UserSession(
        user_id,
        model,
        revision=doc.get("revision"),
        consolidated_faces=int(doc.get("consolidated_faces", 0)),
    )
    if model is None:
        return session
    gallery = {f.doc_id: f for f in store.gallery.faces_of_user(user_id, model)}
    rows = store.assignments.find({"user_id": user_id, "model_id": model}).sort("seq", ASCENDING)
    people_docs = {
        p.person_id: p for p in store.people.people_of_user(user_id) if p.model_id == model
    }
    state = session.state
    for row in rows:
        face = gallery.get(row["_id"])
        if face is not None:  # a face the detector has since dropped leaves the state
            _restore_face(session, face, row, params)
    state.merged_into = {int(a): int(b) for a, b in doc.get("merged_into", [])}
    state.apart = {(int(a), int(b)) for a, b in doc.get("apart", [])}
    _restore_people(session, people_docs)
    state.next_person_id = max(
        [
            int(doc.get("next_person_id", 1)),
            *(p + 1 for p in state.people),
            *(p + 1 for p in people_docs),
            *(p + 1 for p in state.merged_into),
        ]
    )
    if len(state.faces):
        matrix = state.faces.vectors
        session.index = FaceIndex.build(np.arange(len(matrix), dtype=np.int64), matrix)
        _restore_waiting(session, params)
    return session


def _restore_face(
    session: UserSession, face: FaceDoc, row: Document, params: ClusterParams
) -> None:
    state = session.state
    person = row.get("person_id")
    ordinal = state.add_face(
        face_input(face),
        params,
        person=UNASSIGNED if person is None else int(person),
        seq=int(row["seq"]),
    )
    if row.get("pinned"):
        state.pinned.add(ordinal)
    if row.get("not_in"):
        state.not_in[ordinal] = {int(p) for p in row["not_in"]}


def _restore_people(session: UserSession, docs: Mapping[int, PersonDoc]) -> None:
    """Names and covers from the people documents; note documents the assignments contradict."""
    state = session.state
    for person_id, doc in docs.items():
        if person_id not in state.people and doc.name and person_id not in state.merged_into:
            # A name is the user's work: a named person left without faces (emptied by the
            # user, or a write cut short) stays, empty, rather than losing its name.
            state.people[person_id] = Person()
        if person_id not in state.people:
            session.stale_people.add(person_id)
            # Known, so the cover copy goes with the person (`_delete_covers`).
            session.covers[person_id] = (doc.cover_face_id, doc.cover_key)
            continue
        state.people[person_id].name = doc.name
        session.covers[person_id] = (doc.cover_face_id, doc.cover_key)
    for person_id, record in state.people.items():
        stored = docs.get(person_id)
        members = {state.face_ids[m] for m in record.members}
        if stored is None or set(stored.member_face_ids) != members:
            session.dirty_people.add(person_id)


def _restore_waiting(session: UserSession, params: ClusterParams) -> None:
    """Neighbour lists of waiting faces, as the incremental step would have left them: earlier
    usable faces within `link_sim`, plus later strong ones (only those reach a waiting list)."""
    state, index = session.state, session.index
    assert index is not None
    waiting = [
        f for f, p in enumerate(state.person_of) if p == UNASSIGNED and state.tier[f] != IGNORED
    ]
    if not waiting:
        return
    sims, ids = index.search(state.faces.vectors[waiting], params.k + 1)
    for row, face in enumerate(waiting):
        hits = [
            (other, sim)
            for other, sim in zip(ids[row].tolist(), sims[row].tolist(), strict=True)
            if other >= 0
            and other != face
            and sim >= params.link_sim
            and state.tier[other] != IGNORED
            and (other < face or state.tier[other] == STRONG)
        ]
        state.waiting[face] = sorted(hits, key=lambda h: (-h[1], h[0]))[: params.k]


def consolidate_session(
    session: UserSession,
    params: ClusterParams,
    consolidate_params: ConsolidateParams | None = None,
) -> ClusterUpdate:
    """Run the consolidation pass on a loaded session (the caller holds the user's lease and
    writes the update): the batch partition mapped onto the user's people, then the waiting
    faces' neighbour lists rebuilt from the index, as the incremental step expects them."""
    update = consolidate(session.state, params, consolidate_params, index=session.index)
    if session.index is not None:
        _restore_waiting(session, params)
    session.consolidated_faces = len(session.state.face_ids)
    return update


def consolidation_due(
    session: UserSession, consolidate_params: ConsolidateParams | None = None
) -> bool:
    """The library grew by `growth_share` since the last pass (and holds `min_faces`)."""
    p = consolidate_params or ConsolidateParams()
    faces = len(session.state.face_ids)
    if faces < p.min_faces:
        return False
    return faces >= session.consolidated_faces * (1.0 + p.growth_share)


# -- writing ------------------------------------------------------------------------------------


def drop_gone_faces(
    store: GroupingStore, user_id: str, image_ids: Iterable[str], present: set[str]
) -> int:
    """Delete the assignments of these photos' faces that no longer exist (an older version of
    a photo saved over); returns how many. The caller reloads the state."""
    query = {"user_id": user_id, "image_id": {"$in": sorted(set(image_ids))}}
    gone = sorted({r["_id"] for r in store.assignments.find(query, {"_id": 1})} - present)
    if not gone:
        return 0
    store.delete_assignments(gone, store.lease_of(user_id))
    return len(gone)
