"""The lab's three conditions built from a folder in the LFW layout (clean, degraded, composite).

`select_photos` picks a seeded subset of the folder; `BUILDERS[condition](photos, seed)` yields the
images of one condition (`Built`), each with the faces placed in it (`Placed`: identity, centre,
width), so a detection can be labelled by where it is (`embeddings_cache`). See `evaluate` for
what each condition is.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

CONDITIONS = ("clean", "degraded", "composite")
LFW_FACE_WIDTH = 97.0  # median detected face width in a 250x250 deep-funneled LFW photo


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
