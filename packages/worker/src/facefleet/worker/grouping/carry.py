"""What the user sees, carried onto a replacement state (a re-cluster applied, a model change).

    carried = carry_over(old, new, face_map)   # pure: updates `new` in place

Each new person takes the id of the old person with which it shares the most faces (named people
first, their names through `carry_names`), other new people get fresh ids, retired ids stay
retired, and the user's pins, "not this person" and "these two differ" constraints are replayed.
After a model change the face ids differ: `match_faces` maps old faces to new ones by box.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence

from facefleet.common.documents import FaceDoc
from facefleet.worker.grouping import edits
from facefleet.worker.grouping.state import UNASSIGNED, UserClusterState


def carry_over(
    old: UserClusterState, new: UserClusterState, face_map: Mapping[str, str]
) -> dict[int, int]:
    """Give `new` the ids, names and constraints of `old`; returns the named people carried
    over (old id -> id before renumbering)."""
    carried = carry_names(old, new, face_map)
    mapping = match_people(old, new, face_map, carried)
    renumber(new, mapping, old.next_person_id)
    new.merged_into = dict(old.merged_into)
    new.apart = {pair for pair in old.apart if all(p in new.people for p in pair)}
    replay_constraints(old, new, face_map)
    return carried


def carry_names(
    old: UserClusterState, new: UserClusterState, face_map: Mapping[str, str] | None = None
) -> dict[int, int]:
    """Give each named old person's name to the new person holding most of its faces.

    Returns old person id -> new person id for the people carried. `face_map` maps old face ids
    to new ones (identity when omitted). A new person takes at most one name: the old person
    with the larger overlap wins.
    """
    face_map = face_map or {}
    candidates: list[tuple[int, int, int]] = []  # (-overlap, old person, new person)
    for person_id, person in old.people.items():
        if person.name is None:
            continue
        votes: Counter[int] = Counter()
        for face in person.members:
            new_face = face_map.get(old.face_ids[face], old.face_ids[face])
            if new_face in new.ordinal_of:
                target = new.person_of_face(new_face)
                if target is not None:
                    votes[target] += 1
        for target, count in votes.items():
            candidates.append((-count, person_id, target))
    carried: dict[int, int] = {}
    taken: set[int] = set()
    for _, person_id, target in sorted(candidates):
        if person_id in carried or target in taken:
            continue
        carried[person_id] = target
        taken.add(target)
        new.people[target].name = old.people[person_id].name
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


def match_people(
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


def renumber(state: UserClusterState, mapping: Mapping[int, int], first_free: int) -> None:
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


def replay_constraints(
    old: UserClusterState, new: UserClusterState, face_map: Mapping[str, str]
) -> None:
    """The user's pins and "not this person" constraints, on the matching new faces."""
    for ordinal in sorted(old.pinned):
        face_id = face_map.get(old.face_ids[ordinal], old.face_ids[ordinal])
        person = old.person_of[ordinal]
        if face_id in new.ordinal_of and person in new.people:
            edits.move_face(new, face_id, person)
    for ordinal, barred in sorted(old.not_in.items()):
        face_id = face_map.get(old.face_ids[ordinal], old.face_ids[ordinal])
        if face_id not in new.ordinal_of:
            continue
        for person in sorted(barred):
            if person in new.people:
                edits.reject_face(new, face_id, person)
            else:
                new.not_in.setdefault(new.ordinal_of[face_id], set()).add(person)
