"""One user's grouping state over plain data: the parameters, the faces, the people, and the diff.

`UserClusterState` is what every pure step reads and updates in place: the incremental placement
(`placement.add_faces`), the user's corrections (`edits`) and the batch pass (`consolidate`). Each
returns a `ClusterUpdate` (what changed), so the service writes back only that. `assign` and
`unassign` are the one way a face enters or leaves a person, so a person's members and photo
counts never drift from `person_of`.

A face's trust (`face_trust`: the recogniser's raw embedding norm mapped to [0, 1]) gives its tier
(`face_tier`) and its trust radius (`trust_radius`), which placement, consolidation and the
suggestions all read.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

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


def trust_radius(quality: float, params: ClusterParams) -> float:
    """The similarity a face needs to another before the pair counts as evidence.

    Poor faces (blurred, tiny, compressed) crowd together whoever they show, so the radius
    tightens as quality falls below `full_quality`; a pair must clear both faces' radii.
    """
    return params.join_sim + params.quality_slope * max(0.0, params.full_quality - quality)


def trust_radius_array(trust: np.ndarray, params: ClusterParams, less: float = 0.0) -> np.ndarray:
    """`trust_radius` of many faces at once (the batch pass), each less `less`."""
    loss = np.maximum(0.0, params.full_quality - trust)
    return params.join_sim + params.quality_slope * loss - less


def assign(state: UserClusterState, face: int, person: int, update: ClusterUpdate) -> None:
    """Put an unassigned face in `person` (placement and user operations alike)."""
    record = state.people[person]
    record.members.add(face)
    photo = state.photo_ids[face]
    record.photos[photo] = record.photos.get(photo, 0) + 1
    state.person_of[face] = person
    state.waiting.pop(face, None)  # an assigned face no longer needs its neighbour list
    update.assignments[state.face_ids[face]] = person
    update.changed.add(person)


def unassign(state: UserClusterState, face: int, update: ClusterUpdate) -> int:
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


def partition(state: UserClusterState, face_ids: Iterable[str]) -> list[int | None]:
    """The person of each face id (None: unassigned): a labelling to score or compare."""
    return [state.person_of_face(face_id) for face_id in face_ids]
