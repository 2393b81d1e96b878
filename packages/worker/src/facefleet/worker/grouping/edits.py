"""The user's corrections as pure edits of `UserClusterState`: merge, separate, move, reject, name.

Each returns a `ClusterUpdate`, like `placement.add_faces`; the `corrections` adapter applies them
under the user's lease and writes back what changed. What they record (`pinned`, `not_in`,
`merged_into`, `apart`) lives on the state itself, so every later automatic decision (placement,
consolidation, suggestions), in any worker, respects it.
"""

from __future__ import annotations

from facefleet.worker.grouping.state import (
    UNASSIGNED,
    ClusterUpdate,
    Person,
    UserClusterState,
    assign,
    unassign,
)


def _ordinal(state: UserClusterState, face_id: str) -> int:
    try:
        return state.ordinal_of[face_id]
    except KeyError:
        raise KeyError(f"face {face_id!r} is not in this user's state") from None


def _live(state: UserClusterState, person_id: int) -> int:
    person = state.resolve(person_id)
    if person not in state.people:
        raise KeyError(f"person {person_id} does not exist for this user")
    return person


def merge_people(state: UserClusterState, keep: int, absorb: int) -> ClusterUpdate:
    """The user says `absorb` is `keep`: its faces move to `keep`, and its id is retired.

    The kept person keeps its name (or takes `absorb`'s when it has none). "Not this person"
    constraints against `absorb` now bar `keep`. The merge confirms the faces of both: they are
    pinned, so no later consolidation splits what the user joined.
    """
    update = ClusterUpdate()
    keep, absorb = _live(state, keep), _live(state, absorb)
    if keep == absorb:
        return update
    source = state.people[absorb]
    for face in sorted(source.members):
        unassign(state, face, update)
        assign(state, face, keep, update)
    if state.people[keep].name is None:
        state.people[keep].name = source.name
    state.people.pop(absorb, None)
    if absorb not in update.removed:
        update.removed.append(absorb)
    update.changed.discard(absorb)
    state.merged_into[absorb] = keep
    state.pinned.update(state.people[keep].members)
    for barred in state.not_in.values():
        if absorb in barred:
            barred.discard(absorb)
            barred.add(keep)
    # The user's latest word wins: merging two people once said to differ lifts that constraint.
    state.apart = {
        pair
        for pair in (
            _pair(keep if a == absorb else a, keep if b == absorb else b) for a, b in state.apart
        )
        if pair[0] != pair[1]
    }
    return update


def _pair(a: int, b: int) -> tuple[int, int]:
    return (a, b) if a <= b else (b, a)


def separate_people(state: UserClusterState, person_id: int, other_id: int) -> ClusterUpdate:
    """The user says two people are different: a cannot-link no automatic step undoes.

    Placement never merges people; consolidation treats the members of people with such a
    constraint as anchors (they stay where they are), so the two never become one and neither
    takes the other's faces. A later user merge of the two lifts it.
    """
    a, b = _live(state, person_id), _live(state, other_id)
    if a == b:
        raise ValueError(f"people {person_id} and {other_id} are one person")
    state.apart.add(_pair(a, b))
    return ClusterUpdate(changed={a, b})


def are_apart(state: UserClusterState, person_id: int, other_id: int) -> bool:
    """Whether the user said these two (live or retired) people are different."""
    target = _pair(state.resolve(person_id), state.resolve(other_id))
    return any(_pair(state.resolve(a), state.resolve(b)) == target for a, b in state.apart)


def move_face(state: UserClusterState, face_id: str, person_id: int | None) -> ClusterUpdate:
    """The user puts a face in `person_id` (None: in a new person of its own); it stays there.

    Moving a face out of a person also records that it is not that person.
    """
    update = ClusterUpdate()
    face = _ordinal(state, face_id)
    target = None if person_id is None else _live(state, person_id)
    old = state.person_of[face]
    if target is not None and target == old:
        state.pinned.add(face)
        return update
    if old != UNASSIGNED:
        unassign(state, face, update)
        state.not_in.setdefault(face, set()).add(old)
    if target is None:
        target = state.next_person_id
        state.next_person_id += 1
        state.people[target] = Person()
        update.created.append(target)
    state.not_in.get(face, set()).discard(target)
    assign(state, face, target, update)
    state.pinned.add(face)
    state.waiting.pop(face, None)
    return update


def reject_face(state: UserClusterState, face_id: str, person_id: int) -> ClusterUpdate:
    """The user says the face is not `person_id`: it leaves that person and never rejoins it.

    The face waits unassigned with no neighbour list (the step is I/O-free): the next face that
    lands near it lets it join another person.
    """
    update = ClusterUpdate()
    face = _ordinal(state, face_id)
    person = _live(state, person_id)
    state.not_in.setdefault(face, set()).add(person)
    state.pinned.discard(face)
    if state.person_of[face] == person:
        unassign(state, face, update)
        state.waiting[face] = []
    return update


def name_person(state: UserClusterState, person_id: int, name: str | None) -> ClusterUpdate:
    person = _live(state, person_id)
    state.people[person].name = name
    return ClusterUpdate(changed={person})


def members(state: UserClusterState, person_id: int) -> list[str]:
    """Face ids of a person, in arrival order."""
    person = _live(state, person_id)
    return [state.face_ids[face] for face in sorted(state.people[person].members)]
