"""Consolidation: re-cluster a user's whole library in batch and map the result onto the people
the user already has, so early incremental decisions are revisited without renaming anyone.

    update = consolidate(state, params)   # pure: updates `state` in place, returns the diff

Steps (all over plain data; the service runs it under the user's lease, see `corrections`):

1. The trusted kNN graph (`batch_partition.knn_graph`): every usable face's top-`k` neighbours
   by cosine similarity, an edge kept only where the pair clears both faces' trust radius
   (`state.trust_radius`, from the raw embedding norm, less `radius_slack`) and `edge_sim`,
   and the faces are of different photos. Nodes are numbered in face-id order, never arrival
   order, so the partition depends on the library alone (exactly below EXACT_GRAPH_BELOW faces;
   above it the user's IVF index answers the searches, see `full_partition`).
2. The batch partition (`batch_partition.batch_labels`): Infomap on that graph (see
   `batch_partition.BATCH_METHOD` for why, with the figures).
3. Constraints: faces the user pinned (moved, or confirmed by a merge or an answer), and the
   members of named people and of people the user said differ from another (`apart`), are
   anchored: they stay where they are (so those people never merge or lose faces
   automatically). Each batch cluster's other faces form a group. Two faces of one photo never
   share a person (a fixed face stays, else the closest to the person's centre). A face the user
   said is not a person never lands in it. A group of one face leaves the face unassigned.
   Precision (`batch_partition.trusted_core`): a face keeps its batch cluster only when it is a
   trusted pair with enough of the cluster's other faces; otherwise the pass leaves it out, and
   the move is left to a question for the user (`suggest`).
4. Ids (`_assignment`): each group takes the old person id it overlaps most (its faces' current
   people, plus the anchored faces in its batch cluster), solved as an assignment problem
   (Hungarian, per connected block of the overlap graph), so an unchanged person keeps its id
   and a group holding a named person's anchors joins that person. When several old people end
   in one group, the one that keeps its id has the largest overlap (the larger, or the named one
   through its anchors), and the others are retired into it (`merged_into`: their ids keep
   resolving). Groups with no old person get fresh ids (a monotonic counter: a retired id is
   never reused).

Guarantees (property-tested): named people keep their name and their pinned faces; pins and
"not this person" constraints are never undone; no retired id is reused; a consolidation of a
consolidated library changes nothing; without user constraints the partition does not depend on
the arrival order, so it equals a full re-cluster of the same library.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence

import numpy as np

from facefleet.worker.grouping.batch_partition import (
    ConsolidateParams,
    full_partition,
    trusted_core,
)
from facefleet.worker.grouping.index import FaceIndex
from facefleet.worker.grouping.state import (
    UNASSIGNED,
    ClusterParams,
    ClusterUpdate,
    FaceInput,
    Person,
    UserClusterState,
)

# -- constraints --------------------------------------------------------------------------------


def _anchors(state: UserClusterState) -> dict[int, int]:
    """Face ordinal -> person it is anchored to: pinned faces, and members of named people and
    of people the user said differ from another (so the two never become one)."""
    anchored: dict[int, int] = {}
    separated = {state.resolve(p) for pair in state.apart for p in pair}
    for person_id, record in state.people.items():
        if record.name is not None or person_id in separated:
            for face in record.members:
                anchored[face] = person_id
    for face in state.pinned:
        person = state.person_of[face]
        if person != UNASSIGNED:
            anchored[face] = person
    return anchored


def _one_face_per_photo(
    state: UserClusterState, members: list[int], fixed: set[int]
) -> tuple[list[int], list[int]]:
    """(kept, dropped): per photo the fixed face, else the one closest to the group's centre."""
    photos = state.photo_ids
    counts = Counter(photos[m] for m in members)
    if all(c == 1 for c in counts.values()):
        return members, []
    vectors = state.faces.vectors
    centre = vectors[members].sum(axis=0)
    closeness = dict(zip(members, (vectors[members] @ centre).tolist(), strict=True))
    best: dict[str, int] = {}
    for m in members:
        photo = photos[m]
        if counts[photo] == 1:
            continue
        current = best.get(photo)
        key = (m in fixed, closeness[m], -m)
        if current is None or key > (current in fixed, closeness[current], -current):
            best[photo] = m
    kept = [m for m in members if counts[photos[m]] == 1 or best[photos[m]] == m]
    return kept, [m for m in members if m not in set(kept)]


