"""Baselines the quality harness measures FaceFleet against, on the same embeddings.

(a) `incremental_rule`: the widely used incremental rule: a face is core if it has at least
    `min_faces` earlier faces within cosine distance `max_distance` among its top-k neighbours; it
    takes the person of its nearest neighbour that has one; else a core face starts a new person;
    non-core faces are retried once after the stream. Defaults: min_faces=3, distance 0.5.
(b) `dbscan`: batch DBSCAN on cosine distance (scikit-learn, precomputed sparse radius graph).
(c) `chinese_whispers`: label propagation on the similarity graph (edges above a threshold).

All three read one shared k-nearest-neighbour graph (`NeighbourGraph`), so a grid of settings
costs one search. `tune` picks, per condition, the setting with the best BCubed F1 against the
truth: the baselines get an oracle choice that FaceFleet (one fixed parameter set) does not.
Labels are ints; -1 means unassigned.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import faiss
import numpy as np
from scipy.sparse import csr_matrix
from sklearn.cluster import DBSCAN

from facefleet.tools.quality.scores import bcubed_scores

Labels = list[int]


@dataclass(frozen=True)
class NeighbourGraph:
    """Top-k neighbours (excluding self) of every face: sims and indices, best first."""

    sims: np.ndarray  # (n, k) float32
    ids: np.ndarray  # (n, k) int64, -1 where fewer than k exist

    @classmethod
    def build(cls, embeddings: np.ndarray, k: int = 50) -> NeighbourGraph:
        matrix = np.ascontiguousarray(embeddings, dtype=np.float32)
        index = faiss.IndexFlatIP(matrix.shape[1])
        index.add(matrix)
        sims, ids = index.search(matrix, min(k + 1, len(matrix)))
        keep_sims = np.full((len(matrix), k), -np.inf, dtype=np.float32)
        keep_ids = np.full((len(matrix), k), -1, dtype=np.int64)
        for row in range(len(matrix)):
            others = ids[row] != row
            count = min(k, int(others.sum()))
            keep_sims[row, :count] = sims[row][others][:count]
            keep_ids[row, :count] = ids[row][others][:count]
        return cls(keep_sims, keep_ids)

    def __len__(self) -> int:
        return len(self.ids)


def _to_labels(values: Sequence[int]) -> list[Hashable | None]:
    return [None if v < 0 else v for v in values]


def incremental_rule(
    graph: NeighbourGraph,
    order: Sequence[int],
    min_faces: int = 3,
    max_distance: float = 0.5,
    top_k: int = 10,
) -> Labels:
    """Rule (a) over faces arriving in `order` (face indices)."""
    min_sim = 1.0 - max_distance
    arrived = np.full(len(graph), -1, dtype=np.int64)  # arrival position, -1: not yet
    labels = [-1] * len(graph)
    next_label = 0

    def place(face: int) -> bool:
        nonlocal next_label
        near = [
            j
            for j, s in zip(graph.ids[face].tolist(), graph.sims[face].tolist(), strict=True)
            if j >= 0 and arrived[j] >= 0 and s >= min_sim
        ][:top_k]
        for j in near:  # nearest first
            if labels[j] >= 0:
                labels[face] = labels[j]
                return True
        if len(near) >= min_faces:
            labels[face] = next_label
            next_label += 1
            return True
        return False

    retry = []
    for position, face in enumerate(order):
        arrived[face] = position
        if not place(face):
            retry.append(face)
    for face in retry:
        place(face)
    return labels


def dbscan(graph: NeighbourGraph, eps: float, min_samples: int) -> Labels:
    """DBSCAN with cosine distance; neighbourhoods come from the top-k graph (radius-cut)."""
    rows, cols, data = [], [], []
    for row in range(len(graph)):
        mask = (graph.ids[row] >= 0) & (1.0 - graph.sims[row] <= eps)
        cols.extend(graph.ids[row][mask].tolist())
        # DBSCAN treats stored zeros as absent; a tiny floor keeps identical faces neighbours.
        data.extend(np.maximum(1.0 - graph.sims[row][mask], 1e-9).tolist())
        rows.extend([row] * int(mask.sum()))
    distances = csr_matrix((data, (rows, cols)), shape=(len(graph), len(graph)))
    model = DBSCAN(eps=eps, min_samples=min_samples, metric="precomputed")
    return [int(v) for v in model.fit_predict(distances)]


def chinese_whispers(
    graph: NeighbourGraph, threshold: float, iterations: int = 20, seed: int = 0
) -> Labels:
    """Chinese whispers (Biemann 2006) on edges with similarity >= threshold, weighted by it."""
    rng = np.random.default_rng(seed)
    edges: list[list[tuple[int, float]]] = []
    for row in range(len(graph)):
        edges.append(
            [
                (j, s)
                for j, s in zip(graph.ids[row].tolist(), graph.sims[row].tolist(), strict=True)
                if j >= 0 and s >= threshold
            ]
        )
    labels = list(range(len(graph)))
    for _ in range(iterations):
        changed = False
        for node in rng.permutation(len(graph)).tolist():
            if not edges[node]:
                continue
            weights: dict[int, float] = {}
            for j, s in edges[node]:
                weights[labels[j]] = weights.get(labels[j], 0.0) + s
            best = max(weights.items(), key=lambda item: (item[1], -item[0]))[0]
            if best != labels[node]:
                labels[node] = best
                changed = True
        if not changed:
            break
    sizes: dict[int, int] = {}
    for label in labels:
        sizes[label] = sizes.get(label, 0) + 1
    return [label if sizes[label] > 1 else -1 for label in labels]


@dataclass(frozen=True)
class Tuned:
    name: str
    setting: dict[str, Any]
    labels: Labels
    bcubed_f1: float


def tune(
    name: str,
    run: Callable[..., Labels],
    grid: Sequence[dict[str, Any]],
    truth: Sequence[Hashable],
) -> Tuned:
    """The grid setting with the best BCubed F1 (first best on ties: grids are ordered)."""
    best: Tuned | None = None
    for setting in grid:
        labels = run(**setting)
        f1 = bcubed_scores(truth, _to_labels(labels))[2]
        if best is None or f1 > best.bcubed_f1:
            best = Tuned(name, dict(setting), labels, f1)
    if best is None:
        raise ValueError(f"empty tuning grid for {name}")
    return best


RULE_GRID = [
    {"min_faces": m, "max_distance": d}
    for m in (1, 2, 3, 4)
    for d in (0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7)
]
DBSCAN_GRID = [
    {"eps": e, "min_samples": m} for m in (2, 3, 4) for e in (0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7)
]
WHISPERS_GRID = [{"threshold": t} for t in (0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.65)]


def run_baselines(
    graph: NeighbourGraph, order: Sequence[int], truth: Sequence[Hashable]
) -> dict[str, Tuned]:
    """Rule (a) at defaults and tuned, DBSCAN tuned, Chinese whispers tuned."""
    default = incremental_rule(graph, order)
    return {
        "rule_default": Tuned(
            "rule (a) defaults",
            {"min_faces": 3, "max_distance": 0.5},
            default,
            bcubed_scores(truth, _to_labels(default))[2],
        ),
        "rule_tuned": tune(
            "rule (a) tuned", lambda **s: incremental_rule(graph, order, **s), RULE_GRID, truth
        ),
        "dbscan": tune("DBSCAN tuned", lambda **s: dbscan(graph, **s), DBSCAN_GRID, truth),
        "whispers": tune(
            "Chinese whispers tuned", lambda **s: chinese_whispers(graph, **s), WHISPERS_GRID, truth
        ),
    }


def as_labels(values: Sequence[int]) -> list[Hashable | None]:
    """Baseline labels (-1: unassigned) in the form the metrics take."""
    return _to_labels(values)
