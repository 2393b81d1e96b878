"""Writing a user's changed grouping state back: assignments, then people (with their cover
crops), then the user document, each fenced by the user's lease (see `store` for the homes)."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable
from typing import Any

import numpy as np
from botocore.exceptions import ClientError

from facefleet.common.documents import PersonDoc, encode_time, now
from facefleet.common.repository import fenced, write_fenced
from facefleet.common.s3keys import cover_key
from facefleet.worker.grouping.state import UNASSIGNED, ClusterUpdate
from facefleet.worker.grouping.store import GroupingStore, UserSession

log = logging.getLogger(__name__)


def save_changes(
    store: GroupingStore,
    session: UserSession,
    update: ClusterUpdate,
    *,
    s3: Any,
    bucket: str,
    touched_faces: Iterable[str] = (),
    touched_people: Iterable[int] = (),
) -> None:
    """Write back what `update` changed (plus faces/people a correction touched), then publish a
    new revision. `touched_faces` carry constraint changes that moved no face."""
    state = session.state
    lease = store.lease_of(session.user_id)
    faces = set(update.assignments) | set(touched_faces)
    _write_assignments(store, session, faces)
    people = set(update.changed) | set(update.created) | set(touched_people) | session.dirty_people
    live = sorted(p for p in people if p in state.people)
    store.people.save_people([_person_doc(session, p, s3, bucket) for p in live], lease)
    gone = sorted((set(update.removed) | session.stale_people) - set(state.people))
    store.people.delete_people(session.user_id, gone, lease)
    _delete_covers(session, gone, s3, bucket)
    session.dirty_people.clear()
    session.stale_people.clear()
    _write_user(store, session)


def _write_assignments(store: GroupingStore, session: UserSession, face_ids: set[str]) -> None:
    state = session.state
    lease = store.lease_of(session.user_id)
    operations = []
    for face_id in sorted(face_ids, key=state.ordinal_of.__getitem__):
        ordinal = state.ordinal_of[face_id]
        person = state.person_of[ordinal]
        operations.append(
            fenced(
                {
                    "_id": face_id,
                    "user_id": session.user_id,
                    "model_id": session.model_id,
                    "seq": state.faces.seq[ordinal],
                    "image_id": state.photo_ids[ordinal],
                    "person_id": None if person == UNASSIGNED else person,
                    "pinned": ordinal in state.pinned,
                    "not_in": sorted(state.not_in.get(ordinal, ())),
                },
                lease,
            )
        )
    write_fenced(store.assignments, operations, lease)


def _write_user(store: GroupingStore, session: UserSession) -> None:
    state = session.state
    lease = store.lease_of(session.user_id)
    session.revision = uuid.uuid4().hex
    write_fenced(
        store.users,
        [
            fenced(
                {
                    "_id": session.user_id,
                    "model_id": session.model_id,
                    "next_person_id": state.next_person_id,
                    "merged_into": sorted([a, b] for a, b in state.merged_into.items()),
                    "apart": sorted([a, b] for a, b in state.apart),
                    "revision": session.revision,
                    "face_count": len(state.face_ids),
                    "consolidated_faces": session.consolidated_faces,
                    "people_count": len(state.people),
                    "updated_at": encode_time(now()),
                },
                lease,
            )
        ],
        lease,
    )


def _person_doc(session: UserSession, person_id: int, s3: Any, bucket: str) -> PersonDoc:
    state = session.state
    record = state.people[person_id]
    ordinals = sorted(record.members)
    dim = session.index.dim if session.index is not None else 0
    centroid = np.zeros(dim, dtype=np.float32)
    if ordinals:
        total = state.faces.vectors[ordinals].sum(axis=0)
        norm = float(np.linalg.norm(total))
        centroid = total / norm if norm > 0 else total
    cover_face, key = _cover(session, person_id, ordinals, s3, bucket)
    return PersonDoc(
        user_id=session.user_id,
        person_id=person_id,
        model_id=session.model_id or "",
        member_face_ids=[state.face_ids[m] for m in ordinals],
        cover_face_id=cover_face,
        centroid=centroid,
        name=record.name,
        cover_key=key,
    )


def _cover(
    session: UserSession, person_id: int, ordinals: list[int], s3: Any, bucket: str
) -> tuple[str | None, str | None]:
    """The member with the best (tier, quality, size) is the cover; its crop is copied only when
    the cover face changed or its copy is missing."""
    stored_face, stored_key = session.covers.get(person_id, (None, None))
    if not ordinals:
        # A named person left empty keeps no copy of a face that is gone.
        _delete_covers(session, [person_id], s3, bucket)
        return None, None
    state = session.state
    best = max(ordinals, key=lambda m: (state.tier[m], state.quality[m], state.size_px[m], -m))
    face_id = state.face_ids[best]
    if stored_face == face_id and stored_key is not None:
        return face_id, stored_key
    key = _copy_crop(session.user_id, person_id, state.faces.crop_keys[best], s3, bucket)
    if key is None and stored_key is not None:
        s3.delete_object(Bucket=bucket, Key=stored_key)  # the old cover shows another face
    session.covers[person_id] = (face_id, key)
    return face_id, key


def _delete_covers(session: UserSession, people: Iterable[int], s3: Any, bucket: str) -> None:
    for person_id in people:
        _, key = session.covers.pop(person_id, (None, None))
        if key is not None:
            s3.delete_object(Bucket=bucket, Key=key)


def _copy_crop(user_id: str, person_id: int, crop: str | None, s3: Any, bucket: str) -> str | None:
    if crop is None:
        return None
    key = cover_key(user_id, person_id, crop)
    try:
        s3.copy_object(Bucket=bucket, Key=key, CopySource={"Bucket": bucket, "Key": crop})
    except ClientError as error:
        code = str(error.response.get("Error", {}).get("Code", ""))
        if code not in {"NoSuchKey", "404", "NotFound"}:
            raise  # an outage: the consumer retries the batch
        # A missing crop must not block grouping; the person simply has no cover image yet.
        log.warning("cover crop missing", extra={"user_id": user_id, "crop_key": crop})
        return None
    return key
