"""Lab only: the training-free batch methods the consolidation pass was chosen from.

Every method gets the same trusted kNN graph (`consolidate.knn_graph`) and its labels go through
the same constraints (`consolidate.consolidate(..., labels=...)`), so only the partition differs.
`facefleet evaluate --batch-method NAME` scores one; `--compare-batch` scores all of them.

- infomap: the map equation on the weighted graph (two-level); no parameter.
- leiden: modularity (RB configuration, resolution 1) with leidenalg/igraph; no parameter.
- hdbscan: scikit-learn HDBSCAN on the graph's distances (non-edges at distance 1),
  min_cluster_size 2.
- average: average linkage on the same distances, cut at 1 - ClusterParams.seed_sim.
- finch: first-neighbour clustering (Sarfraz et al. 2019) on the trusted graph; the second level
  (the first is nearly all pairs).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from facefleet.worker.grouping.batch_partition import (
    ConsolidateParams,
    Graph,
    batch_labels,
    canonical,
    drop_singletons,
    knn_graph,
    photo_codes,
    trust_radii,
)
from facefleet.worker.grouping.state import ClusterParams, UserClusterState

METHODS = ("infomap", "leiden", "hdbscan", "average", "finch")


def graph_of(
    state: UserClusterState, params: ClusterParams, cparams: ConsolidateParams
) -> tuple[np.ndarray, Graph]:
    order = canonical(state)
    trust = np.asarray(state.trust, dtype=np.float32)[order]
    radius = trust_radii(trust, params, cparams)
    graph = knn_graph(
        state.faces.vectors[order],
        radius.astype(np.float32),
        photo_codes(state)[order],
        cparams.k,
        cparams.edge_sim,
        cparams,
    )
    return order, graph


def _leiden(graph: Graph, params: ClusterParams) -> np.ndarray:
    import igraph
    import leidenalg

    g = igraph.Graph(
        n=graph.n, edges=list(zip(graph.src.tolist(), graph.dst.tolist(), strict=True))
    )
    partition = leidenalg.find_partition(
        g,
        leidenalg.RBConfigurationVertexPartition,
        weights=graph.weight.astype(float).tolist(),
        seed=7,
    )
    labels = np.asarray(partition.membership, dtype=np.int64)
    degree = np.bincount(np.concatenate([graph.src, graph.dst]), minlength=graph.n)
    labels[degree == 0] = -1
    return drop_singletons(labels)


def _distances(graph: Graph) -> np.ndarray:
    dense = np.ones((graph.n, graph.n), dtype=np.float64)
    dense[graph.src, graph.dst] = 1.0 - graph.weight
    dense[graph.dst, graph.src] = 1.0 - graph.weight
    np.fill_diagonal(dense, 0.0)
    return dense


def _hdbscan(graph: Graph, params: ClusterParams) -> np.ndarray:
    from sklearn.cluster import HDBSCAN

    model = HDBSCAN(min_cluster_size=2, metric="precomputed", allow_single_cluster=False)
    return drop_singletons(np.asarray(model.fit_predict(_distances(graph)), dtype=np.int64))


def _average(graph: Graph, params: ClusterParams) -> np.ndarray:
    from scipy.cluster.hierarchy import fcluster, linkage
    from scipy.spatial.distance import squareform

    if graph.n < 2:
        return np.full(graph.n, -1, dtype=np.int64)
    tree = linkage(squareform(_distances(graph), checks=False), method="average")
    labels = fcluster(tree, t=1.0 - params.seed_sim, criterion="distance").astype(np.int64)
    return drop_singletons(labels)


def _finch(graph: Graph, params: ClusterParams, level: int = 2) -> np.ndarray:
    """FINCH on the trusted graph: link each node to its first neighbour, take components;
    then repeat on the clusters (mean similarity between clusters over graph edges)."""
    n = graph.n
    labels = np.arange(n, dtype=np.int64)
    src, dst, w = graph.src, graph.dst, graph.weight.astype(np.float64)
    for _ in range(level):
        a, b = labels[src], labels[dst]
        cross = a != b
        if not cross.any():
            break
        a, b, ww = a[cross], b[cross], w[cross]
        m = int(labels.max()) + 1
        total = coo_matrix((np.r_[ww, ww], (np.r_[a, b], np.r_[b, a])), shape=(m, m)).tocsr()
        count = coo_matrix((np.ones(2 * len(ww)), (np.r_[a, b], np.r_[b, a])), shape=(m, m)).tocsr()
        mean = total.multiply(count.power(-1)).tocsr()
        first = np.full(m, -1, dtype=np.int64)
        for row in range(m):
            start, end = mean.indptr[row], mean.indptr[row + 1]
            if end > start:
                first[row] = mean.indices[start + int(np.argmax(mean.data[start:end]))]
        has = first >= 0
        link = coo_matrix(
            (np.ones(int(has.sum())), (np.flatnonzero(has), first[has])), shape=(m, m)
        )
        _, comp = connected_components(link, directed=False)
        labels = comp[labels].astype(np.int64)
    degree = np.bincount(np.concatenate([src, dst]), minlength=n)
    labels[degree == 0] = -1
    return drop_singletons(labels)


def _infomap(graph: Graph, params: ClusterParams) -> np.ndarray:
    return batch_labels(graph)


RUNNERS: dict[str, Callable[[Graph, ClusterParams], np.ndarray]] = {
    "infomap": _infomap,
    "leiden": _leiden,
    "hdbscan": _hdbscan,
    "average": _average,
    "finch": _finch,
}


def method_labels(
    state: UserClusterState,
    method: str,
    params: ClusterParams,
    cparams: ConsolidateParams | None = None,
) -> np.ndarray:
    """The partition by ordinal (-1: unassigned) that `method` gives on the trusted graph."""
    cparams = cparams or ConsolidateParams()
    order, graph = graph_of(state, params, cparams)
    labels = np.full(len(state.face_ids), -1, dtype=np.int64)
    if graph.n >= 2:
        labels[order] = RUNNERS[method](graph, params)
    return labels
