"""The incremental, density-based clustering step for one user's faces, over plain data.

The service layer loads a user's `UserClusterState` from MongoDB, keeps (or rebuilds) the user's
`FaceIndex`, and calls::

    update = add_faces(state, new_faces, index, params)   # -> ClusterUpdate

`add_faces` updates `state` and `index` in place (a 1M-face user cannot be copied per message) and
returns what changed, so only that is written back. The state model is `state`; the user's
corrections, functions of the same shape, are `edits`.

How a face is placed (each new face, in arrival order; a batch behaves exactly as one at a time):

1. Its neighbours are the existing faces within cosine similarity `link_sim` (top-`k` search),
   kept only where the pair clears both faces' trust radius (`trust_radius`: `join_sim` for
   trusted faces, tightening by `quality_slope` per unit of trust below `full_quality`; trust is
   the recogniser's raw embedding norm mapped to [0, 1], see `face_trust`), less
   `support_slack` for members that only back a join.
2. Join: the people of its trusted (strong-tier) assigned neighbours are candidates, minus any
   person that already holds a face of the same photo (cannot-link) or that the user said this
   face is not. The best-supported candidate is joined if its closest member is at least
   `join_sim` away (`weak_join_sim` for a weak face, which must be confidently close).
3. Seed: otherwise a strong face with at least `min_seed - 1` strong unassigned neighbours within
   `seed_sim` (one per photo) starts a new person with them.
4. Wait: otherwise it stays unassigned and keeps its neighbour list. A waiting face is looked at
   again only when a new face lands within `link_sim` of it (its list gains that face), and the
   re-examination cascades through faces that become assigned; nothing rescans all waiting faces.

Tiers come from trust, face size and detection score: strong faces may seed and count as
evidence, weak faces may only join (with the stricter `weak_join_sim`), and faces below the join
floor are kept but never assigned automatically. Tiny, blurred faces give embeddings that sit
close to each other whoever they show; letting them seed or vouch for others is what makes the
usual density rules collapse on group shots.

Guarantees: a new face never renames, dissolves or moves an existing person's faces (person ids
are a monotonic counter); two faces of one photo are never put together automatically; user
constraints are never undone; the result is a function of the arrival stream only; a face already
present (redelivery) changes nothing. Embeddings must be L2-normalised float32 of any one dimension.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

import numpy as np

from facefleet.worker.grouping.index import FaceIndex, threads_for
from facefleet.worker.grouping.state import (
    IGNORED,
    STRONG,
    UNASSIGNED,
    ClusterParams,
    ClusterUpdate,
    FaceInput,
    Person,
    UserClusterState,
    assign,
    trust_radius,
)


def add_faces(
    state: UserClusterState,
    faces: Sequence[FaceInput],
    index: FaceIndex,
    params: ClusterParams | None = None,
) -> ClusterUpdate:
    """Place `faces` in arrival order; faces already in `state` are skipped (redelivery)."""
    params = params or ClusterParams()
    update = ClusterUpdate()
    fresh: list[FaceInput] = []
    seen: set[str] = set()
    for face in faces:
        if face.face_id in state.ordinal_of or face.face_id in seen:
            update.redelivered.append(face.face_id)
        else:
            seen.add(face.face_id)
            fresh.append(face)
    with threads_for(len(fresh)):
        for start in range(0, len(fresh), params.chunk):
            _add_chunk(state, fresh[start : start + params.chunk], index, params, update)
    return update


def _embeddings(faces: Sequence[FaceInput], dim: int) -> np.ndarray:
    matrix = np.stack([np.asarray(face.embedding, dtype=np.float32) for face in faces])
    if matrix.shape[1] != dim:
        raise ValueError(
            f"face {faces[0].face_id}: {matrix.shape[1]}-d embedding, the user's index is {dim}-d"
        )
    norms = np.linalg.norm(matrix, axis=1)
    bad = np.flatnonzero(np.abs(norms - 1.0) > 1e-2)
    if len(bad):
        raise ValueError(
            f"face {faces[int(bad[0])].face_id}: embedding is not L2-normalised "
            f"(norm {norms[bad[0]]:.3f})"
        )
    return matrix


def _add_chunk(
    state: UserClusterState,
    faces: Sequence[FaceInput],
    index: FaceIndex,
    params: ClusterParams,
    update: ClusterUpdate,
) -> None:
    """One index search for the whole chunk; faces are then placed one at a time, in order.

    Earlier faces of the same chunk are neighbours too (a chunk x chunk product), exactly as if
    the faces were added one at a time; only the hits above `link_sim` reach Python.
    """
    matrix = _embeddings(faces, index.dim)
    base = len(state.face_ids)
    ordinals = np.arange(base, base + len(faces), dtype=np.int64)
    sims, ids = index.search_and_add(ordinals, matrix, params.k)
    for face in faces:
        _register(state, face, params, update)
    found = (sims >= params.link_sim) & (ids >= 0)
    rows, cols = np.nonzero(found)
    hit_ids, hit_sims = ids[rows, cols].tolist(), sims[rows, cols].tolist()
    hits_of: list[list[tuple[int, float]]] = [[] for _ in faces]
    for r, i, s in zip(rows.tolist(), hit_ids, hit_sims, strict=True):
        hits_of[r].append((i, s))
    if len(faces) > 1:
        intra = matrix @ matrix.T
        rows, cols = np.nonzero(np.tril(intra >= params.link_sim, k=-1))
        if len(rows):
            pairs = zip(rows.tolist(), cols.tolist(), intra[rows, cols].tolist(), strict=True)
            for r, c, s in pairs:
                hits_of[r].append((base + c, s))
            for r in set(rows.tolist()):
                hits_of[r] = sorted(hits_of[r], key=_by_sim)[: params.k]
    for j in range(len(faces)):
        _place(state, base + j, hits_of[j], params, update)


def _by_sim(hit: tuple[int, float]) -> tuple[float, int]:
    return (-hit[1], hit[0])


def _register(
    state: UserClusterState, face: FaceInput, params: ClusterParams, update: ClusterUpdate
) -> None:
    state.add_face(face, params)
    update.added.append(face.face_id)
    update.assignments[face.face_id] = None


def _place(
    state: UserClusterState,
    face: int,
    hits: list[tuple[int, float]],
    params: ClusterParams,
    update: ClusterUpdate,
) -> None:
    """Decide a new face, then re-examine the waiting faces it landed near.

    Only trusted pairs (clearing both faces' radii) are kept: the rest never change anyone's
    decision. Only a strong new face is added to its neighbours' lists, since only it can vouch
    for or seed them.
    """
    tier = state.tier[face]
    if tier == IGNORED:
        return
    quality, tiers = state.trust, state.tier
    mine = trust_radius(quality[face], params) - params.support_slack
    hits = [
        (other, sim)
        for other, sim in hits
        if tiers[other] != IGNORED
        and sim >= max(mine, trust_radius(quality[other], params) - params.support_slack)
    ]
    strong = tier == STRONG
    if strong:
        cap = params.k
        for other, sim in hits:
            waiting = state.waiting.get(other)
            if waiting is not None:
                waiting.append((face, sim))
                if len(waiting) > cap:
                    waiting.sort(key=_by_sim)
                    del waiting[cap:]
    state.waiting[face] = hits
    assigned = _decide(state, face, params, update)
    if assigned or (strong and hits):
        _reexamine(state, assigned or [(face, hits)], params, update)


def _reexamine(
    state: UserClusterState,
    sources: list[tuple[int, list[tuple[int, float]]]],
    params: ClusterParams,
    update: ClusterUpdate,
) -> None:
    """Re-decide waiting faces near `sources`, cascading through faces that get assigned.

    `sources` (face, its neighbours) just arrived or were just assigned: the only events that
    can change a waiting neighbour's decision.
    """
    queue = deque(sources)
    while queue:
        _, hits = queue.popleft()
        for other, _ in hits:
            if state.person_of[other] == UNASSIGNED and other in state.waiting:
                queue.extend(_decide(state, other, params, update))


def _decide(
    state: UserClusterState, face: int, params: ClusterParams, update: ClusterUpdate
) -> list[tuple[int, list[tuple[int, float]]]]:
    """Join or seed for one waiting face; returns the faces assigned, with their neighbours."""
    tier = state.tier[face]
    if tier == IGNORED or state.person_of[face] != UNASSIGNED:
        return []
    hits = state.waiting.get(face, [])
    person = _best_person(state, face, hits, params)
    if person is not None:
        assign(state, face, person, update)
        return [(face, hits)]
    if tier != STRONG:
        return []
    partners = _seed_partners(state, face, hits, params)
    if 1 + len(partners) < params.min_seed:
        return []
    person = state.next_person_id
    state.next_person_id += 1
    state.people[person] = Person()
    update.created.append(person)
    assigned = []
    for member in [face, *partners]:
        assigned.append((member, state.waiting.get(member, [])))
        assign(state, member, person, update)
    return assigned


def _best_person(
    state: UserClusterState, face: int, hits: list[tuple[int, float]], params: ClusterParams
) -> int | None:
    tier, quality = state.tier, state.trust
    need = params.join_sim if tier[face] == STRONG else params.weak_join_sim
    mine = trust_radius(quality[face], params)
    slack = params.support_slack
    photo = state.photo_ids[face]
    barred = state.not_in.get(face, ())
    support: dict[int, list[float]] = {}  # person -> [count, sum of sims, max sim of trusted]
    for other, sim in hits:
        person = state.person_of[other]
        if person == UNASSIGNED or tier[other] != STRONG:
            continue
        radius = max(mine, trust_radius(quality[other], params))
        if sim < radius - slack:
            continue
        trusted = sim if sim >= radius else 0.0
        entry = support.get(person)
        if entry is None:
            if person in barred or photo in state.people[person].photos:
                continue
            support[person] = [1.0, sim, trusted]
        else:
            entry[0] += 1
            entry[1] += sim
            entry[2] = max(entry[2], trusted)
    best: int | None = None
    best_key: tuple[float, float, int] | None = None
    for person, (count, total, top) in support.items():
        if top < need:
            continue
        backing = min(params.join_support, len(state.people[person].members))
        if top < params.sure_join_sim and count < backing:
            continue
        key = (count, total, -person)
        if best_key is None or key > best_key:
            best, best_key = person, key
    return best


def _seed_partners(
    state: UserClusterState, face: int, hits: list[tuple[int, float]], params: ClusterParams
) -> list[int]:
    tier, quality = state.tier, state.trust
    floor = max(params.seed_sim, trust_radius(quality[face], params))
    photos = {state.photo_ids[face]}
    partners: list[int] = []
    for other, sim in sorted(hits, key=_by_sim):
        if sim < floor:
            break
        if state.person_of[other] != UNASSIGNED or tier[other] != STRONG:
            continue
        if sim < trust_radius(quality[other], params):
            continue
        if state.photo_ids[other] in photos:
            continue
        photos.add(state.photo_ids[other])
        partners.append(other)
    return partners
