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
message-sized batches (incremental), then its state is consolidated (`consolidate`). Baselines on
the same embeddings: Immich's rule at its defaults (detection minScore 0.7: faces under it stay
unassigned); rule (a), DBSCAN and Chinese whispers each tuned on the truth separately for BCubed
F1, pairwise F1 and ARI (the oracle ceiling), and each tuned once on the developers' split
(`--dev-seed`, none of the evaluated people) and run unchanged here; the all-singletons floor.
Agreement: incremental vs a full batch re-cluster and two arrival orders, before and after
consolidation; the ten largest people are named (one face pinned each) and consolidated to count
named people renamed or lost. The last line is `RESULT ...` with the headline figures
(FaceFleet's after consolidation; the best truth-tuned baseline per metric).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from collections.abc import Hashable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from facefleet.tools.quality.baselines import (
    NeighbourGraph,
    as_labels,
    dev_settings,
    run_baselines,
)
from facefleet.tools.quality.scores import GroupingScores, ari, score
from facefleet.tools.quality.truthful_user import (
    BUDGETS,
    centroid_ranking,
    facefleet_ranking,
    scores_after_answers,
)
from facefleet.worker.grouping.consolidate import consolidate
from facefleet.worker.grouping.edits import move_face, name_person
from facefleet.worker.grouping.index import FaceIndex
from facefleet.worker.grouping.placement import add_faces
from facefleet.worker.grouping.state import ClusterParams, FaceInput, UserClusterState, partition

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


FACEFLEET = "FaceFleet consolidated"
INCREMENTAL = "FaceFleet incremental"
METRIC_FIELDS = {"bcubed": "bcubed_f1", "pairwise": "pairwise_f1", "ari": "ari"}
NAMED_PEOPLE = 10  # the largest people are named (and one face each pinned) before consolidating


@dataclass
class ConditionResult:
    name: str
    faces: int
    missed: int
    rows: dict[str, GroupingScores]
    settings: dict[str, dict[str, Any]]
    # Agreement: incremental vs the full batch re-cluster, and two arrival orders, before and
    # after each order's state is consolidated.
    incremental_vs_full: float
    order_ari: float
    consolidated_vs_full: float
    consolidated_order_ari: float
    named: int
    named_renamed: int
    named_lost: int
    seconds: float
    # A truthful user's answers (answers per 100 true people -> scores), FaceFleet's questions
    # and the centroid ranking's, from the consolidated library (`truthful_user`).
    answers: dict[int, GroupingScores] = field(default_factory=dict)
    baseline_answers: dict[int, GroupingScores] = field(default_factory=dict)


def _copy(state: UserClusterState) -> UserClusterState:
    import copy

    return copy.deepcopy(state)


def consolidated(
    state: UserClusterState, params: ClusterParams, method: str | None = None
) -> UserClusterState:
    """A consolidated copy of `state` (with a lab `method`'s partition when given)."""
    out = _copy(state)
    labels = None
    if method is not None and method != "infomap":
        from facefleet.tools.quality.batch_methods import method_labels

        labels = method_labels(out, method, params)
    consolidate(out, params, labels=labels)
    return out


def named_check(state: UserClusterState, params: ClusterParams) -> tuple[int, int, int]:
    """Name the largest people and pin one face of each, consolidate: (named, renamed, lost).

    Renamed: the id no longer carries its name. Lost: the person is empty or lost a pinned face.
    """
    trial = _copy(state)
    largest = sorted(trial.people, key=lambda p: (-len(trial.people[p].members), p))
    named = largest[:NAMED_PEOPLE]
    pins = {}
    for person in named:
        name_person(trial, person, f"person-{person}")
        face = min(trial.people[person].members)
        move_face(trial, trial.face_ids[face], person)
        pins[person] = face
    consolidate(trial, params)
    renamed = sum(
        1 for p in named if p not in trial.people or trial.people[p].name != f"person-{p}"
    )
    lost = sum(
        1
        for p in named
        if p not in trial.people
        or not trial.people[p].members
        or pins[p] not in trial.people[p].members
    )
    return len(named), renamed, lost


