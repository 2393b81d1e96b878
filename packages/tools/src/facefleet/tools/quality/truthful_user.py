"""A truthful user answering the library's questions, in rounds, for `facefleet evaluate`.

From the consolidated library, a round takes the top questions (`ROUND` of them), answers each
as the truth says (a person is the identity most of its faces show), applies the answers
(`answers.apply_answer`: merges, moves, cannot-links) and asks again. The library is scored after
`BUDGETS` answers per 100 true people (10, 25, 50). The same budget is spent on the obvious
ranking for comparison (`centroid_ranking`: person pairs by centroid similarity and unassigned
faces by their nearest centroid, one list by similarity, answered the same way).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Collection, Hashable, Mapping, Sequence

import numpy as np

from facefleet.tools.quality.scores import GroupingScores, score
from facefleet.worker.grouping.answers import StaleQuestion, apply_answer
from facefleet.worker.grouping.edits import are_apart
from facefleet.worker.grouping.state import IGNORED, UNASSIGNED, UserClusterState, partition
from facefleet.worker.grouping.suggest import FACE, PEOPLE, PeopleView, Question, suggest

BUDGETS = (10, 25, 50)  # answers per 100 true people
ROUND = 5  # answers per round before the questions are asked again

Ranker = Callable[[UserClusterState, Collection[str]], list[Question]]


def truthful(state: UserClusterState, question: Question, truth: Mapping[str, Hashable]) -> str:
    """What a user who knows everyone answers: "same" or "different"."""

    def identity(person: int) -> Hashable:
        members = state.people[state.resolve(person)].members
        counts = Counter(truth[state.face_ids[m]] for m in members)
        return min(counts.items(), key=lambda item: (-item[1], str(item[0])))[0]

    if question.kind == PEOPLE:
        same = identity(question.person) == identity(int(question.other or 0))
    else:
        same = truth[str(question.face_id)] == identity(question.person)
    return "same" if same else "different"


def centroid_ranking(state: UserClusterState, answered: Collection[str]) -> list[Question]:
    """The obvious ranking: person pairs by centroid similarity, unassigned faces by their
    nearest centroid, merged into one list by similarity (answered and barred ones left out)."""
    view = PeopleView.of(state)
    if len(view.ids) < 1:
        return []
    found: list[Question] = []
    sims, rows = view.nearest(view.centroids, 6)
    for i, j in zip(*np.nonzero(rows >= 0), strict=True):
        a, b = int(i), int(rows[i, j])
        if b > a and not are_apart(state, int(view.ids[a]), int(view.ids[b])):
            found.append(
                Question(PEOPLE, int(view.ids[a]), int(view.ids[b]), None, float(sims[i, j]))
            )
    person_of = np.asarray(state.person_of)
    tier = np.asarray(state.tier)
    waiting = np.flatnonzero((person_of == UNASSIGNED) & (tier != IGNORED))
    sims, rows = view.nearest(state.faces.vectors[waiting], 1)
    for r, face in enumerate(waiting.tolist()):
        if rows.shape[1] and rows[r, 0] >= 0:
            person = int(view.ids[rows[r, 0]])
            if person not in state.not_in.get(face, ()):
                found.append(Question(FACE, person, None, state.face_ids[face], float(sims[r, 0])))
    found.sort(key=lambda q: (-q.likelihood, q.key))
    return [q for q in found if q.key not in answered]


def facefleet_ranking(state: UserClusterState, answered: Collection[str]) -> list[Question]:
    return suggest(state, answered=answered)


def answer_rounds(
    state: UserClusterState,
    truth: Mapping[str, Hashable],
    budgets: Sequence[int],
    ranker: Ranker,
) -> dict[int, list[int | None]]:
    """Answer truthfully in rounds; the labelling (by `truth`'s face order) at each budget.

    `state` is changed in place. A round stops early when no question is left."""
    face_ids = list(truth)
    answered: set[str] = set()
    snapshots: dict[int, list[int | None]] = {}
    done = 0
    for budget in sorted(budgets):
        while done < budget:
            questions = ranker(state, answered)[: min(ROUND, budget - done)]
            if not questions:
                break
            for question in questions:
                answered.add(question.key)
                try:  # an earlier answer of the round may have settled it: not counted
                    apply_answer(state, question, truthful(state, question, truth))
                except StaleQuestion:
                    continue
                done += 1
        snapshots[budget] = partition(state, face_ids)
    return snapshots


def scores_after_answers(
    state: UserClusterState,
    truth: Mapping[str, Hashable],
    photo_ids: Sequence[str],
    ranker: Ranker,
) -> dict[int, GroupingScores]:
    """Scores after each of `BUDGETS` answers per 100 true people (`state` is not changed)."""
    import copy

    people = len(set(truth.values()))
    per_budget = {k: max(1, round(k * people / 100)) for k in BUDGETS}
    trial = copy.deepcopy(state)
    snapshots = answer_rounds(trial, truth, sorted(set(per_budget.values())), ranker)
    labels = list(truth.values())
    return {k: score(labels, snapshots[n], photo_ids) for k, n in per_budget.items()}
