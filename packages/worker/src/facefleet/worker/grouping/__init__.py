"""Grouping: each user's faces clustered into people, incrementally (see `placement`).

Pure steps over plain data, lowest first (import-linter holds the order):
- `state`: `UserClusterState` (faces, people, constraints), the parameters, `ClusterUpdate`.
- `placement`: the incremental step (`add_faces`), with its guarantees.
- `edits`: the user's corrections (merge, separate, move, reject, name).
- `batch_partition`, `consolidate`: the batch pass (Infomap) mapped onto the user's people.
- `carry`: ids, names and constraints carried onto a replacement state.
- `index`: the per-user FAISS index (flat while small, IVF past a threshold, GPU when present).
- `recluster`: the same algorithm over a whole library, and incremental-vs-full agreement
  (`agreement`).

The quality harness (scores, baselines, `facefleet evaluate PATH`) is `facefleet.tools.quality`.
"""