# -- the pass -----------------------------------------------------------------------------------


def consolidate(
    state: UserClusterState,
    params: ClusterParams | None = None,
    consolidate_params: ConsolidateParams | None = None,
    labels: np.ndarray | None = None,
    index: FaceIndex | None = None,
) -> ClusterUpdate:
    """Re-cluster the library in batch and map it onto the existing people (see the module).

    `labels` (the batch partition by ordinal) may be given when already computed. Waiting
    neighbour lists are cleared: the caller rebuilds them from the index (`store`).
    """
    params = params or ClusterParams()
    consolidate_params = consolidate_params or ConsolidateParams()
    if labels is None:
        labels = full_partition(state, params, consolidate_params, index)
    labels = trusted_core(state, labels, params, consolidate_params)
    # The mapping reads the current people (overlaps, barred faces, the photo rule), so one pass
    # can leave a labelling that a second would still move. Passes repeat, reusing the batch
    # partition (the costly part), until nothing moves: a consolidated library is a fixed point.
    total = _map_onto_people(state, params, consolidate_params, labels)
    for _ in range(MAX_MAPPING_PASSES - 1):
        again = _map_onto_people(state, params, consolidate_params, labels)
        if not (again.assignments or again.created or again.removed or again.changed):
            break
        total = _combined(total, again)
    return total


MAX_MAPPING_PASSES = 6


def _combined(first: ClusterUpdate, then: ClusterUpdate) -> ClusterUpdate:
    """Two consecutive updates as one (a person created and then dissolved never was)."""
    transient = set(first.created) & set(then.removed)
    created = [p for p in first.created + then.created if p not in transient]
    removed = [p for p in first.removed + then.removed if p not in transient]
    gone = set(created) | set(removed)
    return ClusterUpdate(
        added=first.added + then.added,
        redelivered=first.redelivered + then.redelivered,
        assignments={**first.assignments, **then.assignments},
        created=created,
        changed=(first.changed | then.changed) - gone,
        removed=removed,
    )


def _map_onto_people(
    state: UserClusterState,
    params: ClusterParams,
    consolidate_params: ConsolidateParams,
    labels: np.ndarray,
) -> ClusterUpdate:
    """One pass: the batch clusters onto the existing person ids, constraints applied."""
    anchored = _anchors(state)
    # A batch cluster's free faces (not anchored) form one group; its anchored faces vote for
    # their person when the group's id is chosen, so a group holding a named person's faces
    # joins that person, and a stray pin does not hijack a cluster.
    free: dict[int, list[int]] = {}
    anchor_votes: dict[int, Counter[int]] = {}
    for face, label in enumerate(labels.tolist()):
        if label < 0:
            continue
        person = anchored.get(face)
        if person is None:
            free.setdefault(label, []).append(face)
        else:
            anchor_votes.setdefault(label, Counter())[person] += 1
    groups = [(label, members) for label, members in sorted(free.items())]
    overlap: dict[tuple[int, int], float] = {}
    for g, (label, members) in enumerate(groups):
        # A lone face can only join anchors; its current person must not sway the matching
        # (it would give a different answer once the face has been unassigned: not idempotent).
        if len(members) >= 2:
            for m in members:
                old = state.person_of[m]
                if old != UNASSIGNED:
                    overlap[(g, old)] = overlap.get((g, old), 0.0) + 1.0
        for person, count in anchor_votes.get(label, Counter()).items():
            # On a tie, the user's anchors win.
            overlap[(g, person)] = overlap.get((g, person), 0.0) + count + 0.5
    mapped = dict(_assignment(overlap, consolidate_params))
    pinned = {f for f in state.pinned if state.person_of[f] != UNASSIGNED}
    new_person = [UNASSIGNED] * len(state.face_ids)
    for face, person in anchored.items():
        new_person[face] = person
    for g, (label, members) in enumerate(groups):
        person = mapped.get(g)
        votes = anchor_votes.get(label, Counter())
        if person is not None:
            barred = [m for m in members if person in state.not_in.get(m, ()) and m not in pinned]
            rest = [m for m in members if m not in set(barred)]
            if len(rest) >= 2 or votes[person] > 0:
                members = rest  # the user said these faces are not that person
            else:
                person = None  # what is left is no person: the group is a new one instead
        if len(members) < 2 and (person is None or votes[person] == 0):
            continue  # a lone face is no person
        # New people get placeholder ids (below UNASSIGNED) until the rules below have run,
        # so no id is spent on a group they dissolve.
        target = person if person is not None else UNASSIGNED - 1 - g
        for m in members:
            new_person[m] = target
    _one_per_photo(state, new_person, set(anchored))
    # A person the pass retires lives on as the person that takes most of its faces (its id
    # resolves there): a face the user said is not it must not land there either.
    heir = _heirs(state, new_person)
    for face, barred_people in state.not_in.items():
        barred_now = barred_people | {heir[p] for p in barred_people if p in heir}
        if new_person[face] in barred_now and face not in pinned:
            new_person[face] = UNASSIGNED
    _drop_lone_people(new_person, set(anchored.values()))
    fresh: dict[int, int] = {}
    for placeholder in sorted({p for p in new_person if p < UNASSIGNED}, reverse=True):
        fresh[placeholder] = state.next_person_id
        state.next_person_id += 1
    new_person = [fresh.get(p, p) for p in new_person]
    return _apply(state, new_person)


