"""Detected, labelled faces of one condition (`ConditionData`), through the project's detection
code, and the cache that makes a rerun cost only the grouping.

Each built image goes through `FaceAnalyzer` (SCRFD, alignment, quality, ArcFace); the detection
that is a placed face is found by position (`_match`), unlabelled extra faces are dropped and
undetected ones counted. `load_condition` reads the cache (one `.npz` per condition, keyed by the
photos, the pack and the seed) or detects and writes it.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from facefleet.tools.quality.conditions import BUILDERS, Photo, Placed
from facefleet.worker.grouping.state import FaceInput


@dataclass
class ConditionData:
    """Detected, labelled faces of one condition (what the cache holds)."""

    embeddings: np.ndarray
    quality: np.ndarray
    size_px: np.ndarray
    det_score: np.ndarray
    photo_ids: list[str]
    truth: list[str]
    missed: int
    norm: np.ndarray  # the recogniser's raw embedding norms

    def faces(self) -> list[FaceInput]:
        return [
            FaceInput(
                f"face{i:06d}",
                self.photo_ids[i],
                self.embeddings[i],
                float(self.quality[i]),
                float(self.size_px[i]),
                float(self.det_score[i]),
                float(self.norm[i]),
            )
            for i in range(len(self.truth))
        ]


def _match(
    boxes: Sequence[tuple[float, float, float, float]],
    placed: Placed,
    taken: set[int],
    largest_first: bool,
) -> int | None:
    """The detection that is the placed face: nearest its centre, within 0.75 face widths.

    In the clean condition (largest_first) the nearest of the detections at least half as wide
    as the widest is taken wherever it is: background faces in LFW photos are small.
    """
    candidates = [i for i in range(len(boxes)) if i not in taken]
    if largest_first and candidates:
        widest = max(boxes[i][2] - boxes[i][0] for i in candidates)
        candidates = [i for i in candidates if boxes[i][2] - boxes[i][0] >= widest / 2]
    if not candidates:
        return None
    distance = {i: _distance(boxes[i], placed) for i in candidates}
    best = min(candidates, key=lambda i: (distance[i], i))
    if not largest_first and distance[best] > max(0.75 * placed.width, 10.0):
        return None
    return best


def _distance(box: tuple[float, float, float, float], placed: Placed) -> float:
    x1, y1, x2, y2 = box
    return float(np.hypot((x1 + x2) / 2 - placed.center[0], (y1 + y2) / 2 - placed.center[1]))


def detect_condition(
    name: str,
    photos: Sequence[Photo],
    pack: Path,
    seed: int,
    chunk: int = 16,
    progress: bool = True,
) -> ConditionData:
    from facefleet.worker.detection.analyzer import FaceAnalyzer

    analyzer = FaceAnalyzer.from_pack(pack, keep_crops=False)
    vectors, quality, size, det, photo_ids, truth, norm = [], [], [], [], [], [], []
    missed = 0
    built_iter = BUILDERS[name](photos, seed)
    started, done = time.monotonic(), 0
    while True:
        built = [b for _, b in zip(range(chunk), built_iter, strict=False)]
        if not built:
            break
        located = analyzer.locate_parallel([b.image for b in built])  # one per stream
        for b, faces in zip(built, located, strict=True):
            boxes = [f.bbox for f in faces]
            taken: set[int] = set()
            keep = []
            for placed in b.faces:
                hit = _match(boxes, placed, taken, largest_first=name == "clean")
                if hit is None:
                    missed += 1
                    continue
                taken.add(hit)
                keep.append((placed, hit))
            faces_kept = [faces[hit] for _, hit in keep]
            embedded = analyzer.embed_located([faces_kept])[0]
            for (placed, _), face in zip(keep, embedded, strict=True):
                vectors.append(face.embedding)
                quality.append(face.quality)
                size.append(min(face.bbox[2] - face.bbox[0], face.bbox[3] - face.bbox[1]))
                det.append(face.det_score)
                norm.append(face.embedding_norm)
                photo_ids.append(b.photo_id)
                truth.append(placed.identity)
        done += len(built)
        if progress:
            rate = done / max(time.monotonic() - started, 1e-9)
            print(f"  {name}: {done} images, {rate:.1f}/s", file=sys.stderr, end="\r")
    if progress:
        print(file=sys.stderr)
    dim = analyzer.embedding_dim
    return ConditionData(
        np.asarray(vectors, dtype=np.float32).reshape(-1, dim),
        np.asarray(quality),
        np.asarray(size),
        np.asarray(det),
        photo_ids,
        truth,
        missed,
        np.asarray(norm, dtype=np.float32),
    )


def _cache_key(name: str, photos: Sequence[Photo], pack: Path, seed: int) -> str:
    digest = hashlib.sha1()
    digest.update(f"v2\0{name}\0{seed}\0{pack.resolve()}\0".encode())
    for photo in photos:
        digest.update(f"{photo.identity}/{photo.path.name}\0".encode())
    return digest.hexdigest()[:16]


def load_condition(
    name: str, photos: Sequence[Photo], pack: Path, seed: int, cache: Path | None
) -> ConditionData:
    path = cache / f"{name}-{_cache_key(name, photos, pack, seed)}.npz" if cache else None
    if path is not None and path.exists():
        with np.load(path, allow_pickle=False) as saved:
            meta = json.loads(str(saved["meta"]))
            return ConditionData(
                saved["embeddings"],
                saved["quality"],
                saved["size_px"],
                saved["det_score"],
                meta["photo_ids"],
                meta["truth"],
                meta["missed"],
                saved["norm"],
            )
    data = detect_condition(name, photos, pack, seed)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = json.dumps({"photo_ids": data.photo_ids, "truth": data.truth, "missed": data.missed})
        np.savez(
            path,
            embeddings=data.embeddings,
            quality=data.quality,
            size_px=data.size_px,
            det_score=data.det_score,
            norm=data.norm,
            meta=np.asarray(meta),
        )
    return data
