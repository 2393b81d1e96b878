"""The incremental, density-based clustering step for one user's faces, over plain data.

The service layer loads a user's `UserClusterState` from MongoDB, keeps (or rebuilds) the user's
`FaceIndex`, and calls::

    update = add_faces(state, new_faces, index, params)   # -> ClusterUpdate

`add_faces` updates `state` and `index` in place (a 1M-face user cannot be copied per message) and
returns what changed, so only that is written back. User corrections are functions of the same
shape: `merge_people`, `move_face`, `reject_face` ("not this person"), `name_person`.

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
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from facefleet.worker.grouping.index import FaceIndex, threads_for

UNASSIGNED = -1

# Tiers of trust in a face's embedding.
IGNORED, WEAK, STRONG = 0, 1, 2


@dataclass(frozen=True)
class ClusterParams:
    """One parameter set for every user and condition (thresholds are cosine similarities)."""

    k: int = 32
    link_sim: float = 0.35
    # The trust radius: a full-quality face's pairs count from `join_sim`; below `full_quality`
    # the radius grows by `quality_slope` per unit of quality lost (see `trust_radius`).
    join_sim: float = 0.40
    full_quality: float = 0.55
    quality_slope: float = 3.0
    # Members backing a join may sit this much inside the trust radius (the closest may not).
    support_slack: float = 0.05
    # A join on one member's word needs `sure_join_sim`; below it, `join_support` members of the
    # person must be neighbours: one close pair between two people must not chain them together.
    sure_join_sim: float = 0.55
    join_support: int = 2
    weak_join_sim: float = 0.55
    seed_sim: float = 0.45
    min_seed: int = 2
    # The raw embedding norm mapped onto the trust scale: `norm_floor` -> 0, `norm_full` -> 1
    # (per recogniser; equal values: use the quality score instead). See `face_trust`. Chosen on
    # the developers' LFW split with the dev pack (raw norms 9-16 on degraded faces, 15-18 clean):
    # of (0, 25), (4, 20), (6, 18), (4, 20) gave the best mean of BCubed F1, pairwise F1 and ARI
    # after consolidation over the three conditions (degraded pairwise F1 0.42 -> 0.48 against
    # the quality score's mapping).
    norm_floor: float = 4.0
    norm_full: float = 20.0
    # Strong: may seed a person and vouch for joiners.
    strong_quality: float = 0.5
    strong_size_px: float = 30.0
    strong_det_score: float = 0.6
    # Weak: may join an existing person when confidently close; below this: never assigned.
    weak_quality: float = 0.2
    weak_size_px: float = 20.0
    weak_det_score: float = 0.4
    # Faces are searched and placed in chunks of this many (bounds the chunk x chunk matrix).
    chunk: int = 2048


@dataclass(frozen=True)
class FaceInput:
    """One detected face as the clustering step needs it."""

    face_id: str
    photo_id: str
    embedding: np.ndarray
    quality: float = 1.0
    size_px: float = 112.0
    det_score: float = 1.0
    norm: float | None = None  # the recogniser's raw embedding norm (None: not recorded)
    crop_key: str | None = None


@dataclass
class Person:
    members: set[int] = field(default_factory=set)
    photos: dict[str, int] = field(default_factory=dict)  # photo id -> faces of it held
    name: str | None = None


class FaceTable:
    """A user's faces, one row per ordinal (arrival position): the only per-face storage.

    Every column grows through `append` alone, so no two lists can drift out of step. The
    clustering columns are Python lists (the placement loop reads single cells, where a list is
    several times faster than a numpy array); embeddings are one growable float32 matrix (the
    consolidation pass and the people documents read them in bulk). `trust` is what the tiers
    and trust radii read: the recogniser's raw embedding norm mapped to [0, 1] when it was
    recorded (see `face_trust`), else the detector's quality score. `seq` is the stored arrival
    number (a rebuilt state replays ties in the same order); `crop_key` feeds covers.
    """

    def __init__(self) -> None:
        self.face_ids: list[str] = []
        self.photo_ids: list[str] = []
        self.quality: list[float] = []
        self.size_px: list[float] = []
        self.det_score: list[float] = []
        self.norm: list[float | None] = []
        self.trust: list[float] = []
        self.tier: list[int] = []
        self.person_of: list[int] = []
        self.crop_keys: list[str | None] = []
        self.seq: list[int] = []
        self._vectors = np.zeros((0, 0), dtype=np.float32)

    def __len__(self) -> int:
        return len(self.face_ids)

    def append(
        self,
        face: FaceInput,
        params: ClusterParams,
        *,
        person: int = UNASSIGNED,
        seq: int | None = None,
    ) -> int:
        """Add one face as the next ordinal (its tier and trust from `params`); returns it."""
        ordinal = len(self.face_ids)
        trust = face_trust(face, params)
        self.face_ids.append(face.face_id)
        self.photo_ids.append(face.photo_id)
        self.quality.append(float(face.quality))
        self.size_px.append(float(face.size_px))
        self.det_score.append(float(face.det_score))
        self.norm.append(None if face.norm is None else float(face.norm))
        self.trust.append(trust)
        self.tier.append(face_tier(trust, face.size_px, face.det_score, params))
        self.person_of.append(person)
        self.crop_keys.append(face.crop_key)
        self.seq.append(seq if seq is not None else (self.seq[-1] + 1 if self.seq else 0))
        self._store_vector(ordinal, face.embedding)
        return ordinal

    def _store_vector(self, ordinal: int, embedding: np.ndarray) -> None:
        vector = np.asarray(embedding, dtype=np.float32).reshape(-1)
        rows, dim = self._vectors.shape
        if dim != len(vector):
            if ordinal:
                raise ValueError(f"a {len(vector)}-d embedding in a table of {dim}-d ones")
            self._vectors = np.zeros((64, len(vector)), dtype=np.float32)
        elif ordinal >= rows:
            grown = np.zeros((max(64, 2 * rows), dim), dtype=np.float32)
            grown[:rows] = self._vectors
            self._vectors = grown
        self._vectors[ordinal] = vector

    @property
    def vectors(self) -> np.ndarray:
        """(faces, dim) embeddings by ordinal (a view: valid until the next append)."""
        return self._vectors[: len(self.face_ids)]

    @property
    def next_seq(self) -> int:
        return self.seq[-1] + 1 if self.seq else 0


@dataclass
class UserClusterState:
    """Everything the step knows about one user: the `FaceTable` by face ordinal, and people.

    The index stores embeddings under the same ordinals. `waiting` holds the neighbour lists
    (ordinal, similarity) of unassigned faces only; `not_in` maps a face ordinal to people the
    user said it is not; `pinned` are faces the user placed (confirmed); `merged_into` maps
    retired person ids to the person that absorbed them; `apart` holds the pairs of people
    (lower id first) the user said are different ("cannot-link": see `separate_people`).
    """

    faces: FaceTable = field(default_factory=FaceTable)
    people: dict[int, Person] = field(default_factory=dict)
    ordinal_of: dict[str, int] = field(default_factory=dict)
    waiting: dict[int, list[tuple[int, float]]] = field(default_factory=dict)
    not_in: dict[int, set[int]] = field(default_factory=dict)
    pinned: set[int] = field(default_factory=set)
    merged_into: dict[int, int] = field(default_factory=dict)
    apart: set[tuple[int, int]] = field(default_factory=set)
    next_person_id: int = 1

    # Column shortcuts (the lists themselves: writes go through the table's cells).
    @property
    def face_ids(self) -> list[str]:
        return self.faces.face_ids

    @property
    def photo_ids(self) -> list[str]:
        return self.faces.photo_ids

    @property
    def quality(self) -> list[float]:
        return self.faces.quality

    @property
    def trust(self) -> list[float]:
        return self.faces.trust

    @property
    def size_px(self) -> list[float]:
        return self.faces.size_px

    @property
    def det_score(self) -> list[float]:
        return self.faces.det_score

    @property
    def tier(self) -> list[int]:
        return self.faces.tier

    @property
    def person_of(self) -> list[int]:
        return self.faces.person_of

    def add_face(
        self,
        face: FaceInput,
        params: ClusterParams,
        *,
        person: int = UNASSIGNED,
        seq: int | None = None,
    ) -> int:
        """Register a face as the next ordinal (and in its person, for a restored state)."""
        ordinal = self.faces.append(face, params, person=person, seq=seq)
        self.ordinal_of[face.face_id] = ordinal
        if person != UNASSIGNED:
            record = self.people.setdefault(person, Person())
            record.members.add(ordinal)
            record.photos[face.photo_id] = record.photos.get(face.photo_id, 0) + 1
        return ordinal

    def person_of_face(self, face_id: str) -> int | None:
        person = self.person_of[self.ordinal_of[face_id]]
        return None if person == UNASSIGNED else person

    def labels(self) -> dict[str, int | None]:
        """face id -> person id (None: unassigned), for every face."""
        return {
            face_id: (None if p == UNASSIGNED else p)
            for face_id, p in zip(self.face_ids, self.person_of, strict=True)
        }

    def resolve(self, person_id: int) -> int:
        """The live person a (possibly merged-away) person id now refers to."""
        while person_id in self.merged_into:
            person_id = self.merged_into[person_id]
        return person_id


@dataclass
class ClusterUpdate:
    """What one call changed: enough for the service to write back only that."""

    added: list[str] = field(default_factory=list)
    redelivered: list[str] = field(default_factory=list)
    # face id -> new person (None: unassigned) for new faces and faces whose person changed.
    assignments: dict[str, int | None] = field(default_factory=dict)
    created: list[int] = field(default_factory=list)
    changed: set[int] = field(default_factory=set)  # people whose members changed
    removed: list[int] = field(default_factory=list)  # people merged away or emptied by the user


def face_trust(face: FaceInput, params: ClusterParams) -> float:
    """How far the recogniser's output can be trusted, in [0, 1] (the quality scale).

    The raw embedding norm, mapped linearly from `norm_floor` (0) to `norm_full` (1), when the
    detector recorded it; else the hand-made quality score. On degraded dev faces the norm tells
    faces whose nearest neighbour is the same person far better (ROC AUC 0.861 against 0.770).
    """
    if face.norm is None or params.norm_full <= params.norm_floor:
        return float(face.quality)
    share = (float(face.norm) - params.norm_floor) / (params.norm_full - params.norm_floor)
    return min(1.0, max(0.0, share))


def face_tier(trust: float, size_px: float, det_score: float, params: ClusterParams) -> int:
    if (
        trust >= params.strong_quality
        and size_px >= params.strong_size_px
        and det_score >= params.strong_det_score
    ):
        return STRONG
    if (
        trust >= params.weak_quality
        and size_px >= params.weak_size_px
        and det_score >= params.weak_det_score
    ):
        return WEAK
    return IGNORED


# -- adding faces -------------------------------------------------------------------------------


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


def trust_radius(quality: float, params: ClusterParams) -> float:
    """The similarity a face needs to another before the pair counts as evidence.

    Poor faces (blurred, tiny, compressed) crowd together whoever they show, so the radius
    tightens as quality falls below `full_quality`; a pair must clear both faces' radii.
    """
    return params.join_sim + params.quality_slope * max(0.0, params.full_quality - quality)


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
        _assign(state, face, person, update)
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
        _assign(state, member, person, update)
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


def _assign(state: UserClusterState, face: int, person: int, update: ClusterUpdate) -> None:
    record = state.people[person]
    record.members.add(face)
    photo = state.photo_ids[face]
    record.photos[photo] = record.photos.get(photo, 0) + 1
    state.person_of[face] = person
    state.waiting.pop(face, None)  # an assigned face no longer needs its neighbour list
    update.assignments[state.face_ids[face]] = person
    update.changed.add(person)


def _unassign(state: UserClusterState, face: int, update: ClusterUpdate) -> int:
    """Take a face out of its person (user operations only); returns the old person."""
    person = state.person_of[face]
    if person == UNASSIGNED:
        return person
    record = state.people[person]
    record.members.discard(face)
    photo = state.photo_ids[face]
    record.photos[photo] -= 1
    if not record.photos[photo]:
        del record.photos[photo]
    state.person_of[face] = UNASSIGNED
    update.assignments[state.face_ids[face]] = None
    update.changed.add(person)
    if not record.members and record.name is None:
        del state.people[person]
        update.removed.append(person)
    return person


# -- user corrections ---------------------------------------------------------------------------


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
        _unassign(state, face, update)
        _assign(state, face, keep, update)
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
        _unassign(state, face, update)
        state.not_in.setdefault(face, set()).add(old)
    if target is None:
        target = state.next_person_id
        state.next_person_id += 1
        state.people[target] = Person()
        update.created.append(target)
    state.not_in.get(face, set()).discard(target)
    _assign(state, face, target, update)
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
        _unassign(state, face, update)
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


def partition(state: UserClusterState, face_ids: Iterable[str]) -> list[int | None]:
    """The person of each face id (None: unassigned): a labelling to score or compare."""
    return [state.person_of_face(face_id) for face_id in face_ids]
