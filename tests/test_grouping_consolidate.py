"""Properties of the consolidation pass on random streams (with random user corrections)."""

from __future__ import annotations

import random

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from facefleet.worker.grouping.batch_partition import ConsolidateParams
from facefleet.worker.grouping.consolidate import _assignment, consolidate, full_recluster
from facefleet.worker.grouping.edits import merge_people, move_face, name_person, reject_face
from facefleet.worker.grouping.placement import add_faces
from facefleet.worker.grouping.state import UNASSIGNED, UserClusterState, partition
from tests.test_grouping_clustering import FAST, PARAMS, check_invariants, make_stream, run, streams

pytestmark = pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisWarning")


def corrected(seed: int, state: UserClusterState) -> dict[str, object]:
    """Apply random user corrections; returns what must hold afterwards."""
    rng = random.Random(seed)
    live = sorted(p for p, r in state.people.items() if r.members)
    names: dict[int, str] = {}
    pins: dict[str, int] = {}
    barred: dict[str, set[int]] = {}
    for person in rng.sample(live, min(len(live), 3)):
        name_person(state, person, f"name-{person}")
        names[person] = f"name-{person}"
    together: list[set[str]] = []
    unnamed = [p for p in live if p not in names]
    if len(unnamed) >= 2:
        keep, absorb = rng.sample(unnamed, 2)
        merge_people(state, keep, absorb)
        together.append({state.face_ids[m] for m in state.people[keep].members})
    faces = list(state.face_ids)
    for face_id in rng.sample(faces, min(len(faces), 4)):
        targets = sorted(p for p in state.people if p != state.person_of_face(face_id))
        if targets and rng.random() < 0.5:
            person = rng.choice(targets)
            move_face(state, face_id, person)
            pins[face_id] = person
        elif state.person_of_face(face_id) is not None:
            person = state.person_of_face(face_id)
            assert person is not None
            reject_face(state, face_id, person)
            barred.setdefault(face_id, set()).add(person)
            pins.pop(face_id, None)
    for face_id in list(pins):
        if face_id in barred and pins[face_id] in barred[face_id]:
            del pins[face_id]
    for group in together:  # a face moved or rejected since is no longer held to the merge
        group -= set(pins) | set(barred)
    return {"names": names, "pins": pins, "barred": barred, "together": together}


def same_photo_apart(state: UserClusterState) -> None:
    """No two faces of one photo in a person, unless the user placed one of them there."""
    for person in state.people.values():
        photos = [state.photo_ids[m] for m in person.members if m not in state.pinned]
        assert len(photos) == len(set(photos)), "two faces of one photo in one person"


@FAST
@given(streams, st.integers(0, 2**16))
def test_named_people_pins_and_rejections_survive_consolidation(stream, seed) -> None:
    state, index = run(stream.faces)
    must = corrected(seed, state)
    ids_before = set(state.people) | set(state.merged_into)
    retired_before = set(state.merged_into)
    counter = state.next_person_id
    consolidate(state, PARAMS)
    check_invariants(state)
    same_photo_apart(state)
    for person, name in must["names"].items():  # type: ignore[attr-defined]
        assert state.people[person].name == name  # same id, same name, never dropped
    for face_id, person in must["pins"].items():  # type: ignore[attr-defined]
        assert state.person_of_face(face_id) == person  # confirmed faces stay
    for face_id, people in must["barred"].items():  # type: ignore[attr-defined]
        assert state.person_of_face(face_id) not in people  # "not this person" holds
    for group in must["together"]:  # type: ignore[attr-defined]
        assert len({state.person_of_face(f) for f in group}) <= 1  # a user's merge holds
    for person in state.people:
        assert person not in retired_before  # a retired id is never reused
        assert person in ids_before or person >= counter  # new ids come from the counter
    for old, new in state.merged_into.items():
        assert state.resolve(old) in state.people  # old ids resolve to a live person
        del new
    # Later incremental grouping still respects the constraints.
    extra = make_stream(seed + 1, 3, 2).faces
    add_faces(
        state,
        [f.__class__(**{**f.__dict__, "face_id": "x" + f.face_id}) for f in extra],
        index,
        PARAMS,
    )
    for face_id, people in must["barred"].items():  # type: ignore[attr-defined]
        assert state.person_of_face(face_id) not in people


