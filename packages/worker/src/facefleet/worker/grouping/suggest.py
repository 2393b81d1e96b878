"""Questions that fix a library: for one user, the few answers that would change it most.

    questions = suggest(state, params, answered=keys)   # pure: reads `state`, ranks questions

Three kinds, each about the user's own faces and people only:

- `PEOPLE` "same person?": two people that may be one (a split person). A "same" merges them;
  a "different" is a cannot-link (`edits.separate_people`).
- `FACE` "is this them?": an unassigned face and the person it may belong to. "same" moves it
  there (pinned), "different" bars it from that person (`not_in`).
- `MEMBER` "is this them?": a member its person may not own (a wrong merge). "same" confirms it
  (pinned), "different" takes it out and bars it.

Each question's value is the expected number of face pairs its answer changes: the chance of a
"same" (`likelihood`, from the embedding evidence) times the pairs a "same" adds (|P|·|Q| for two
people, |P| for a face), or, for a member, the chance of a "different" times the |P| - 1 wrong
pairs it removes. Pairs are what pairwise F1 counts and what a user sees (a face shown with the
wrong faces), so the ranking asks first where an answer fixes most, not merely where two
centroids are closest. Candidates come from the people's centroids (the nearest people of each
person, the nearest people of each unassigned face) and each member's leave-one-out similarity
to its person; pairs the library already rules out (two people holding faces of one photo, a
face barred from a person, people said to differ, pinned members) and answered questions
(`answered`: question keys) are never asked.

The likelihoods are logistic in the similarity, with the face's trust (`state.face_trust`)
for faces: blurred, tiny faces sit close to everyone, so their similarities say less. The
coefficients were chosen on the developers' LFW split (see `SuggestParams`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import faiss
import numpy as np

from facefleet.worker.grouping.edits import are_apart
from facefleet.worker.grouping.index import threads_for
from facefleet.worker.grouping.state import IGNORED, UNASSIGNED, UserClusterState

Kind = Literal["people", "face", "member"]
PEOPLE: Kind = "people"
FACE: Kind = "face"
MEMBER: Kind = "member"
KINDS: tuple[Kind, ...] = (PEOPLE, FACE, MEMBER)


@dataclass(frozen=True)
class SuggestParams:
    """How many candidates are looked at, and the likelihood curves (logistic in similarity)."""

    limit: int = 20
    # Nearest people looked at per person, and per unassigned face.
    people_candidates: int = 5
    face_candidates: int = 2
    # P(same) = 1 / (1 + exp(-(slope * sim + trust_weight * trust + joint * sim * trust + bias)))
    # for a face (a blurred face's similarity says less: hence the joint term); for two people
    # slope * sim + `people_size_weight` * ln(the smaller's faces) + bias. Logistic fits to the
    # truthful answers of every candidate on the developers' split (three conditions,
    # incremental and consolidated states; ROC AUC 0.90 people, 0.78 faces, 0.91 members).
    # Centroids of large people sit closer to everything: a large pair needs more similarity.
    people_slope: float = 7.1
    people_size_weight: float = -1.6
    people_bias: float = -4.4
    face_slope: float = -4.8
    face_trust_weight: float = -6.8
    face_joint: float = 22.5
    face_bias: float = -0.7
    member_slope: float = 1.8
    member_trust_weight: float = 3.6
    member_joint: float = 13.9
    member_bias: float = -5.9
    # Questions worth less than this many expected pairs are not asked.
    min_value: float = 0.05


@dataclass(frozen=True)
class Question:
    """One question about a user's library (ids are the user's own person and face ids)."""

    kind: Kind
    person: int
    other: int | None = None  # the second person of a PEOPLE question
    face_id: str | None = None  # the face of a FACE or MEMBER question
    likelihood: float = 0.0  # the estimated chance the answer is "same"
    value: float = 0.0  # expected face pairs the answer changes

    @property
    def key(self) -> str:
        """What is asked, stably: an answered key is never asked again."""
        if self.kind == PEOPLE:
            low, high = sorted((self.person, int(self.other or 0)))
            return f"people:{low}:{high}"
        return f"{self.kind}:{self.face_id}:{self.person}"

    @property
    def question_id(self) -> str:
        """A short id for commands (`facefleet people answer USER ID same`)."""
        return Question.id_of_key(self.key)

    @staticmethod
    def id_of_key(key: str) -> str:
        return "q" + hashlib.sha1(key.encode()).hexdigest()[:10]

    def text(self) -> str:
        if self.kind == PEOPLE:
            return f"are person {self.person} and person {self.other} the same person?"
        if self.kind == FACE:
            return f"is face {self.face_id} person {self.person}?"
        return f"is face {self.face_id} really person {self.person}?"

    def to_doc(self) -> dict[str, Any]:
        return {
            "id": self.question_id,
            "key": self.key,
            "kind": self.kind,
            "person": self.person,
            "other": self.other,
            "face_id": self.face_id,
            "likelihood": round(self.likelihood, 4),
            "value": round(self.value, 4),
        }

    @staticmethod
    def from_doc(doc: Mapping[str, Any]) -> Question:
        kind = doc["kind"]
        if kind not in KINDS:
            raise ValueError(f"unknown question kind {kind!r}")
        other = doc.get("other")
        return Question(
            kind,
            int(doc["person"]),
            None if other is None else int(other),
            doc.get("face_id"),
            float(doc.get("likelihood", 0.0)),
            float(doc.get("value", 0.0)),
        )


def _likelihood(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


# Above this many people, centroids are searched on a small IVF (approximate, a twentieth of the
# work: 100k faces in ~6,800 people); below it, exactly.
EXACT_PEOPLE_BELOW = 2048


@dataclass
class PeopleView:
    """The assigned people as arrays: ids, sizes and unit centroids (rows in id order)."""

    ids: np.ndarray
    sizes: np.ndarray
    sums: np.ndarray  # unnormalised member sums
    centroids: np.ndarray
    _index: faiss.Index | None = None

    @staticmethod
    def of(state: UserClusterState) -> PeopleView:
        from scipy.sparse import csr_matrix

        person_of = np.asarray(state.person_of, dtype=np.int64)
        ids = np.unique(person_of[person_of != UNASSIGNED])
        vectors = state.faces.vectors
        dim = vectors.shape[1] if len(vectors) else 0
        if not len(ids):
            empty = np.zeros((0, dim), dtype=np.float32)
            return PeopleView(ids, np.zeros(0, dtype=np.int64), empty, empty)
        assigned = np.flatnonzero(person_of != UNASSIGNED)
        row = np.searchsorted(ids, person_of[assigned])
        # One sparse product sums every person's members (no per-face Python, no copies).
        membership = csr_matrix(
            (np.ones(len(assigned), dtype=np.float32), (row, assigned)),
            shape=(len(ids), len(vectors)),
        )
        sums = np.asarray(membership @ vectors, dtype=np.float32)
        sizes = np.bincount(row, minlength=len(ids))
        norms = np.linalg.norm(sums, axis=1, keepdims=True)
        centroids = (sums / np.maximum(norms, 1e-12)).astype(np.float32)
        return PeopleView(ids, sizes, sums, centroids)

    def nearest(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(sims, rows) of the k nearest centroids to each query (rows -1 where none)."""
        k = min(k, len(self.ids))
        if not k or not len(queries):
            return np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64)
        with threads_for(len(queries) * len(self.ids)):
            if self._index is None:
                self._index = _centroid_index(self.centroids)
            sims, rows = self._index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
        return sims, rows


