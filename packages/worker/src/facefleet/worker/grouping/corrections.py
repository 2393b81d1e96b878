"""User corrections, full re-cluster and model change, applied to the stored grouping state.

Each operation takes the user's lease (so it never interleaves with a grouping worker), rebuilds
the state from MongoDB, applies a pure operation of `clustering` / `recluster`, writes back what
changed (`store.save_changes`) and appends the correction to HUEMN `corrections`. Constraints
live on the state itself (`pinned`, `not_in`, `merged_into`), so every later automatic decision,
in any worker, respects them.

A re-cluster that is applied (repair) or a model change replaces the user's state while keeping
what users see: each new person takes the id of the old person with which it shares the most faces
(named people first, their names through `carry_names`), other new people get fresh ids, retired
ids stay retired, and the user's pins and "not this person" constraints are replayed.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import numpy as np

from facefleet.common.documents import FaceDoc
from facefleet.common.repository import upsert
from facefleet.worker.grouping import clustering
from facefleet.worker.grouping.clustering import (
    UNASSIGNED,
    ClusterParams,
    ClusterUpdate,
    UserClusterState,
)
from facefleet.worker.grouping.consolidate import full_recluster
from facefleet.worker.grouping.index import FaceIndex
from facefleet.worker.grouping.service import worker_id
from facefleet.worker.grouping.store import (
    LEASE_TTL,
    GroupingStore,
    UserSession,
    consolidate_session,
    face_input,
    load_session,
    save_changes,
    user_lease,
)

log = logging.getLogger(__name__)

# Re-embeds aligned crops under another model: (crops) -> (N, D) unit vectors.
Embedder = Callable[[Sequence[np.ndarray]], np.ndarray]


class NoGroupingState(LookupError):
    """The user has never been grouped (no model, no faces)."""


@dataclass(frozen=True)
class ReclusterReport:
    faces: int
    people_incremental: int
    people_full: int
    unassigned_incremental: int
    unassigned_full: int
    ari: float
    applied: bool
    seconds: float


@dataclass(frozen=True)
class ConsolidationReport:
    faces: int
    people_before: int
    people_after: int
    faces_moved: int
    people_created: int
    people_retired: int
    named_people: int
    seconds: float


@dataclass(frozen=True)
class MigrationReport:
    old_model: str
    new_model: str
    faces_old: int
    faces_new: int
    faces_reembedded: int
    people: int
    named_carried: int
    named_lost: list[str]


class Corrections:
    """The adapter the `facefleet people` commands (and the app) call."""

    def __init__(
        self,
        store: GroupingStore,
        *,
        s3: Any,
        bucket: str,
        params: ClusterParams | None = None,
        lease_ttl: timedelta = LEASE_TTL,
        lease_wait_seconds: float = 30.0,
    ) -> None:
        self.store = store
        self.s3 = s3
        self.bucket = bucket
        self.params = params or ClusterParams()
        self.owner = "people-cli:" + worker_id()
        self.lease_ttl = lease_ttl
        self.lease_wait_seconds = lease_wait_seconds

    # -- the lease and the state --------------------------------------------------------------

    @contextmanager
    def _locked(self, user_id: str) -> Iterator[UserSession]:
        """The user's freshly loaded state, under the user's lease (waiting out a batch)."""
        with user_lease(
            self.store,
            user_id,
            self.owner,
            self.lease_ttl,
            wait_seconds=self.lease_wait_seconds,
        ):
            session = load_session(self.store, user_id, self.params)
            if session.model_id is None:
                raise NoGroupingState(f"user {user_id!r} has no grouping state yet")
            yield session

    def _save(
        self,
        session: UserSession,
        update: ClusterUpdate,
        *,
        faces: Sequence[str] = (),
        people: Sequence[int] = (),
    ) -> None:
        save_changes(
            self.store,
            session,
            update,
            s3=self.s3,
            bucket=self.bucket,
            touched_faces=faces,
            touched_people=people,
        )

    # -- corrections --------------------------------------------------------------------------

    def name(self, user_id: str, person_id: int, name: str | None) -> int:
        """Name (or, with None, unname) a person; returns the live person id named."""
        with self._locked(user_id) as session:
            update = clustering.name_person(session.state, person_id, name)
            self._save(session, update)
        self.store.log_correction(user_id, "name", person_id=person_id, name=name)
        return next(iter(update.changed))

    def merge(self, user_id: str, keep: int, absorb: int) -> int:
        """`absorb` is the same person as `keep`; returns the person that holds both."""
        with self._locked(user_id) as session:
            update = clustering.merge_people(session.state, keep, absorb)
            kept = session.state.resolve(keep)
            # Both people's faces are now pinned (confirmed): write the kept ones too.
            self._save(session, update, faces=clustering.members(session.state, kept))
        self.store.log_correction(user_id, "merge", keep=keep, absorb=absorb)
        return kept

    def move(self, user_id: str, face_id: str, person_id: int | None) -> int:
        """Put a face in a person (None: a new person of its own); returns that person."""
        with self._locked(user_id) as session:
            update = clustering.move_face(session.state, face_id, person_id)
            self._save(session, update, faces=[face_id])
            target = session.state.person_of_face(face_id)
        self.store.log_correction(user_id, "move", face_id=face_id, person_id=person_id)
        assert target is not None
        return target

    def reject(self, user_id: str, face_id: str, person_id: int) -> None:
        """The face is not `person_id`: it leaves that person and never rejoins it."""
        with self._locked(user_id) as session:
            update = clustering.reject_face(session.state, face_id, person_id)
            self._save(session, update, faces=[face_id])
        self.store.log_correction(user_id, "reject", face_id=face_id, person_id=person_id)

    def consolidate(self, user_id: str) -> ConsolidationReport:
        """Run the consolidation pass now (`facefleet people consolidate`), under the lease."""
        started = time.monotonic()
        with self._locked(user_id) as session:
            before = _assigned_people(session.state)
            update = consolidate_session(session, self.params)
            self._save(session, update)
            state = session.state
            report = ConsolidationReport(
                faces=len(state.face_ids),
                people_before=before,
                people_after=_assigned_people(state),
                faces_moved=len(update.assignments),
                people_created=len(update.created),
                people_retired=len(update.removed),
                named_people=sum(1 for r in state.people.values() if r.name),
                seconds=round(time.monotonic() - started, 3),
            )
        self.store.log_correction(user_id, "consolidate", moved=report.faces_moved)
        return report

    # -- full re-cluster and model change -----------------------------------------------------

    def recluster(self, user_id: str, *, apply: bool = False) -> ReclusterReport:
        """Re-cluster the user's whole library and compare with the incremental state; with
        `apply`, replace the state (ids, names and constraints carried over)."""
        from facefleet.worker.grouping.recluster import agreement, recluster  # scikit-learn

        started = time.monotonic()
        with self._locked(user_id) as session:
            faces = self._faces_of_state(session)
            state, index = recluster([face_input(f) for f in faces], self.params)
            report = ReclusterReport(
                faces=len(faces),
                people_incremental=_assigned_people(session.state),
                people_full=_assigned_people(state),
                unassigned_incremental=session.state.person_of.count(UNASSIGNED),
                unassigned_full=state.person_of.count(UNASSIGNED),
                ari=agreement(session.state, state),
                applied=apply,
                seconds=0.0,
            )
            if apply:
                self._replace(session, state, index, faces, {})
        self.store.log_correction(user_id, "recluster", applied=apply, ari=report.ari)
        return _with_seconds(report, time.monotonic() - started)

    def migrate(
        self, user_id: str, new_model: str, embedder: Embedder | None = None
    ) -> MigrationReport:
        """Move the user to `new_model`: re-embed the stored crops with `embedder` (else use the
        faces the detector already wrote under the new model), cluster the library with the
        consolidation pass (a model change is one of its triggers), carry named people."""

        with self._locked(user_id) as session:
            old_model = session.model_id
            if old_model == new_model:
                raise ValueError(f"user {user_id!r} is already on model {new_model!r}")
            old_faces = self._faces_of_state(session)
            reembedded = self._reembed(old_faces, new_model, embedder) if embedder else 0
            new_faces = self.store.gallery.faces_of_user(user_id, new_model)
            if not new_faces:
                raise NoGroupingState(f"user {user_id!r} has no faces under model {new_model!r}")
            face_map = match_faces(old_faces, new_faces)
            state, index = full_recluster([face_input(f) for f in new_faces], self.params)
            old_names = {p: r.name for p, r in session.state.people.items() if r.name}
            carried = self._replace(session, state, index, new_faces, face_map, new_model)
            self.store.assignments.delete_many({"user_id": user_id, "model_id": old_model})
        self.store.log_correction(user_id, "migrate", old_model=old_model, new_model=new_model)
        return MigrationReport(
            old_model=str(old_model),
            new_model=new_model,
            faces_old=len(old_faces),
            faces_new=len(new_faces),
            faces_reembedded=reembedded,
            people=len(state.people),
            named_carried=sum(1 for p in old_names if p in carried),
            named_lost=sorted(n for p, n in old_names.items() if p not in carried),
        )

    def _faces_of_state(self, session: UserSession) -> list[FaceDoc]:
        known = session.state.ordinal_of
        faces = self.store.gallery.faces_of_user(session.user_id, session.model_id)
        return [f for f in faces if f.doc_id in known]

    def _reembed(self, faces: Sequence[FaceDoc], model: str, embed: Embedder) -> int:
        """Embed each face's stored aligned crop with the new model; write the new FaceDocs."""
        crops, kept = [], []
        for face in faces:
            crop = _read_crop(self.s3, self.bucket, face.crop_key)
            if crop is not None:
                crops.append(crop)
                kept.append(face)
        vectors = embed(crops)
        docs = [_with_model(face, model, v) for face, v in zip(kept, vectors, strict=True)]
        if docs:
            self.store.gallery.faces.bulk_write([upsert(d.to_mongo()) for d in docs], ordered=False)
        return len(docs)

    def _replace(
        self,
        session: UserSession,
        state: UserClusterState,
        index: FaceIndex,
        faces: Sequence[FaceDoc],
        face_map: Mapping[str, str],
        model_id: str | None = None,
    ) -> dict[int, int]:
        """Swap in a re-clustered state, keeping ids, names and constraints; write it all.
        Returns the named people carried over (old id -> id before renumbering)."""
        from facefleet.worker.grouping.recluster import carry_names

        old = session.state
        carried = carry_names(old, state, face_map)
        mapping = _match_people(old, state, face_map, carried)
        _renumber(state, mapping, old.next_person_id)
        state.merged_into = dict(old.merged_into)
        _replay_constraints(old, state, face_map)
        fresh = UserSession(
            session.user_id,
            model_id or session.model_id,
            state=state,
            index=index,
            covers=dict(session.covers),
            consolidated_faces=len(state.face_ids),
        )
        fresh.stale_people = set(old.people) - set(state.people)
        everything = ClusterUpdate(
            assignments=dict.fromkeys(state.face_ids), changed=set(state.people)
        )
        save_changes(self.store, fresh, everything, s3=self.s3, bucket=self.bucket)
        return carried