@FAST
@given(streams, st.integers(0, 2**16))
def test_consolidating_a_consolidated_library_changes_nothing(stream, seed) -> None:
    state, _ = run(stream.faces)
    corrected(seed, state)
    consolidate(state, PARAMS)
    people = {p: (r.name, set(r.members)) for p, r in state.people.items()}
    retired = dict(state.merged_into)
    again = consolidate(state, PARAMS)
    assert not again.assignments and not again.created and not again.removed
    assert {p: (r.name, set(r.members)) for p, r in state.people.items()} == people
    assert state.merged_into == retired


def _groups(state: UserClusterState) -> set[frozenset[str]]:
    return {frozenset(state.face_ids[m] for m in r.members) for r in state.people.values()}


@FAST
@given(streams, st.integers(0, 2**16))
def test_partition_after_consolidation_does_not_depend_on_arrival_order(stream, seed) -> None:
    first, _ = run(stream.faces, batch=5)
    shuffled = list(stream.faces)
    random.Random(seed).shuffle(shuffled)
    second, _ = run(shuffled, batch=11)
    consolidate(first, PARAMS)
    consolidate(second, PARAMS)
    assert _groups(first) == _groups(second)
    # ... and it is what a full batch re-cluster of the library gives.
    assert _groups(full_recluster(stream.faces, PARAMS)[0]) == _groups(first)


def test_consolidation_merges_split_people_keeping_the_larger_id() -> None:
    stream = make_stream(3, identities=4, noise=0, weak_share=0.0, same_photo_rate=0.0)
    state, _ = run(stream.faces)
    truth = dict(zip(stream.ids, stream.truth, strict=True))
    # Split one identity by hand into two automatic people, as early decisions can leave it.
    person = max(state.people, key=lambda p: len(state.people[p].members))
    members = sorted(state.people[person].members)
    assert len(members) >= 3
    from facefleet.worker.grouping.state import ClusterUpdate
    from facefleet.worker.grouping.state import assign as _assign
    from facefleet.worker.grouping.state import unassign as _unassign

    update = ClusterUpdate()
    split = state.next_person_id
    state.next_person_id += 1
    from facefleet.worker.grouping.state import Person

    state.people[split] = Person()
    for m in members[: len(members) // 2 - (len(members) % 2 == 0)]:
        _unassign(state, m, update)
        _assign(state, m, split, update)
    consolidate(state, PARAMS)
    labels = partition(state, stream.ids)
    identity = truth[state.face_ids[members[-1]]]
    together = {labels[i] for i, f in enumerate(stream.ids) if truth[f] == identity}
    assert together == {person}  # the larger part's id survives
    assert state.resolve(split) == person  # the retired id resolves to it
    assert split not in state.people


def test_assignment_maximises_total_overlap() -> None:
    from collections import Counter

    # Greedy would give group 0 -> person 1 (overlap 5) and leave group 1 with nothing (4 + 0);
    # the assignment gives 0 -> 2 and 1 -> 1 (4 + 4 = 8 > 5).
    overlap = Counter({(0, 1): 5, (0, 2): 4, (1, 1): 4})
    assert sorted(_assignment(overlap, ConsolidateParams())) == [(0, 2), (1, 1)]


def test_unassigned_faces_stay_unassigned_when_isolated() -> None:
    stream = make_stream(5, identities=2, noise=6, weak_share=0.0)
    state, _ = run(stream.faces)
    consolidate(state, PARAMS)
    noise = [f for f, t in zip(stream.ids, stream.truth, strict=True) if t == -1]
    assert all(state.person_of[state.ordinal_of[f]] == UNASSIGNED for f in noise)
    assert np.isfinite(state.faces.vectors).all()