def _centroid_index(centroids: np.ndarray) -> faiss.Index:
    """Exact below EXACT_PEOPLE_BELOW people; above, an IVF of ~sqrt(n) lists, 4 probed."""
    n, dim = centroids.shape
    if n < EXACT_PEOPLE_BELOW:
        flat = faiss.IndexFlatIP(dim)
        flat.add(centroids)
        return flat
    lists = int(np.sqrt(n))
    ivf = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, lists, faiss.METRIC_INNER_PRODUCT)
    # A short k-means on a sample: a suggestion needs good neighbours, not the best ones.
    ivf.cp.seed, ivf.cp.niter, ivf.cp.max_points_per_centroid = 7, 4, 32
    ivf.train(centroids)
    ivf.add(centroids)
    ivf.nprobe = 4
    return ivf


def suggest(
    state: UserClusterState,
    params: SuggestParams | None = None,
    answered: Collection[str] = (),
) -> list[Question]:
    """The user's open questions, most valuable first (at most `params.limit`)."""
    params = params or SuggestParams()
    view = PeopleView.of(state)
    if not len(view.ids):
        return []
    answered = set(answered)
    candidates = [
        *_people_questions(state, view, params, answered),
        *_face_questions(state, view, params, answered),
        *_member_questions(state, view, params, answered),
    ]
    candidates.sort(key=lambda q: (-q.value, q.key))
    return [q for q in candidates if q.value >= params.min_value][: params.limit]


def _best_first(values: np.ndarray, floor: float) -> list[int]:
    """Positions of `values` at or above `floor`, largest first (ties: lower position)."""
    keep = np.flatnonzero(values >= floor)
    return keep[np.argsort(-values[keep], kind="stable")].tolist()


