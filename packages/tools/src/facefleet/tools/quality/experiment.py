"""One condition's experiment: FaceFleet (incremental, then consolidated) against the baselines
on the same embeddings, with the agreement, named-people and truthful-user checks.

`evaluate_condition` returns a `ConditionResult`; `report` formats it.
"""

from __future__ import annotations

import time
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from facefleet.tools.quality.baselines import NeighbourGraph, as_labels, run_baselines
from facefleet.tools.quality.embeddings_cache import ConditionData
from facefleet.tools.quality.scores import GroupingScores, ari, score
from facefleet.tools.quality.truthful_user import (
    centroid_ranking,
    facefleet_ranking,
    scores_after_answers,
)
from facefleet.worker.grouping.consolidate import consolidate
from facefleet.worker.grouping.edits import move_face, name_person
from facefleet.worker.grouping.index import FaceIndex
from facefleet.worker.grouping.placement import add_faces
from facefleet.worker.grouping.state import ClusterParams, FaceInput, UserClusterState, partition

BATCH_FACES = 32  # faces per grouping call: about one SQS message batch
FACEFLEET = "FaceFleet consolidated"
INCREMENTAL = "FaceFleet incremental"
NAMED_PEOPLE = 10  # the largest people are named (and one face each pinned) before consolidating


def arrival_order(data: ConditionData, seed: int) -> list[int]:
    """Faces in a seeded photo order (the faces of one photo arrive together, as detected)."""
    photos = sorted(set(data.photo_ids))
    rank = {p: r for r, p in enumerate(np.random.default_rng(seed).permutation(len(photos)))}
    position = {photo: rank[i] for i, photo in enumerate(photos)}
    return sorted(range(len(data.truth)), key=lambda i: (position[data.photo_ids[i]], i))


def run_facefleet(
    faces: Sequence[FaceInput],
    order: Sequence[int],
    params: ClusterParams,
) -> UserClusterState:
    state = UserClusterState()
    index = FaceIndex(len(faces[0].embedding))
    stream = [faces[i] for i in order]
    for start in range(0, len(stream), BATCH_FACES):
        add_faces(state, stream[start : start + BATCH_FACES], index, params)
    return state


@dataclass
class ConditionResult:
    name: str
    faces: int
    missed: int
    rows: dict[str, GroupingScores]
    settings: dict[str, dict[str, Any]]
    # Agreement: incremental vs the full batch re-cluster, and two arrival orders, before and
    # after each order's state is consolidated.
    incremental_vs_full: float
    order_ari: float
    consolidated_vs_full: float
    consolidated_order_ari: float
    named: int
    named_renamed: int
    named_lost: int
    seconds: float
    # A truthful user's answers (answers per 100 true people -> scores), FaceFleet's questions
    # and the centroid ranking's, from the consolidated library (`truthful_user`).
    answers: dict[int, GroupingScores] = field(default_factory=dict)
    baseline_answers: dict[int, GroupingScores] = field(default_factory=dict)


def _copy(state: UserClusterState) -> UserClusterState:
    import copy

    return copy.deepcopy(state)


def consolidated(
    state: UserClusterState, params: ClusterParams, method: str | None = None
) -> UserClusterState:
    """A consolidated copy of `state` (with a lab `method`'s partition when given)."""
    out = _copy(state)
    labels = None
    if method is not None and method != "infomap":
        from facefleet.tools.quality.batch_methods import method_labels

        labels = method_labels(out, method, params)
    consolidate(out, params, labels=labels)
    return out


def named_check(state: UserClusterState, params: ClusterParams) -> tuple[int, int, int]:
    """Name the largest people and pin one face of each, consolidate: (named, renamed, lost).

    Renamed: the id no longer carries its name. Lost: the person is empty or lost a pinned face.
    """
    trial = _copy(state)
    largest = sorted(trial.people, key=lambda p: (-len(trial.people[p].members), p))
    named = largest[:NAMED_PEOPLE]
    pins = {}
    for person in named:
        name_person(trial, person, f"person-{person}")
        face = min(trial.people[person].members)
        move_face(trial, trial.face_ids[face], person)
        pins[person] = face
    consolidate(trial, params)
    renamed = sum(
        1 for p in named if p not in trial.people or trial.people[p].name != f"person-{p}"
    )
    lost = sum(
        1
        for p in named
        if p not in trial.people
        or not trial.people[p].members
        or pins[p] not in trial.people[p].members
    )
    return len(named), renamed, lost


def evaluate_condition(
    name: str,
    data: ConditionData,
    seed: int,
    params: ClusterParams,
    dev: dict[str, dict[str, Any]] | None = None,
    method: str | None = None,
) -> ConditionResult:
    started = time.monotonic()
    faces = data.faces()
    ids = [face.face_id for face in faces]
    truth: list[Hashable] = list(data.truth)
    order = arrival_order(data, seed)
    state = run_facefleet(faces, order, params)
    other = run_facefleet(faces, arrival_order(data, seed + 1), params)
    labels = partition(state, ids)
    after = consolidated(state, params, method)
    after_other = consolidated(other, params, method)
    blank = UserClusterState()  # the same library with no incremental history
    for face in sorted(faces, key=lambda f: f.face_id):
        blank.add_face(face, params)
    full = consolidated(blank, params, method)
    rows = {
        FACEFLEET: score(truth, partition(after, ids), data.photo_ids),
        INCREMENTAL: score(truth, labels, data.photo_ids),
    }
    graph = NeighbourGraph.build(data.embeddings)
    settings: dict[str, dict[str, Any]] = {FACEFLEET: {}, INCREMENTAL: {}}
    for tuned in run_baselines(graph, order, truth, data.det_score.tolist(), dev).values():
        rows[tuned.name] = score(truth, as_labels(tuned.labels), data.photo_ids)
        settings[tuned.name] = tuned.setting
    named, renamed, lost = named_check(state, params)
    truth_of = dict(zip(ids, data.truth, strict=True))
    answers = scores_after_answers(after, truth_of, data.photo_ids, facefleet_ranking)
    baseline_answers = scores_after_answers(after, truth_of, data.photo_ids, centroid_ranking)
    return ConditionResult(
        name,
        len(faces),
        data.missed,
        rows,
        settings,
        ari(labels, partition(full, ids)),
        ari(labels, partition(other, ids)),
        ari(partition(after, ids), partition(full, ids)),
        ari(partition(after, ids), partition(after_other, ids)),
        named,
        renamed,
        lost,
        time.monotonic() - started,
        answers,
        baseline_answers,
    )
