"""The grouping worker: the shared SQS consumer on GROUP_FACE_QUEUE_URL with a per-user handler.

A batch's requests are grouped by user, so each user's state is loaded once per batch. Each user
is grouped under the user's MongoDB lease (short, renewed while the work goes on, fenced: see
`store.user_lease`): while another worker holds it, that user's messages are DEFER (back on
the queue after a short delay) and the worker goes on with the other users: no user waits
behind another. A holder whose lease was taken over stops writing (`LeaseLost`, DEFER too).
Under the lease: load the user's state (a cached one only if the stored revision
is the one this process wrote and the FAISS index holds exactly the state's faces), place the
request's faces with the pure `add_faces` step, write back what changed (see `store`); when the
library has grown by `ConsolidateParams.growth_share` since the last consolidation pass, run the
pass (`consolidate`) under the same lease and write its changes; then the messages are DONE
and the consumer deletes them. Outage errors make a user's messages RETRY;
any other error in one user's work makes that user's messages MALFORMED (dead-lettered after
redelivery) without touching the other users of the batch.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import time
import uuid
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Protocol, TypeVar

from facefleet.common.config import Settings
from facefleet.common.documents import FaceDoc
from facefleet.common.messages import (
    AnswerRequest,
    ErasureRequest,
    ForgetRequest,
    GroupingRequest,
    MalformedMessage,
    parse_group_queue_message,
)
from facefleet.common.metrics import Metric, MetricsEmitter
from facefleet.common.repository import (
    GALLERY_DEFAULT_DB,
    HUEMN_DEFAULT_DB,
    LeaseHeld,
    LeaseLost,
    connect,
)
from facefleet.worker.grouping import answers
from facefleet.worker.grouping.batch_partition import ConsolidateParams
from facefleet.worker.grouping.placement import add_faces
from facefleet.worker.grouping.state import ClusterParams, ClusterUpdate
from facefleet.worker.grouping.store import (
    LEASE_TTL,
    GroupingStore,
    UserSession,
    consolidate_session,
    consolidation_due,
    drop_gone_faces,
    face_input,
    load_session,
    user_lease,
)
from facefleet.worker.grouping.writeback import save_changes
from facefleet.worker.runtime.consumer import ReceivedMessage
from facefleet.worker.runtime.outcome import OutageGuard, Outcome, classify

log = logging.getLogger(__name__)

CACHED_USERS = 8
T = TypeVar("T")


class PrivacyHooks(Protocol):
    """What the privacy package (`worker.privacy.forget.PrivacyRequests`) does for the grouping
    worker: grouping never imports privacy; the deployed worker (`worker.privacy.worker`)
    plugs it in."""

    def handle(
        self,
        service: GroupingService,
        items: Sequence[tuple[ReceivedMessage, ForgetRequest | ErasureRequest]],
        outage: bool,
    ) -> dict[str, Outcome]: ...

    def split_opted_out(
        self, service: GroupingService, by_user: dict[str, list[tuple[ReceivedMessage, T]]]
    ) -> tuple[dict[str, list[tuple[ReceivedMessage, T]]], dict[str, Outcome]]: ...


def cluster_params(settings: Settings) -> ClusterParams:
    """GROUPING_DISTANCE (a cosine distance; 0 = default) moves every similarity threshold
    together, so the join threshold becomes 1 - distance and the others keep their spacing."""
    params = ClusterParams()
    if settings.grouping_distance <= 0:
        return params
    shift = (1.0 - settings.grouping_distance) - params.join_sim
    moved = {
        f.name: min(0.99, max(-0.99, getattr(params, f.name) + shift))
        for f in dataclasses.fields(params)
        if f.name.endswith("_sim")
    }
    return dataclasses.replace(params, **moved)


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True)
class UserResult:
    faces_grouped: int
    people_created: int
    skipped_other_model: int


class GroupingService:
    """The batch handler; one per process (it caches a few users' sessions between batches)."""

    def __init__(
        self,
        store: GroupingStore,
        *,
        s3: Any,
        bucket: str,
        params: ClusterParams | None = None,
        metrics: MetricsEmitter | None = None,
        owner: str | None = None,
        lease_ttl: timedelta = LEASE_TTL,
        consolidate_params: ConsolidateParams | None = None,
        privacy: PrivacyHooks | None = None,
    ) -> None:
        self.store = store
        self.privacy = privacy
        self.consolidate_params = consolidate_params or ConsolidateParams()
        self.s3 = s3
        self.bucket = bucket
        self.params = params or ClusterParams()
        self.metrics = metrics
        self.owner = owner or worker_id()
        self.lease_ttl = lease_ttl
        self.sessions: OrderedDict[str, UserSession] = OrderedDict()

    # -- the consumer handler -----------------------------------------------------------------

    def handle(self, batch: list[ReceivedMessage]) -> dict[str, Outcome]:
        outcomes: dict[str, Outcome] = {}
        by_user: dict[str, list[tuple[ReceivedMessage, GroupingRequest]]] = {}
        privacy: list[tuple[ReceivedMessage, ForgetRequest | ErasureRequest]] = []
        answered: list[tuple[ReceivedMessage, AnswerRequest]] = []
        for message in batch:
            try:
                parsed = parse_group_queue_message(message.body)
            except MalformedMessage as error:
                log.error(
                    "malformed grouping request",
                    extra={"message_id": message.message_id, "error": str(error)},
                )
                outcomes[message.message_id] = Outcome.MALFORMED
                continue
            if isinstance(parsed, AnswerRequest):
                answered.append((message, parsed))
                continue
            if not isinstance(parsed, GroupingRequest):
                privacy.append((message, parsed))
                continue
            by_user.setdefault(parsed.user_id, []).append((message, parsed))
        # Users who turned face recognition off: nothing is grouped (what is left is erased).
        if self.privacy is not None:
            by_user, off = self.privacy.split_opted_out(self, by_user)
            outcomes.update(off)
        outage = False
        for user_id, items in by_user.items():
            # After an outage the rest would only time out one by one: retry them together.
            if outage:
                outcome = Outcome.RETRY
            else:
                outcome, outage = self._handle_user(user_id, items)
            for message, _ in items:
                outcomes[message.message_id] = outcome
        # After this batch's grouping, so an answer sees the faces just placed.
        outcomes.update(answers.handle_answers(self, answered, outage))
        # After this batch's grouping, so a forget also cleans what it just wrote.
        if self.privacy is not None:
            outcomes.update(self.privacy.handle(self, privacy, outage))
        elif privacy:
            log.error("forget/erase requests but no privacy hooks: kept for a full worker")
            outcomes.update({message.message_id: Outcome.RETRY for message, _ in privacy})
        return outcomes

    def _handle_user(
        self, user_id: str, items: list[tuple[ReceivedMessage, GroupingRequest]]
    ) -> tuple[Outcome, bool]:
        """The outcome of one user's messages, and whether a dependency is down."""
        try:
            self.group_user(user_id, [request for _, request in items])
        except (LeaseHeld, LeaseLost) as error:
            log.info(
                "user is being grouped elsewhere; deferred",
                extra={"user_id": user_id, "error": str(error)},
            )
            return Outcome.DEFER, False
        except Exception as error:
            outcome = classify(error)
            if outcome is Outcome.RETRY:
                log.warning(
                    "outage while grouping", extra={"user_id": user_id, "error": repr(error)}
                )
            else:
                log.exception("grouping failed", extra={"user_id": user_id})
            return outcome, outcome is Outcome.RETRY
        return Outcome.DONE, False

    # -- one user -----------------------------------------------------------------------------

    def group_user(self, user_id: str, requests: Sequence[GroupingRequest]) -> UserResult:
        """Place the faces of `requests` for one user under the user's lease."""
        started = time.monotonic()
        with user_lease(self.store, user_id, self.owner, self.lease_ttl):
            try:
                result = self._group_locked(user_id, requests)
            except BaseException:
                self.sessions.pop(user_id, None)  # a half-applied state must never be reused
                raise
        elapsed_ms = (time.monotonic() - started) * 1000
        log.info(
            "grouped user",
            extra={
                "user_id": user_id,
                "requests": len(requests),
                "faces": result.faces_grouped,
                "people_created": result.people_created,
                "skipped_other_model": result.skipped_other_model,
                "elapsed_ms": round(elapsed_ms, 1),
            },
        )
        if self.metrics is not None:
            self.metrics.emit(
                {
                    Metric.FACES_GROUPED: result.faces_grouped,
                    Metric.PEOPLE_CREATED: result.people_created,
                    Metric.GROUPING_TIME: elapsed_ms,
                },
                user_id=user_id,
            )
        return result

    def _group_locked(self, user_id: str, requests: Sequence[GroupingRequest]) -> UserResult:
        image_ids = list(dict.fromkeys(i for r in requests for i in r.image_ids))
        faces = _arrival_order(self.store.gallery.faces_of_images(user_id, image_ids), image_ids)
        if drop_gone_faces(self.store, user_id, image_ids, {f.doc_id for f in faces}):
            # A photo was saved over with new content: its old faces leave the state and their
            # people are rewritten (as a forget would; this request may come first).
            self.sessions.pop(user_id, None)
            session = load_session(self.store, user_id, self.params, _newest_model(faces))
            if session.model_id is not None:
                save_changes(self.store, session, ClusterUpdate(), s3=self.s3, bucket=self.bucket)
        if not faces:
            # Nothing to place: the photos have no faces (none found, deleted, or erased since).
            log.info("no faces to group", extra={"user_id": user_id, "images": len(image_ids)})
            return UserResult(0, 0, 0)
        session = self.session(user_id, _newest_model(faces))
        mine = [f for f in faces if f.model_id == session.model_id]
        if len(mine) < len(faces):
            log.warning(
                "faces of another model skipped (run `facefleet people migrate`)",
                extra={
                    "user_id": user_id,
                    "model_id": session.model_id,
                    "skipped": len(faces) - len(mine),
                },
            )
        if not mine:
            if session.model_id is None:
                self.sessions.pop(user_id, None)
            return UserResult(0, 0, len(faces))
        update = self.add(session, mine)
        save_changes(self.store, session, update, s3=self.s3, bucket=self.bucket)
        if consolidation_due(session, self.consolidate_params):
            # Under the same lease: the library grew enough that early decisions are revisited.
            started = time.monotonic()
            moved = consolidate_session(session, self.params, self.consolidate_params)
            save_changes(self.store, session, moved, s3=self.s3, bucket=self.bucket)
            log.info(
                "consolidated user",
                extra={
                    "user_id": user_id,
                    "faces": len(session.state.face_ids),
                    "faces_moved": len(moved.assignments),
                    "people_retired": len(moved.removed),
                    "elapsed_ms": round((time.monotonic() - started) * 1000, 1),
                },
            )
        return UserResult(len(update.added), len(update.created), len(faces) - len(mine))

    def add(self, session: UserSession, faces: Sequence[FaceDoc]) -> ClusterUpdate:
        index = session.ensure_index(int(faces[0].embedding.shape[0]))
        return add_faces(session.state, [face_input(f) for f in faces], index, self.params)

    def session(self, user_id: str, model_hint: str | None) -> UserSession:
        """The user's session: the cached one if still valid, else rebuilt from MongoDB."""
        cached = self.sessions.pop(user_id, None)
        doc = self.store.user_doc(user_id) or {}
        if cached is not None and _still_valid(cached, doc):
            session = cached
        else:
            session = load_session(self.store, user_id, self.params, model_hint)
        self.sessions[user_id] = session
        while len(self.sessions) > CACHED_USERS:
            self.sessions.popitem(last=False)
        return session


def _still_valid(session: UserSession, doc: dict[str, Any]) -> bool:
    """A cached session is used only when nobody wrote the user since and the index holds
    exactly the state's faces (a cache is never trusted blindly)."""
    if session.model_id is None:
        return False  # a user with no state yet is never cached as empty
    if doc.get("revision") != session.revision or doc.get("model_id") != session.model_id:
        return False
    faces = len(session.state.face_ids)
    if session.index is None:
        return faces == 0
    return session.index.matches(faces)


def _newest_model(faces: Sequence[FaceDoc]) -> str | None:
    """For a user grouped for the first time: the model of the most recently detected face."""
    if not faces:
        return None
    return max(faces, key=lambda f: (f.created_at, f.model_id)).model_id


def _arrival_order(faces: Sequence[FaceDoc], image_ids: Sequence[str]) -> list[FaceDoc]:
    """The order photos were requested in, then face index: the repository sorts by id."""
    position = {image_id: i for i, image_id in enumerate(image_ids)}
    return sorted(faces, key=lambda f: (position.get(f.image_id, len(position)), f.index))


def build_service(
    settings: Settings,
    metrics: MetricsEmitter | None = None,
    privacy: PrivacyHooks | None = None,
) -> GroupingService:
    """The grouping handler from the settings; the deployed worker passes the privacy hooks
    (`worker.privacy.worker.build_service`)."""
    assert settings.gallery_images_mongo_uri and settings.huemn_mongo_uri
    assert settings.face_group_bucket_name
    store = GroupingStore(
        connect(settings.gallery_images_mongo_uri, GALLERY_DEFAULT_DB),
        connect(settings.huemn_mongo_uri, HUEMN_DEFAULT_DB),
    )
    with OutageGuard() as guard:
        store.ensure_indexes()
    if guard.hit:
        # Indexes only speed queries up; an outage at start-up is the consumer's to ride out.
        log.warning("could not ensure indexes", extra={"error": repr(guard.error)})
    return GroupingService(
        store,
        s3=settings.aws.client("s3"),
        bucket=settings.face_group_bucket_name,
        params=cluster_params(settings),
        metrics=metrics,
        # Short: the lease is renewed while the work goes on, and an abandoned one frees the
        # user within a minute.
        lease_ttl=LEASE_TTL,
        privacy=privacy,
    )