def _heirs(state: UserClusterState, new_person: list[int]) -> dict[int, int]:
    """Old person -> the new person it would be retired into (`_apply`'s rule), for the people
    that do not survive `new_person`."""
    survivors = set(new_person)
    where: dict[int, Counter[int]] = {}
    for old, new in zip(state.person_of, new_person, strict=True):
        if old != UNASSIGNED and new != UNASSIGNED and old not in survivors:
            where.setdefault(old, Counter())[new] += 1
    return {
        old: min(went.items(), key=lambda item: (-item[1], item[0]))[0]
        for old, went in where.items()
    }


def _one_per_photo(state: UserClusterState, new_person: list[int], fixed: set[int]) -> None:
    """Unassign all but one face of a photo per person (a fixed face first, then the closest to
    the person's centre); faces the user placed are never removed."""
    by_person: dict[int, list[int]] = {}
    for face, person in enumerate(new_person):
        if person != UNASSIGNED:
            by_person.setdefault(person, []).append(face)
    for members in by_person.values():
        _, dropped = _one_face_per_photo(state, members, fixed)
        for face in dropped:
            if face not in state.pinned:
                new_person[face] = UNASSIGNED


def _drop_lone_people(new_person: list[int], anchored_people: set[int]) -> None:
    """An automatic person left with one face (after the photo rule) is no person."""
    counts = Counter(p for p in new_person if p != UNASSIGNED)
    for face, person in enumerate(new_person):
        if person != UNASSIGNED and counts[person] < 2 and person not in anchored_people:
            new_person[face] = UNASSIGNED


