"""User corrections, full re-cluster and model change, applied to the stored grouping state.

Each operation takes the user's lease (so it never interleaves with a grouping worker), rebuilds
the state from MongoDB, applies a pure operation of `edits` / `recluster`, writes back what
changed (`writeback.save_changes`) and appends the correction to HUEMN `corrections`. Constraints
live on the state itself (`pinned`, `not_in`, `merged_into`), so every later automatic decision,
in any worker, respects them.

A re-cluster that is applied (repair) or a model change replaces the user's state while keeping
what users see: each new person takes the id of the old person with which it shares the most faces
(named people first), other new people get fresh ids, retired ids stay retired, and the user's
pins and "not this person" constraints are replayed (`carry`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import numpy as np

from facefleet.common.documents import FaceDoc
from facefleet.common.repository import upsert
from facefleet.worker.grouping import edits
from facefleet.worker.grouping.answers import QuestionBook, StaleQuestion, apply_answer
from facefleet.worker.grouping.carry import carry_over, match_faces
from facefleet.worker.grouping.consolidate import full_recluster
from facefleet.worker.grouping.index import FaceIndex
from facefleet.worker.grouping.service import worker_id
from facefleet.worker.grouping.state import (
    UNASSIGNED,
    ClusterParams,
    ClusterUpdate,
    UserClusterState,
)
from facefleet.worker.grouping.store import (
    LEASE_TTL,
    GroupingStore,
    UserSession,
    consolidate_session,
    face_input,
    load_session,
    user_lease,
)
from facefleet.worker.grouping.suggest import Question, SuggestParams, suggest
from facefleet.worker.grouping.writeback import save_changes

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
            update = edits.name_person(session.state, person_id, name)
            self._save(session, update)
        self.store.log_correction(user_id, "name", person_id=person_id, name=name)
        return next(iter(update.changed))

    def merge(self, user_id: str, keep: int, absorb: int) -> int:
        """`absorb` is the same person as `keep`; returns the person that holds both."""
        with self._locked(user_id) as session:
            update = edits.merge_people(session.state, keep, absorb)
            kept = session.state.resolve(keep)
            # Both people's faces are now pinned (confirmed): write the kept ones too.
            self._save(session, update, faces=edits.members(session.state, kept))
        self.store.log_correction(user_id, "merge", keep=keep, absorb=absorb)
        return kept

    def move(self, user_id: str, face_id: str, person_id: int | None) -> int:
        """Put a face in a person (None: a new person of its own); returns that person."""
        with self._locked(user_id) as session:
            update = edits.move_face(session.state, face_id, person_id)
            self._save(session, update, faces=[face_id])
            target = session.state.person_of_face(face_id)
        self.store.log_correction(user_id, "move", face_id=face_id, person_id=person_id)
        assert target is not None
        return target

    def reject(self, user_id: str, face_id: str, person_id: int) -> None:
        """The face is not `person_id`: it leaves that person and never rejoins it."""
        with self._locked(user_id) as session:
            update = edits.reject_face(session.state, face_id, person_id)
            self._save(session, update, faces=[face_id])
        self.store.log_correction(user_id, "reject", face_id=face_id, person_id=person_id)

    # -- questions ----------------------------------------------------------------------------

    @property
    def questions(self) -> QuestionBook:
        return QuestionBook.of(self.store.assignments.database)

    def suggest(self, user_id: str, params: SuggestParams | None = None) -> list[Question]:
        """The user's open questions, best first: the stored ones while the library is
        unchanged (same revision), else recomputed from the stored state and stored."""
        book = self.questions.load(user_id)
        doc = self.store.user_doc(user_id) or {}
        if doc.get("model_id") is None:
            raise NoGroupingState(f"user {user_id!r} has no grouping state yet")
        revision = doc.get("revision")
        if book.revision is not None and book.revision == revision:
            # An answer recorded while these were computed must not be asked again.
            return [q for q in book.open if q.key not in book.answered]
        session = load_session(self.store, user_id, self.params)
        questions = suggest(session.state, params, answered=book.answered)
        self.questions.save_open(user_id, session.revision, questions)
        return questions

    def answer(self, user_id: str, question_id: str, answer: str) -> ClusterUpdate:
        """Apply the answer to an open question under the user's lease (see `answers`)."""
        book = self.questions.load(user_id)
        question = book.find(question_id)
        if question is None:
            done = any(question_id == Question.id_of_key(k) for k in book.answered)
            state = "was already answered" if done else "is not an open question"
            raise KeyError(f"{question_id} {state} for user {user_id!r} (see `people suggest`)")
        with self._locked(user_id) as session:
            try:
                update = apply_answer(session.state, question, answer)
            except StaleQuestion:
                self.questions.record(user_id, question, "stale")
                raise
            faces = [question.face_id] if question.face_id and answer != "skip" else []
            if question.kind == "people" and answer == "same":
                faces = edits.members(session.state, session.state.resolve(question.person))
            self._save(session, update, faces=faces)
            self.questions.record(user_id, question, answer)
        self.store.log_correction(
            user_id, "answer", question_id=question_id, question=question.key, answer=answer
        )
        return update

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
                self._replace(session, state, index, {})
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
            carried = self._replace(session, state, index, face_map, new_model)
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
        face_map: Mapping[str, str],
        model_id: str | None = None,
    ) -> dict[int, int]:
        """Swap in a re-clustered state, keeping ids, names and constraints; write it all.
        Returns the named people carried over (old id -> id before renumbering)."""
        old = session.state
        carried = carry_over(old, state, face_map)
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
