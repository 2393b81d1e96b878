"""Baselines the quality harness measures FaceFleet against, on the same embeddings.

(a) `incremental_rule`: the widely used incremental rule: a face is core if it has at least
    `min_faces` earlier faces within cosine distance `max_distance` among its top-k neighbours; it
    takes the person of its nearest neighbour that has one; else a core face starts a new person;
    non-core faces are retried once after the stream. Defaults: min_faces=3, distance 0.5.
(b) `dbscan`: batch DBSCAN on cosine distance (scikit-learn, precomputed sparse radius graph).
(c) `chinese_whispers`: label propagation on the similarity graph (edges above a threshold).

All three read one shared k-nearest-neighbour graph (`NeighbourGraph`), so a grid of settings
costs one search. `tune` picks, per condition, the setting that scores best against the
truth, separately for each metric (an oracle ceiling that FaceFleet, one fixed parameter set,
does not get); `dev_settings` tunes each once on the developers' split (what a user of that
baseline would get on any other folder); Immich's defaults include its detection minScore 0.7.
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

from facefleet.tools.quality.scores import bcubed_scores, pairwise_scores
from facefleet.worker.grouping.agreement import ari

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
    value: float  # the metric it was tuned for (nan when not tuned)


Metric = Callable[[Sequence[Hashable], Sequence[Hashable | None]], float]
METRICS: dict[str, Metric] = {
    "bcubed": lambda truth, labels: bcubed_scores(truth, labels)[2],
    "pairwise": lambda truth, labels: pairwise_scores(truth, labels)[2],
    "ari": ari,
}


def tune(
    name: str,
    run: Callable[..., Labels],
    grid: Sequence[dict[str, Any]],
    truth: Sequence[Hashable],
) -> dict[str, Tuned]:
    """Per metric, the grid setting that scores best on the truth (first best on ties: grids
    are ordered). Each setting runs once and is scored on every metric."""
    best: dict[str, Tuned] = {}
    for setting in grid:
        labels = run(**setting)
        for metric, measure in METRICS.items():
            value = measure(truth, _to_labels(labels))
            if metric not in best or value > best[metric].value:
                best[metric] = Tuned(f"{name} tuned[{metric}]", dict(setting), labels, value)
    if not best:
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

# Immich's face clustering defaults: a face below the detection minScore is never clustered.
IMMICH_MIN_SCORE = 0.7
IMMICH_DEFAULTS: dict[str, Any] = {"min_faces": 3, "max_distance": 0.5}


def families(
    graph: NeighbourGraph, order: Sequence[int]
) -> dict[str, tuple[Callable[..., Labels], Sequence[dict[str, Any]]]]:
    """Each tunable baseline: how to run one setting, and its grid."""
    return {
        "rule (a)": (lambda **s: incremental_rule(graph, order, **s), RULE_GRID),
        "DBSCAN": (lambda **s: dbscan(graph, **s), DBSCAN_GRID),
        "Chinese whispers": (lambda **s: chinese_whispers(graph, **s), WHISPERS_GRID),
    }


def immich_default(
    graph: NeighbourGraph, order: Sequence[int], det_scores: Sequence[float]
) -> Labels:
    """Immich's rule at its defaults: faces under minScore never arrive (stay unassigned)."""
    kept = [face for face in order if det_scores[face] >= IMMICH_MIN_SCORE]
    return incremental_rule(graph, kept, **IMMICH_DEFAULTS)


def dev_settings(
    splits: Sequence[tuple[NeighbourGraph, Sequence[int], Sequence[Hashable]]],
) -> dict[str, dict[str, Any]]:
    """One setting per baseline, chosen once on the developers' split: the best mean over its
    conditions of (BCubed F1 + pairwise F1 + ARI) / 3. It then runs unchanged elsewhere."""
    chosen: dict[str, dict[str, Any]] = {}
    names = list(families(splits[0][0], splits[0][1])) if splits else []
    for name in names:
        best_value, best_setting = -np.inf, None
        grid = families(splits[0][0], splits[0][1])[name][1]
        for setting in grid:
            total = 0.0
            for graph, order, truth in splits:
                labels = _to_labels(families(graph, order)[name][0](**setting))
                total += sum(m(truth, labels) for m in METRICS.values()) / len(METRICS)
            if total > best_value:
                best_value, best_setting = total, setting
        assert best_setting is not None
        chosen[name] = dict(best_setting)
    return chosen


def run_baselines(
    graph: NeighbourGraph,
    order: Sequence[int],
    truth: Sequence[Hashable],
    det_scores: Sequence[float],
    dev: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Tuned]:
    """Immich's defaults; each baseline truth-tuned per metric (the oracle ceiling); each as
    tuned once on the developers' split (`dev`); the all-singletons floor."""
    nan = float("nan")
    rows = {
        "immich": Tuned(
            f"Immich defaults (minScore {IMMICH_MIN_SCORE})",
            dict(IMMICH_DEFAULTS),
            immich_default(graph, order, det_scores),
            nan,
        )
    }
    for name, (run, grid) in families(graph, order).items():
        for metric, tuned in tune(name, run, grid, truth).items():
            rows[f"{name}:{metric}"] = tuned
        if dev and name in dev:
            rows[f"{name}:dev"] = Tuned(f"{name} dev-tuned", dev[name], run(**dev[name]), nan)
    rows["singletons"] = Tuned("all singletons", {}, [-1] * len(graph), nan)
    return rows


def as_labels(values: Sequence[int]) -> list[Hashable | None]:
    """Baseline labels (-1: unassigned) in the form the metrics take."""
    return _to_labels(values)