def match_faces(old: Sequence[FaceDoc], new: Sequence[FaceDoc]) -> dict[str, str]:
    """Old face id -> new face id: the same photo and the most overlapping box (IoU >= 0.5)."""
    by_image: dict[str, list[FaceDoc]] = {}
    for face in new:
        by_image.setdefault(face.image_id, []).append(face)
    mapping: dict[str, str] = {}
    for face in old:
        candidates = [
            (iou(face.bbox, other.bbox), other.doc_id) for other in by_image.get(face.image_id, [])
        ]
        if candidates:
            overlap, best = max(candidates)
            if overlap >= 0.5:
                mapping[face.doc_id] = best
    return mapping


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = width * height
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _match_people(
    old: UserClusterState,
    new: UserClusterState,
    face_map: Mapping[str, str],
    carried: Mapping[int, int],
) -> dict[int, int]:
    """New person id -> the old id it takes over: named people as `carry_names` matched them,
    then unnamed ones by largest face overlap, one to one."""
    mapping = {new_id: old_id for old_id, new_id in carried.items()}
    votes: Counter[tuple[int, int]] = Counter()
    for ordinal, old_person in enumerate(old.person_of):
        new_face = face_map.get(old.face_ids[ordinal], old.face_ids[ordinal])
        if old_person != UNASSIGNED and new_face in new.ordinal_of:
            target = new.person_of_face(new_face)
            if target is not None:
                votes[(target, old_person)] += 1
    for (new_id, old_id), _ in sorted(votes.items(), key=lambda v: (-v[1], v[0])):
        if new_id not in mapping and old_id not in mapping.values():
            mapping[new_id] = old_id
    return mapping