def evaluate_condition(
    name: str,
    data: ConditionData,
    seed: int,
    params: ClusterParams,
    dev: dict[str, dict[str, Any]] | None = None,
    method: str | None = None,
) -> ConditionResult:
    started = time.monotonic()
    faces = data.faces()
    ids = [face.face_id for face in faces]
    truth: list[Hashable] = list(data.truth)
    order = arrival_order(data, seed)
    state = run_facefleet(faces, order, params)
    other = run_facefleet(faces, arrival_order(data, seed + 1), params)
    labels = partition(state, ids)
    after = consolidated(state, params, method)
    after_other = consolidated(other, params, method)
    blank = UserClusterState()  # the same library with no incremental history
    for face in sorted(faces, key=lambda f: f.face_id):
        blank.add_face(face, params)
    full = consolidated(blank, params, method)
    rows = {
        FACEFLEET: score(truth, partition(after, ids), data.photo_ids),
        INCREMENTAL: score(truth, labels, data.photo_ids),
    }
    graph = NeighbourGraph.build(data.embeddings)
    settings: dict[str, dict[str, Any]] = {FACEFLEET: {}, INCREMENTAL: {}}
    for tuned in run_baselines(graph, order, truth, data.det_score.tolist(), dev).values():
        rows[tuned.name] = score(truth, as_labels(tuned.labels), data.photo_ids)
        settings[tuned.name] = tuned.setting
    named, renamed, lost = named_check(state, params)
    truth_of = dict(zip(ids, data.truth, strict=True))
    answers = scores_after_answers(after, truth_of, data.photo_ids, facefleet_ranking)
    baseline_answers = scores_after_answers(after, truth_of, data.photo_ids, centroid_ranking)
    return ConditionResult(
        name,
        len(faces),
        data.missed,
        rows,
        settings,
        ari(labels, partition(full, ids)),
        ari(labels, partition(other, ids)),
        ari(partition(after, ids), partition(full, ids)),
        ari(partition(after, ids), partition(after_other, ids)),
        named,
        renamed,
        lost,
        time.monotonic() - started,
        answers,
        baseline_answers,
    )


def best_baseline(result: ConditionResult, metric: str = "bcubed") -> tuple[str, GroupingScores]:
    """The best truth-tuned baseline for `metric` (each baseline was tuned for it)."""
    tuned = {k: v for k, v in result.rows.items() if k.endswith(f"tuned[{metric}]")}
    field_name = METRIC_FIELDS[metric]
    name = max(tuned, key=lambda k: getattr(tuned[k], field_name))
    return name, tuned[name]


def format_table(result: ConditionResult) -> str:
    lines = [
        f"== {result.name}: {result.faces} faces ({result.missed} not detected)",
        f"agreement ARI: incremental vs full {result.incremental_vs_full:.4f}, two orders "
        f"{result.order_ari:.4f}; after consolidation: vs full {result.consolidated_vs_full:.4f}, "
        f"two orders {result.consolidated_order_ari:.4f} (target >= 0.98)",
        f"named people: {result.named} named before consolidation, {result.named_renamed} renamed, "
        f"{result.named_lost} lost or emptied (target 0)",
        f"{'method':<34}{'pairP':>7}{'pairR':>7}{'pairF1':>7}{'B3-P':>7}{'B3-R':>7}{'B3-F1':>7}"
        f"{'ARI':>7}{'people':>8}{'truth':>7}{'unasg':>7}{'same-ph':>8}  setting",
    ]
    for method, s in result.rows.items():
        setting = ",".join(f"{k}={v}" for k, v in result.settings.get(method, {}).items())
        lines.append(
            f"{method:<34}{s.pairwise_precision:7.3f}{s.pairwise_recall:7.3f}"
            f"{s.pairwise_f1:7.3f}{s.bcubed_precision:7.3f}{s.bcubed_recall:7.3f}"
            f"{s.bcubed_f1:7.3f}{s.ari:7.3f}{s.people_created:8d}{s.people_true:7d}"
            f"{s.unassigned_share:7.3f}{s.same_photo_merges:8d}  {setting}"
        )
    ours = result.rows[FACEFLEET]
    lines.append(
        "a truthful user's answers (per 100 true people), pairwise F1 / BCubed F1 / ARI, "
        "FaceFleet's questions vs the centroid ranking:"
    )
    lines.append(f"  {'0':>3}: {_triple(ours)}")
    for k in BUDGETS:
        if k in result.answers:
            lines.append(
                f"  {k:>3}: {_triple(result.answers[k])}   centroid ranking "
                f"{_triple(result.baseline_answers[k])}"
            )
    for metric, field_name in METRIC_FIELDS.items():
        name, best = best_baseline(result, metric)
        mine, theirs = getattr(ours, field_name), getattr(best, field_name)
        verdict = "met" if mine >= theirs - 1e-9 else f"short by {theirs - mine:.4f}"
        lines.append(
            f"target {metric}: FaceFleet {mine:.4f} vs best truth-tuned baseline {theirs:.4f} "
            f"({name}): {verdict}"
        )
    return "\n".join(lines)


def _triple(s: GroupingScores) -> str:
    return f"{s.pairwise_f1:.3f} / {s.bcubed_f1:.3f} / {s.ari:.3f}"