def _people_questions(
    state: UserClusterState, view: PeopleView, params: SuggestParams, answered: Collection[str]
) -> list[Question]:
    sims, rows = view.nearest(view.centroids, params.people_candidates + 1)
    a, c = np.nonzero(rows > np.arange(len(rows))[:, None])  # each pair once, never itself
    b = rows[a, c]
    sim = sims[a, c]
    smaller = np.minimum(view.sizes[a], view.sizes[b]).astype(np.float64)
    logit = params.people_slope * sim + params.people_size_weight * np.log(smaller)
    chance = _likelihood(logit + params.people_bias)
    value = chance * view.sizes[a] * view.sizes[b]
    out: list[Question] = []
    seen: set[tuple[int, int]] = set()
    for i in _best_first(value, params.min_value):
        p, q = int(view.ids[a[i]]), int(view.ids[b[i]])
        if (p, q) in seen:
            continue  # found from both ends
        seen.add((p, q))
        question = Question(PEOPLE, p, q, None, float(chance[i]), float(value[i]))
        if question.key in answered or are_apart(state, p, q) or _share_photo(state, p, q):
            continue
        out.append(question)
        if len(out) >= params.limit:
            break
    return out


def _share_photo(state: UserClusterState, p: int, q: int) -> bool:
    """Two people holding faces of one photo cannot be one person (the same-photo rule)."""
    small, large = sorted((state.people[p].photos, state.people[q].photos), key=len)
    return any(photo in large for photo in small)


def _face_questions(
    state: UserClusterState, view: PeopleView, params: SuggestParams, answered: Collection[str]
) -> list[Question]:
    person_of = np.asarray(state.person_of, dtype=np.int64)
    tier = np.asarray(state.tier, dtype=np.int64)
    waiting = np.flatnonzero((person_of == UNASSIGNED) & (tier != IGNORED))
    if not len(waiting):
        return []
    sims, rows = view.nearest(state.faces.vectors[waiting], params.face_candidates)
    t = np.asarray(state.trust, dtype=np.float32)[waiting][:, None]
    logits = (
        params.face_slope * sims
        + params.face_trust_weight * t
        + params.face_joint * sims * t
        + params.face_bias
    )
    chances = _likelihood(logits)
    values = np.where(rows >= 0, chances * view.sizes[np.maximum(rows, 0)], -1.0)
    out: list[Question] = []
    asked: set[int] = set()  # one question per face: its best person it may still join
    for flat in _best_first(values.reshape(-1), params.min_value):
        r, c = divmod(flat, values.shape[1])
        face = int(waiting[r])
        if face in asked:
            continue
        person = int(view.ids[rows[r, c]])
        if (
            person in state.not_in.get(face, ())
            or state.photo_ids[face] in state.people[person].photos
        ):
            continue
        asked.add(face)
        question = Question(
            FACE, person, None, state.face_ids[face], float(chances[r, c]), float(values[r, c])
        )
        if question.key not in answered:
            out.append(question)
            if len(out) >= params.limit:
                break
    return out


def _member_questions(
    state: UserClusterState, view: PeopleView, params: SuggestParams, answered: Collection[str]
) -> list[Question]:
    """Members least like the rest of their person (leave-one-out centroid similarity)."""
    person_of = np.asarray(state.person_of, dtype=np.int64)
    members = np.flatnonzero(person_of != UNASSIGNED)
    if not len(members):
        return []
    row = np.searchsorted(view.ids, person_of[members])
    sizes = view.sizes[row]
    members, row, sizes = members[sizes >= 2], row[sizes >= 2], sizes[sizes >= 2]
    vectors = state.faces.vectors
    dot = np.empty(len(members), dtype=np.float32)
    for start in range(0, len(members), 8192):  # chunks: no (faces x dim) temporaries
        part = slice(start, start + 8192)
        dot[part] = np.einsum("ij,ij->i", vectors[members[part]], view.sums[row[part]])
    squared = np.einsum("ij,ij->i", view.sums, view.sums)[row]
    rest = np.sqrt(np.maximum(squared - 2 * dot + 1.0, 1e-12))
    sim = (dot - 1.0) / rest  # the member against the centroid of the others
    trust = np.asarray(state.trust, dtype=np.float32)[members]
    chance = _likelihood(
        params.member_slope * sim
        + params.member_trust_weight * trust
        + params.member_joint * sim * trust
        + params.member_bias
    )
    value = (1.0 - chance) * (sizes - 1)
    pinned = state.pinned
    out: list[Question] = []
    for i in _best_first(value, params.min_value):
        face = int(members[i])
        person = int(view.ids[row[i]])
        question = Question(
            MEMBER, person, None, state.face_ids[face], float(chance[i]), float(value[i])
        )
        if face not in pinned and question.key not in answered:
            out.append(question)
            if len(out) >= params.limit:
                break  # only the best `limit` members can make the list
    return out
