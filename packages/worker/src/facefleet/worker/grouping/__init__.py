"""Grouping: each user's faces clustered into people, incrementally (see `clustering`).

- `clustering`: the pure incremental step and user corrections over `UserClusterState`.
- `index`: the per-user FAISS index (flat while small, IVF past a threshold, GPU when present).
- `recluster`: the same algorithm over a whole library, and incremental-vs-full agreement
  (`agreement`).

The quality harness (scores, baselines, `facefleet evaluate PATH`) is `facefleet.tools.quality`.
"""