def _renumber(state: UserClusterState, mapping: Mapping[int, int], first_free: int) -> None:
    """Give matched people their old ids and the rest fresh ids at or above `first_free`."""
    final: dict[int, int] = dict(mapping)
    next_id = max([first_free, *(v + 1 for v in mapping.values())])
    for person in sorted(state.people):
        if person not in final:
            final[person] = next_id
            next_id += 1
    state.people = {final[p]: record for p, record in state.people.items()}
    state.person_of[:] = [p if p == UNASSIGNED else final[p] for p in state.person_of]
    state.next_person_id = next_id


def _replay_constraints(
    old: UserClusterState, new: UserClusterState, face_map: Mapping[str, str]
) -> None:
    """The user's pins and "not this person" constraints, on the matching new faces."""
    for ordinal in sorted(old.pinned):
        face_id = face_map.get(old.face_ids[ordinal], old.face_ids[ordinal])
        person = old.person_of[ordinal]
        if face_id in new.ordinal_of and person in new.people:
            clustering.move_face(new, face_id, person)
    for ordinal, barred in sorted(old.not_in.items()):
        face_id = face_map.get(old.face_ids[ordinal], old.face_ids[ordinal])
        if face_id not in new.ordinal_of:
            continue
        for person in sorted(barred):
            if person in new.people:
                clustering.reject_face(new, face_id, person)
            else:
                new.not_in.setdefault(new.ordinal_of[face_id], set()).add(person)


def _assigned_people(state: UserClusterState) -> int:
    return sum(1 for record in state.people.values() if record.members)


def _with_seconds(report: ReclusterReport, seconds: float) -> ReclusterReport:
    return ReclusterReport(**{**report.__dict__, "seconds": round(seconds, 3)})


def _read_crop(s3: Any, bucket: str, key: str | None) -> np.ndarray | None:
    if key is None:
        return None
    import cv2  # only model changes decode images; the worker's start-up stays light

    try:
        data = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    except s3.exceptions.NoSuchKey:
        log.warning("crop missing; face not re-embedded", extra={"crop_key": key})
        return None
    image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    return image if image is not None else None


def _with_model(face: FaceDoc, model: str, embedding: np.ndarray) -> FaceDoc:
    return FaceDoc(
        user_id=face.user_id,
        image_id=face.image_id,
        model_id=model,
        index=face.index,
        bbox=face.bbox,
        landmarks=face.landmarks,
        det_score=face.det_score,
        quality=face.quality,
        embedding=np.asarray(embedding, dtype=np.float32),
        crop_key=face.crop_key,
    )
