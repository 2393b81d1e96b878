"""`facefleet evaluate PATH`: grouping quality on a folder in the LFW layout, three conditions.

For every photo of `PATH/Person/Person_0001.jpg` (or a seeded subset: --max-people, --min-photos,
--distractors, --max-photos) the harness builds, with a fixed seed:

- clean: the photos as they are. A detector may find several faces in an LFW photo (people in the
  background); the labelled face is the one nearest the centre among the large ones.
- degraded: each photo shrunk so the face is 20-48 px wide, placed at a random spot of a larger
  grey canvas, some blurred, some grayscale, JPEG quality 25-60.
- composite: photos of 2-6 distinct people tiled into one image (faces 24-64 px, degraded as
  above): one photo id for all of them, so the same-photo rule matters.

In the degraded and composite conditions the labelled face is the detection nearest where the
photo's face was placed; unlabelled extra faces are dropped and undetected ones counted. All
faces go through the project's detection code (`FaceAnalyzer`: SCRFD, alignment, quality,
ArcFace). Embeddings are cached per condition (--cache), so a rerun costs only the grouping.

FaceFleet runs with one fixed parameter set (`ClusterParams()`) in a seeded arrival order, in
message-sized batches; the baselines (rule (a) at defaults and tuned, DBSCAN tuned, Chinese
whispers tuned: tuned per condition on the truth) run on the same embeddings. The last line is
`RESULT ...` with the headline figures.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from collections.abc import Hashable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from facefleet.worker.grouping.baselines import NeighbourGraph, as_labels, run_baselines
from facefleet.worker.grouping.clustering import (
    ClusterParams,
    FaceInput,
    UserClusterState,
    add_faces,
    partition,
)
from facefleet.worker.grouping.index import FaceIndex
from facefleet.worker.grouping.metrics import GroupingScores, ari, score
from facefleet.worker.grouping.recluster import recluster

CONDITIONS = ("clean", "degraded", "composite")
LFW_FACE_WIDTH = 97.0  # median detected face width in a 250x250 deep-funneled LFW photo
DEFAULT_PATH = Path("../shared/faces/lfw")
DEFAULT_PACK = Path("../shared/models/facefleet-dev")
BATCH_FACES = 32  # faces per grouping call: about one SQS message batch


@dataclass(frozen=True)
class Photo:
    identity: str
    path: Path


@dataclass(frozen=True)
class Placed:
    """A labelled face as placed in a built image: its identity and expected centre / width."""

    identity: str
    center: tuple[float, float]
    width: float


@dataclass(frozen=True)
class Built:
    photo_id: str
    image: np.ndarray
    faces: list[Placed]


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


# -- the photo set ------------------------------------------------------------------------------


def select_photos(
    root: Path,
    *,
    min_photos: int = 1,
    max_people: int | None = None,
    distractors: int | None = None,
    max_photos: int | None = None,
    seed: int = 0,
    exclude: frozenset[str] = frozenset(),
) -> list[Photo]:
    """People with >= min_photos photos (a seeded sample of max_people) plus one-photo people.

    With --min-photos above 1, one-photo people join as distractors: all of them, or a seeded
    sample of `distractors` (default: as many as the people sampled when max_people is set).
    """
    if not root.is_dir():
        raise FileNotFoundError(f"no photo folder at {root}")
    people = {
        d.name: sorted(d.glob("*.jpg"))
        for d in sorted(root.iterdir())
        if d.is_dir() and d.name not in exclude
    }
    rng = np.random.default_rng(seed)
    multi = [name for name, files in people.items() if len(files) >= max(min_photos, 2)]
    single = [name for name, files in people.items() if len(files) == 1]
    if min_photos <= 1:
        multi = [name for name, files in people.items() if len(files) >= 2]
    if max_people is not None and max_people < len(multi):
        multi = sorted(rng.choice(multi, max_people, replace=False).tolist())
    count = (
        distractors
        if distractors is not None
        else (max_people if max_people is not None else len(single))
    )
    if count < len(single):
        single = sorted(rng.choice(single, count, replace=False).tolist())
    photos: list[Photo] = []
    for name in sorted(multi + single):
        files = people[name][:max_photos] if max_photos else people[name]
        photos.extend(Photo(name, f) for f in files)
    return photos


# -- building the conditions --------------------------------------------------------------------


def _read(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f"cannot read the photo {path}")
    return image


def _degrade(tile: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    if rng.random() < 0.4:
        tile = cv2.GaussianBlur(tile, (0, 0), float(rng.uniform(0.6, 1.5)))
    if rng.random() < 0.3:
        tile = cv2.cvtColor(cv2.cvtColor(tile, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR)
    return tile


def _jpeg(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    quality = int(rng.integers(25, 61))
    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    decoded = cv2.imdecode(data, cv2.IMREAD_COLOR)
    if decoded is None:
        raise RuntimeError("JPEG decoding failed")
    return decoded


def _shrunk(image: np.ndarray, face_width: float) -> np.ndarray:
    scale = face_width / LFW_FACE_WIDTH
    size = (max(8, round(image.shape[1] * scale)), max(8, round(image.shape[0] * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def _canvas(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    base = rng.integers(60, 200, size=3).astype(np.uint8)
    return np.ascontiguousarray(np.broadcast_to(base, (height, width, 3)))


def build_clean(photos: Sequence[Photo], seed: int) -> Iterator[Built]:
    for photo in photos:
        image = _read(photo.path)
        h, w = image.shape[:2]
        yield Built(
            photo.path.stem,
            image,
            [Placed(photo.identity, (w / 2, h / 2), LFW_FACE_WIDTH * w / 250)],
        )


def build_degraded(photos: Sequence[Photo], seed: int) -> Iterator[Built]:
    rng = np.random.default_rng([seed, 1])
    for photo in photos:
        face_width = float(rng.uniform(20, 48))
        tile = _degrade(_shrunk(_read(photo.path), face_width), rng)
        th, tw = tile.shape[:2]
        height, width = int(th * rng.uniform(2, 4)), int(tw * rng.uniform(2, 4))
        canvas = _canvas(height, width, rng)
        y, x = int(rng.integers(0, height - th + 1)), int(rng.integers(0, width - tw + 1))
        canvas[y : y + th, x : x + tw] = tile
        yield Built(
            photo.path.stem,
            _jpeg(canvas, rng),
            [Placed(photo.identity, (x + tw / 2, y + th / 2), face_width)],
        )


def build_composite(photos: Sequence[Photo], seed: int) -> Iterator[Built]:
    """Groups of 2-6 photos of distinct people, tiled in a jittered grid."""
    rng = np.random.default_rng([seed, 2])
    pending = [photos[i] for i in rng.permutation(len(photos))]
    number = 0
    while pending:
        size = int(rng.integers(2, 7))
        group: list[Photo] = []
        for photo in list(pending):
            if len(group) == size:
                break
            if all(p.identity != photo.identity for p in group):
                group.append(photo)
                pending.remove(photo)
        if len(group) < 2 and number:
            break  # the leftover photos of one person cannot form a group shot
        yield _composite(f"composite{number:05d}", group, rng)
        number += 1


def _composite(photo_id: str, group: Sequence[Photo], rng: np.random.Generator) -> Built:
    tiles = []
    for photo in group:
        width = float(rng.uniform(24, 64))
        image = _read(photo.path)
        tiles.append((photo.identity, width, _degrade(_shrunk(image, width), rng)))
    columns = min(3, len(tiles))
    rows = -(-len(tiles) // columns)
    cell = max(max(t.shape[0], t.shape[1]) for _, _, t in tiles) + 16
    canvas = _canvas(rows * cell, columns * cell, rng)
    placed = []
    for n, (identity, width, tile) in enumerate(tiles):
        th, tw = tile.shape[:2]
        y = (n // columns) * cell + int(rng.integers(0, cell - th + 1))
        x = (n % columns) * cell + int(rng.integers(0, cell - tw + 1))
        canvas[y : y + th, x : x + tw] = tile
        placed.append(Placed(identity, (x + tw / 2, y + th / 2), width))
    return Built(photo_id, _jpeg(canvas, rng), placed)


BUILDERS = {"clean": build_clean, "degraded": build_degraded, "composite": build_composite}


# -- detection + embedding ----------------------------------------------------------------------


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
        located = [analyzer.locate(b.image) for b in built]
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


# -- grouping and reporting ---------------------------------------------------------------------


def arrival_order(data: ConditionData, seed: int) -> list[int]:
    """Faces in a seeded photo order (the faces of one photo arrive together, as detected)."""
    photos = sorted(set(data.photo_ids))
    rank = {p: r for r, p in enumerate(np.random.default_rng(seed).permutation(len(photos)))}
    position = {photo: rank[i] for i, photo in enumerate(photos)}
    return sorted(range(len(data.truth)), key=lambda i: (position[data.photo_ids[i]], i))


def run_facefleet(
    faces: Sequence[FaceInput],
    order: Sequence[int],
    params: ClusterParams,
) -> UserClusterState:
    state = UserClusterState()
    index = FaceIndex(len(faces[0].embedding))
    stream = [faces[i] for i in order]
    for start in range(0, len(stream), BATCH_FACES):
        add_faces(state, stream[start : start + BATCH_FACES], index, params)
    return state


@dataclass
class ConditionResult:
    name: str
    faces: int
    missed: int
    rows: dict[str, GroupingScores]
    settings: dict[str, dict[str, Any]]
    incremental_vs_full: float
    order_ari: float
    seconds: float


def evaluate_condition(
    name: str, data: ConditionData, seed: int, params: ClusterParams
) -> ConditionResult:
    started = time.monotonic()
    faces = data.faces()
    ids = [face.face_id for face in faces]
    truth: list[Hashable] = list(data.truth)
    order = arrival_order(data, seed)
    state = run_facefleet(faces, order, params)
    labels = partition(state, ids)
    rows = {"FaceFleet": score(truth, labels, data.photo_ids)}
    full, _ = recluster(faces, params)
    other = run_facefleet(faces, arrival_order(data, seed + 1), params)
    graph = NeighbourGraph.build(data.embeddings)
    settings: dict[str, dict[str, Any]] = {"FaceFleet": {}}
    for key, tuned in run_baselines(graph, order, truth).items():
        rows[tuned.name] = score(truth, as_labels(tuned.labels), data.photo_ids)
        settings[tuned.name] = tuned.setting
        del key
    return ConditionResult(
        name,
        len(faces),
        data.missed,
        rows,
        settings,
        ari(labels, partition(full, ids)),
        ari(labels, partition(other, ids)),
        time.monotonic() - started,
    )


def best_baseline(result: ConditionResult) -> tuple[str, GroupingScores]:
    tuned = {k: v for k, v in result.rows.items() if k != "FaceFleet" and "defaults" not in k}
    name = max(tuned, key=lambda k: tuned[k].bcubed_f1)
    return name, tuned[name]


def format_table(result: ConditionResult) -> str:
    lines = [
        f"== {result.name}: {result.faces} faces ({result.missed} not detected), "
        f"incremental vs full ARI {result.incremental_vs_full:.4f}, "
        f"two orders ARI {result.order_ari:.4f}",
        f"{'method':<24}{'pairP':>7}{'pairR':>7}{'pairF1':>7}{'B3-P':>7}{'B3-R':>7}{'B3-F1':>7}"
        f"{'ARI':>7}{'people':>8}{'truth':>7}{'unasg':>7}{'same-ph':>8}  setting",
    ]
    for method, s in result.rows.items():
        setting = ",".join(f"{k}={v}" for k, v in result.settings.get(method, {}).items())
        lines.append(
            f"{method:<24}{s.pairwise_precision:7.3f}{s.pairwise_recall:7.3f}"
            f"{s.pairwise_f1:7.3f}{s.bcubed_precision:7.3f}{s.bcubed_recall:7.3f}"
            f"{s.bcubed_f1:7.3f}{s.ari:7.3f}{s.people_created:8d}{s.people_true:7d}"
            f"{s.unassigned_share:7.3f}{s.same_photo_merges:8d}  {setting}"
        )
    name, best = best_baseline(result)
    ours = result.rows["FaceFleet"]
    ratio = (1 - ours.bcubed_f1) / max(1 - best.bcubed_f1, 1e-9)
    lines.append(
        f"BCubed error FaceFleet / best tuned baseline ({name}): {ratio:.3f} (target <= 0.75)"
    )
    return "\n".join(lines)


def result_line(results: dict[str, ConditionResult]) -> str:
    parts = []
    for name in CONDITIONS:
        result = results.get(name)
        ours = f"{result.rows['FaceFleet'].bcubed_f1:.4f}" if result else "nan"
        base = f"{best_baseline(result)[1].bcubed_f1:.4f}" if result else "nan"
        parts += [f"{name}_bcubed_f1={ours}", f"{name}_baseline_bcubed_f1={base}"]
    composite = results.get("composite")
    if composite:
        ours_merges = composite.rows["FaceFleet"].same_photo_merges
        base_merges = composite.rows["rule (a) defaults"].same_photo_merges
    parts.append(f"same_photo_merges={ours_merges if composite else 'nan'}")
    parts.append(f"baseline_same_photo_merges={base_merges if composite else 'nan'}")
    worst_full = min(r.incremental_vs_full for r in results.values())
    parts.append(f"incremental_vs_full_ari={worst_full:.4f}")
    parts.append(f"order_ari={min(r.order_ari for r in results.values()):.4f}")
    return "RESULT " + " ".join(parts)


# -- command line -------------------------------------------------------------------------------


def evaluate(args: argparse.Namespace) -> int:
    photos = select_photos(
        Path(args.path),
        min_photos=args.min_photos,
        max_people=args.max_people,
        distractors=args.distractors,
        max_photos=args.max_photos,
        seed=args.seed,
    )
    print(f"{len(photos)} photos of {len({p.identity for p in photos})} people from {args.path}")
    cache = None if args.no_cache else Path(args.cache).expanduser()
    results: dict[str, ConditionResult] = {}
    for name in args.conditions:
        data = load_condition(name, photos, Path(args.pack), args.seed, cache)
        if len(data.truth) < 2:
            print(f"== {name}: fewer than two faces detected, skipped")
            continue
        results[name] = evaluate_condition(name, data, args.seed, ClusterParams())
        print(format_table(results[name]), flush=True)
    if not results:
        print("no condition had faces to group", file=sys.stderr)
        return 1
    print(result_line(results))
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "path",
        nargs="?",
        default=str(DEFAULT_PATH),
        help="folder in the LFW layout Person/Person_0001.jpg",
    )
    parser.add_argument("--pack", default=str(DEFAULT_PACK), help="model pack folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--min-photos",
        type=int,
        default=1,
        help="people with at least this many photos (one-photo people are added as distractors)",
    )
    parser.add_argument(
        "--max-people",
        type=int,
        default=None,
        help="a seeded sample of this many multi-photo people",
    )
    parser.add_argument(
        "--distractors",
        type=int,
        default=None,
        help="one-photo people to add (default: all, or --max-people)",
    )
    parser.add_argument("--max-photos", type=int, default=None, help="photos per person cap")
    parser.add_argument("--conditions", nargs="+", choices=CONDITIONS, default=list(CONDITIONS))
    parser.add_argument(
        "--cache", default="~/.cache/facefleet/evaluate", help="embedding cache folder"
    )
    parser.add_argument("--no-cache", action="store_true")


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="grouping quality on an LFW-layout folder",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(parser)
    parser.set_defaults(func=evaluate)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="facefleet-evaluate", description=__doc__)
    add_arguments(parser)
    return evaluate(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