def result_line(results: dict[str, ConditionResult]) -> str:
    """The headline figures; FaceFleet's are after consolidation (what a user's library shows
    once the pass has run; the incremental figures are in the tables)."""
    parts = []
    for name in CONDITIONS:
        result = results.get(name)
        for metric, field_name in METRIC_FIELDS.items():
            key = "bcubed_f1" if metric == "bcubed" else field_name
            ours = f"{getattr(result.rows[FACEFLEET], field_name):.4f}" if result else "nan"
            base = (
                f"{getattr(best_baseline(result, metric)[1], field_name):.4f}" if result else "nan"
            )
            parts += [f"{name}_{key}={ours}", f"{name}_baseline_{key}={base}"]
    composite = results.get("composite")
    immich = (
        next((k for k in composite.rows if k.startswith("Immich")), None) if composite else None
    )
    ours_merges = composite.rows[FACEFLEET].same_photo_merges if composite else "nan"
    base_merges = composite.rows[immich].same_photo_merges if composite and immich else "nan"
    parts.append(f"same_photo_merges={ours_merges}")
    parts.append(f"baseline_same_photo_merges={base_merges}")
    values = list(results.values())
    parts.append(f"incremental_vs_full_ari={min(r.incremental_vs_full for r in values):.4f}")
    parts.append(f"order_ari={min(r.order_ari for r in values):.4f}")
    parts.append(
        f"consolidated_incremental_vs_full_ari={min(r.consolidated_vs_full for r in values):.4f}"
    )
    parts.append(f"consolidated_order_ari={min(r.consolidated_order_ari for r in values):.4f}")
    parts.append(f"named_renamed={sum(r.named_renamed for r in values)}")
    parts.append(f"named_lost={sum(r.named_lost for r in values)}")
    parts.extend(_answer_and_precision_keys(results))
    return "RESULT " + " ".join(parts)


def _answer_and_precision_keys(results: dict[str, ConditionResult]) -> list[str]:
    """Per condition: pairwise F1 after k answers per 100 people (FaceFleet's questions and the
    centroid ranking's), and the precisions after consolidation and of the incremental state."""
    parts = []
    for name in CONDITIONS:
        result = results.get(name)
        for k in BUDGETS:
            ours = result.answers.get(k) if result else None
            base = result.baseline_answers.get(k) if result else None
            parts.append(f"{name}_pairwise_f1_at_{k}={_value(ours, 'pairwise_f1')}")
            parts.append(f"{name}_baseline_pairwise_f1_at_{k}={_value(base, 'pairwise_f1')}")
        for row, prefix in ((FACEFLEET, ""), (INCREMENTAL, "incremental_")):
            scores = result.rows.get(row) if result else None
            for metric in ("pairwise_precision", "bcubed_precision"):
                parts.append(f"{name}_{prefix}{metric}={_value(scores, metric)}")
    return parts


def _value(scores: GroupingScores | None, field_name: str) -> str:
    return "nan" if scores is None else f"{getattr(scores, field_name):.4f}"


# -- command line -------------------------------------------------------------------------------


def _selection(args: argparse.Namespace, seed: int, exclude: frozenset[str]) -> list[Photo]:
    return select_photos(
        Path(args.path),
        min_photos=args.min_photos,
        max_people=args.max_people,
        distractors=args.distractors,
        max_photos=args.max_photos,
        seed=seed,
        exclude=exclude,
    )


def dev_baseline_settings(
    args: argparse.Namespace, photos: Sequence[Photo], cache: Path | None
) -> dict[str, dict[str, Any]]:
    """The developers' split: the same selection rule with `--dev-seed`, none of the evaluated
    people; each baseline is tuned once there and then runs unchanged on the folder evaluated."""
    dev_photos = _selection(args, args.dev_seed, frozenset(p.identity for p in photos))
    print(f"developers' split: {len(dev_photos)} photos (seed {args.dev_seed}), for baselines")
    splits = []
    for name in args.conditions:
        data = load_condition(name, dev_photos, Path(args.pack), args.dev_seed, cache)
        if len(data.truth) >= 2:
            graph = NeighbourGraph.build(data.embeddings)
            splits.append((graph, arrival_order(data, args.dev_seed), list(data.truth)))
    return dev_settings(splits)


def evaluate(args: argparse.Namespace) -> int:
    photos = _selection(args, args.seed, frozenset())
    cache = None if args.no_cache else Path(args.cache).expanduser()
    if args.on_dev:
        # The developers' split itself (where FaceFleet's settings were chosen); its
        # dev-tuned baselines would be tuned on what they are scored on, so there are none.
        photos = _selection(args, args.dev_seed, frozenset(p.identity for p in photos))
        args.seed, args.no_dev = args.dev_seed, True
        print(f"developers' split (seed {args.dev_seed}):", end=" ")
    print(f"{len(photos)} photos of {len({p.identity for p in photos})} people from {args.path}")
    dev = None if args.no_dev else dev_baseline_settings(args, photos, cache)
    params = ClusterParams()
    results: dict[str, ConditionResult] = {}
    for name in args.conditions:
        data = load_condition(name, photos, Path(args.pack), args.seed, cache)
        if len(data.truth) < 2:
            print(f"== {name}: fewer than two faces detected, skipped")
            continue
        results[name] = evaluate_condition(name, data, args.seed, params, dev, args.batch_method)
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
    parser.add_argument(
        "--dev-seed", type=int, default=1, help="seed of the developers' split (baseline tuning)"
    )
    parser.add_argument(
        "--no-dev", action="store_true", help="skip the dev-tuned baselines (no second split)"
    )
    parser.add_argument(
        "--on-dev",
        action="store_true",
        help="evaluate the developers' split itself (--dev-seed, none of the --seed people)",
    )
    parser.add_argument(
        "--batch-method",
        default=None,
        choices=("infomap", "leiden", "hdbscan", "average", "finch"),
        help="lab: the batch partition consolidation uses (default: the shipped one, Infomap)",
    )


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