def _assignment(
    overlap: Mapping[tuple[int, int], float], params: ConsolidateParams
) -> list[tuple[int, int]]:
    """Max-total-overlap one-to-one matching of groups to old people, per connected block."""
    from scipy.optimize import linear_sum_assignment
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    if not overlap:
        return []
    groups = sorted({g for g, _ in overlap})
    olds = sorted({o for _, o in overlap})
    gi = {g: i for i, g in enumerate(groups)}
    oi = {o: i for i, o in enumerate(olds)}
    rows = np.asarray([gi[g] for g, _ in overlap])
    cols = np.asarray([oi[o] for _, o in overlap]) + len(groups)
    size = len(groups) + len(olds)
    adjacency = coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(size, size))
    _, component = connected_components(adjacency, directed=False)
    blocks: dict[int, list[tuple[int, int, float]]] = {}
    for (g, o), count in overlap.items():
        blocks.setdefault(int(component[gi[g]]), []).append((g, o, count))
    matched: list[tuple[int, int]] = []
    for block in blocks.values():
        if len(block) == 1:
            matched.append((block[0][0], block[0][1]))
            continue
        bg = sorted({g for g, _, _ in block})
        bo = sorted({o for _, o, _ in block})
        if len(bg) * len(bo) > params.hungarian_cells:
            matched.extend(_greedy(block))
            continue
        weights = np.zeros((len(bg), len(bo)))
        bgi = {g: i for i, g in enumerate(bg)}
        boi = {o: i for i, o in enumerate(bo)}
        for g, o, count in block:
            # Ties go to the lower (older) person id: deterministic, and stable on a rerun.
            weights[bgi[g], boi[o]] = count - 1e-9 * boi[o]
        r, c = linear_sum_assignment(weights, maximize=True)
        matched.extend((bg[i], bo[j]) for i, j in zip(r, c, strict=True) if weights[i, j] > 0)
    return matched


def _greedy(block: list[tuple[int, int, float]]) -> list[tuple[int, int]]:
    used_g: set[int] = set()
    used_o: set[int] = set()
    out = []
    for g, o, _ in sorted(block, key=lambda b: (-b[2], b[1], b[0])):
        if g not in used_g and o not in used_o:
            used_g.add(g)
            used_o.add(o)
            out.append((g, o))
    return out


def _apply(state: UserClusterState, new_person: list[int]) -> ClusterUpdate:
    """Write the new labelling into `state`; retire old people into where their faces went."""
    update = ClusterUpdate()
    old_person = list(state.person_of)
    names = {p: r.name for p, r in state.people.items()}
    survivors = set(new_person) - {UNASSIGNED}
    where: dict[int, Counter[int]] = {}
    for face, (old, new) in enumerate(zip(old_person, new_person, strict=True)):
        if old != new:
            update.assignments[state.face_ids[face]] = None if new == UNASSIGNED else new
        if old != UNASSIGNED and new != UNASSIGNED:
            where.setdefault(old, Counter())[new] += 1
    people: dict[int, Person] = {}
    for face, person in enumerate(new_person):
        if person == UNASSIGNED:
            continue
        record = people.get(person)
        if record is None:
            record = people[person] = Person(name=names.get(person))
        record.members.add(face)
        photo = state.photo_ids[face]
        record.photos[photo] = record.photos.get(photo, 0) + 1
    for person, name in names.items():
        if name is not None and person not in people:
            people[person] = Person(name=name)  # a named person is never dropped
    for person in sorted(set(state.people) | survivors):
        before = state.people.get(person)
        after = people.get(person)
        if after is None:
            update.removed.append(person)
            went = where.get(person)
            if went:
                target, _ = min(went.items(), key=lambda item: (-item[1], item[0]))
                state.merged_into[person] = target
                for barred in state.not_in.values():  # "not this person" follows the id
                    if person in barred:
                        barred.discard(person)
                        barred.add(target)
        elif before is None:
            update.created.append(person)
        elif before.members != after.members:
            update.changed.add(person)
    state.people = people
    state.faces.person_of[:] = new_person
    state.waiting.clear()
    return update


def full_recluster(
    faces: Sequence[FaceInput],
    params: ClusterParams | None = None,
    consolidate_params: ConsolidateParams | None = None,
) -> tuple[UserClusterState, FaceIndex]:
    """A state for `faces` clustered by the batch pass alone (no incremental history), and the
    user's index for it (built first: past EXACT_GRAPH_BELOW faces the pass searches it)."""
    params = params or ClusterParams()
    state = UserClusterState()
    for face in sorted(faces, key=lambda f: f.face_id):
        state.add_face(face, params)
    if not len(state.faces):
        return state, FaceIndex(1)
    ordinals = np.arange(len(state.faces), dtype=np.int64)
    index = FaceIndex.build(ordinals, state.faces.vectors)
    consolidate(state, params, consolidate_params, index=index)
    return state, index
