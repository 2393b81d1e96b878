"""One user's FAISS index of face embeddings, keyed by the face's ordinal in `UserClusterState`.

Exact inner-product search (IndexIDMap2 over IndexFlatIP) while the user is small; past
`flat_threshold` faces the index is rebuilt as an IVF (inverted lists, `nprobe` probed), and rebuilt
again each time the library grows `rebuild_growth` times, with nlist about 4 * sqrt(n): the cost of
one query then grows with sqrt(n) instead of n. On a machine where faiss sees a GPU the same indexes
are moved to it. Embeddings are L2-normalised, so inner product is cosine similarity; the
dimension is read from the data, never assumed (128-d dev model, 512-d production).

The index is a cache: `FaceIndex.build` rebuilds it from stored embeddings (after a restart, or
when a cached copy does not hold exactly the state's faces: see `matches`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import faiss
import numpy as np
from threadpoolctl import ThreadpoolController

# Exact search costs O(n) per query: at 10k faces a message batch's flat search alone held the
# incremental step to ~1,500 faces/s here; an IVF from 4k faces lifts it past 8,000.
FLAT_THRESHOLD = 4_096
# Below this many vectors per call, faiss and BLAS run on one thread: for a message-sized batch,
# waking and joining thread pools costs far more than the work (on a busy 2-core host, 10x).
SINGLE_THREAD_BELOW = 512
_pools: ThreadpoolController | None = None
_single: Any = None  # the limiter holding every pool at one thread, while small calls run


@contextmanager
def threads_for(rows: int) -> Iterator[None]:
    """One thread (OpenMP and both OpenBLAS copies) for small batches; all threads otherwise.

    The limit is sticky: set by the first small call, lifted by the next large one (a bulk
    search, a consolidation). Setting and restoring it around every message-sized call cost a
    quarter of a millisecond each, a large share of the per-call budget at 10,000 faces/s.
    """
    global _pools, _single
    if rows >= SINGLE_THREAD_BELOW:
        if _single is not None:
            _single.restore_original_limits()
            _single = None
        yield
        return
    if _single is None:
        if _pools is None:
            _pools = ThreadpoolController()
        _single = _pools.limit(limits=1)
    yield


@dataclass(frozen=True)
class IndexParams:
    flat_threshold: int = FLAT_THRESHOLD
    nprobe: int = 8
    rebuild_growth: float = 4.0
    # k-means cost grows with nlist x training points: cap both (training dominates a rebuild).
    max_nlist: int = 2048
    train_per_list: int = 48
    use_gpu: bool = True
    seed: int = 1234


def gpu_count() -> int:
    get = getattr(faiss, "get_num_gpus", None)
    return int(get()) if get is not None else 0


def _as_matrix(vectors: np.ndarray) -> np.ndarray:
    matrix = np.ascontiguousarray(vectors, dtype=np.float32)
    if matrix.ndim != 2:
        raise ValueError(f"embeddings must be a 2-d array (faces x dim), got shape {matrix.shape}")
    return matrix


class FaceIndex:
    """Inner-product search over one user's faces; ids are int64 face ordinals."""

    def __init__(self, dim: int, params: IndexParams | None = None) -> None:
        if dim <= 0:
            raise ValueError(f"embedding dimension must be positive, got {dim}")
        self.dim = dim
        self.params = params or IndexParams()
        self._index: faiss.Index = self._flat()
        self._count = 0
        self._ivf_built_at = 0  # library size when the IVF was last trained; 0: still flat

    # -- construction -------------------------------------------------------------------------

    @classmethod
    def build(
        cls, ids: np.ndarray, vectors: np.ndarray, params: IndexParams | None = None
    ) -> FaceIndex:
        """A fresh index holding `vectors` under `ids` (the state's ordinals of those faces)."""
        matrix = _as_matrix(vectors)
        index = cls(matrix.shape[1], params)
        index.add(np.asarray(ids, dtype=np.int64), matrix)
        return index

    @classmethod
    def trained_for(
        cls,
        sample: np.ndarray,
        expected: int,
        params: IndexParams | None = None,
    ) -> FaceIndex:
        """An empty index whose IVF (if `expected` is past the threshold) is trained on `sample`.

        A full re-cluster knows every vector up front, so it trains once for the final size
        instead of rebuilding as the replay grows.
        """
        matrix = _as_matrix(sample)
        index = cls(matrix.shape[1], params)
        if expected > index.params.flat_threshold:
            index._index = index._trained_ivf(matrix, expected)
            index._ivf_built_at = expected
        return index

    def _flat(self) -> faiss.Index:
        return self._to_device(faiss.IndexIDMap2(faiss.IndexFlatIP(self.dim)))

    def _to_device(self, index: faiss.Index) -> faiss.Index:
        if self.params.use_gpu and gpu_count() > 0:
            return faiss.index_cpu_to_all_gpus(index)
        return index

    def _trained_ivf(self, train: np.ndarray, size: int) -> faiss.Index:
        nlist = min(self.params.max_nlist, max(64, int(4 * math.sqrt(size))))
        # faiss wants at least 39 training points per list; fewer lists beat a poor k-means.
        nlist = min(nlist, max(1, len(train) // 39))
        cap = nlist * self.params.train_per_list
        if len(train) > cap:
            rng = np.random.default_rng(self.params.seed)
            train = train[np.sort(rng.choice(len(train), cap, replace=False))]
        quantizer = faiss.IndexFlatIP(self.dim)
        ivf = faiss.IndexIVFFlat(quantizer, self.dim, nlist, faiss.METRIC_INNER_PRODUCT)
        ivf.cp.seed = self.params.seed  # k-means seed: the same data gives the same index
        ivf.train(train)
        ivf.nprobe = min(self.params.nprobe, nlist)
        # A hash direct map lets remove_ids / reconstruct work for ids in any order.
        ivf.set_direct_map_type(faiss.DirectMap.Hashtable)  # type: ignore[attr-defined]
        return self._to_device(ivf)

    # -- queries and updates ------------------------------------------------------------------

    @property
    def ntotal(self) -> int:
        return self._count

    def set_nprobe(self, nprobe: int) -> None:
        """Lists probed per query from now on (a bulk re-cluster trades recall for speed)."""
        ivf = self._index if isinstance(self._index, faiss.IndexIVF) else None
        if ivf is not None:
            ivf.nprobe = min(nprobe, ivf.nlist)

    @property
    def kind(self) -> str:
        return "ivf" if self._ivf_built_at else "flat"

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        matrix = _as_matrix(vectors)
        if matrix.shape[1] != self.dim:
            raise ValueError(f"index holds {self.dim}-d embeddings, got {matrix.shape[1]}-d")
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        if len(ids) != len(matrix):
            raise ValueError(f"{len(ids)} ids for {len(matrix)} embeddings")
        if not len(ids):
            return
        with threads_for(len(ids)):
            self._index.add_with_ids(matrix, ids)
        self._count += len(ids)
        if self._needs_rebuild():
            self._rebuild()

    def _needs_rebuild(self) -> bool:
        if self._count <= self.params.flat_threshold:
            return False
        if not self._ivf_built_at:
            return True
        return self._count >= self._ivf_built_at * self.params.rebuild_growth

    def _rebuild(self) -> None:
        ids, vectors = self.dump()
        index = self._trained_ivf(vectors, len(ids))
        index.add_with_ids(vectors, ids)
        self._index = index
        self._ivf_built_at = len(ids)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (similarities, ordinals) per query; missing neighbours have ordinal -1."""
        matrix = _as_matrix(queries)
        if self._count == 0 or not len(matrix):
            return (
                np.full((len(matrix), k), -np.inf, dtype=np.float32),
                np.full((len(matrix), k), -1, dtype=np.int64),
            )
        with threads_for(len(matrix)):
            sims, ids = self._index.search(matrix, k)
        return sims, ids

    def search_and_add(
        self, ids: np.ndarray, vectors: np.ndarray, k: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """`search(vectors, k)` over the faces held before, then `add(ids, vectors)`.

        On a CPU IVF the coarse assignment is computed once and used for both (for a
        message-sized batch it is most of the cost of each).
        """
        queries = _as_matrix(vectors)
        ivf = self._index if isinstance(self._index, faiss.IndexIVFFlat) else None
        if ivf is None or not len(queries) or queries.shape[1] != self.dim:
            before = self.search(queries, k)
            self.add(ids, queries)
            return before
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        if len(ids) != len(queries):
            raise ValueError(f"{len(ids)} ids for {len(queries)} embeddings")
        quantizer = ivf.quantizer
        assert quantizer is not None, "a trained IVF has a quantizer"
        with threads_for(len(queries)):
            coarse_sims, lists = quantizer.search(queries, ivf.nprobe)
            # The Python wrapper (not the SWIG signature the stubs describe) returns the result.
            preassigned: Any = ivf.search_preassigned
            found: tuple[np.ndarray, np.ndarray] = preassigned(queries, k, lists, coarse_sims)
            first = np.ascontiguousarray(lists[:, 0])
            ivf.add_core(
                len(ids), faiss.swig_ptr(queries), faiss.swig_ptr(ids), faiss.swig_ptr(first)
            )
        self._count += len(ids)
        if self._needs_rebuild():
            self._rebuild()
        return found

    def matches(self, ordinals: int) -> bool:
        """True when a cached index holds exactly faces 0..ordinals-1 (else rebuild it)."""
        if self._count != ordinals:
            return False
        ids, _ = self.dump()
        return bool(np.array_equal(np.sort(ids), np.arange(ordinals, dtype=np.int64)))

    def dump(self) -> tuple[np.ndarray, np.ndarray]:
        """Every (ordinal, embedding) held, read back from the index itself (no second copy)."""
        index = self._index
        if gpu_count() > 0 and self.params.use_gpu:
            index = faiss.index_gpu_to_cpu(index)
        if isinstance(index, faiss.IndexIDMap2):
            ids = faiss.vector_to_array(index.id_map).astype(np.int64)
            return ids, index.index.reconstruct_n(0, index.ntotal)
        ivf = faiss.extract_index_ivf(index)
        invlists = ivf.invlists
        assert invlists is not None, "an IVF index always has inverted lists"
        id_parts, vec_parts = [], []
        for lst in range(ivf.nlist):
            size = invlists.list_size(lst)
            if not size:
                continue
            id_parts.append(faiss.rev_swig_ptr(invlists.get_ids(lst), size).copy())
            codes = faiss.rev_swig_ptr(invlists.get_codes(lst), size * ivf.code_size).copy()
            vec_parts.append(codes.view(np.float32).reshape(size, self.dim))
        if not id_parts:
            return np.empty(0, dtype=np.int64), np.empty((0, self.dim), dtype=np.float32)
        return np.concatenate(id_parts).astype(np.int64), np.concatenate(vec_parts)
