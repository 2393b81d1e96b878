"""Image bytes to a BGR array: bounded, EXIF-oriented, every failure a typed reason.

The header is read first and the pixel count checked against MAX_IMAGE_PIXELS before any pixel
is decoded, so a decompression bomb or a 20000x20000 upload costs a few bytes of parsing, not
gigabytes. Large JPEGs are decoded at a reduced scale (libjpeg's DCT scaling via Pillow's
`draft`) when the caller only needs `max_side` pixels: detection runs at 640 and crops at 112, so
full-resolution decoding of a 12-megapixel photo is wasted work. Coordinates map back to the
original through `DecodedImage.scale`.

HEIC/HEIF (the iPhone's default) decodes through pillow-heif's Pillow opener (libheif with
libde265). Why each choice is the fast one, measured on 12-megapixel photos (4032x3024) made from
the shared photos (`make bench-phone`, 2 shared cores, 2026-12-06, CPU time, best of 3 runs):
- JPEG: libjpeg's DCT scaling (`draft`) decodes 1/2, 1/4 or 1/8 of each side straight from the
  coefficients: 32 images/s per core at 2016x1512 on the bench-phone set (41 on smoother photos)
  against 15 at full size. On a GPU host nvJPEG (NVIDIA's nvImageCodec) could take it off the
  CPU; bench_phone.py measures it there first (README, Detection), the worker does not use it.
- HEIC: HEVC has no reduced decode; every pixel of every 512x512 tile is decoded (0.41 s of CPU
  per 12-MP photo of the bench-phone set, 2.4 images/s per core). What can be had:
  * a phone writes the photo as a grid of tiles (8x6 for 12 MP) and libheif decodes tiles on up
    to `HEIF_DECODE_THREADS` threads: one photo's latency falls with the cores (the last image of
    a message batch, a single upload), the CPU per photo does not (0.45-0.52 s on one thread,
    0.43-0.45 on 2, 0.44-0.48 on 4: the threads cost nothing when the cores are busy anyway);
  * an embedded thumbnail at least as large as detection needs is decoded instead of the image
    (`draft`); phones embed small ones (a few hundred pixels wide), so it is used only when one
    is big enough;
  * a faster HEVC decoder: FFmpeg 8's (through PyAV 18) decoded the same grid files in 0.39-0.41 s
    of CPU against libde265's 0.52-0.54 s, 1.3x, not the 3x that would change the instance's
    bound; it is not used: it needs its own grid assembly and irot/imir/clap transforms (libheif
    applies them) and the PyAV wheel ships GPL codecs. libheif's FFmpeg decoder plugin is not in
    Debian bookworm (libheif 1.15 there has no plugins) and pillow-heif's wheel loads none.
A file that is an image in a format nothing here reads (JPEG XL, camera RAW, PSD, ...) is
`unsupported`, told apart from `corrupt` by its signature; reasons are sentences for people, never
object reprs.
"""

from __future__ import annotations

import io
import os
import re
import warnings
from dataclasses import dataclass
from enum import StrEnum

import cv2
import numpy as np
import pillow_heif
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError


def _cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


# Threads libheif may use for one HEIC's grid tiles: every core the process has, so a lone photo
# decodes on all of them; with one decode per core already running the tiles just queue.
HEIF_DECODE_THREADS = _cores()
pillow_heif.register_heif_opener(decode_threads=HEIF_DECODE_THREADS, thumbnails=True)


def set_heif_decode_threads(threads: int) -> None:
    """Threads for the tiles of one HEIC (process-wide: libheif's option is global)."""
    if threads < 1:
        raise ValueError("HEIF decode threads must be at least 1")
    pillow_heif.options.DECODE_THREADS = threads


# Our own pixel limit is checked first; Pillow's (which warns, then raises at twice the limit)
# would otherwise interfere with a deployment that raises MAX_IMAGE_PIXELS.
Image.MAX_IMAGE_PIXELS = None
ImageFile.LOAD_TRUNCATED_IMAGES = False


class FailureReason(StrEnum):
    EMPTY = "empty"
    TOO_LARGE = "too_large"  # more bytes than MAX_IMAGE_BYTES
    TOO_MANY_PIXELS = "too_many_pixels"  # more pixels than MAX_IMAGE_PIXELS (bomb guard)
    CORRUPT = "corrupt"  # not an image, truncated, or undecodable
    UNSUPPORTED = "unsupported"  # an image, in a format this worker cannot decode
    TOO_SMALL = "too_small"  # a side too short to hold a face (or to resize to the detector)
    MISSING = "missing"  # no such object (or no access to it)
    PROCESSING_ERROR = "processing_error"  # decoded, then an unexpected error in the pipeline


# The shortest side a photo may have: below it no face fits, and the detector's resize to its
# canvas would round that side to zero pixels (an OpenCV assertion, once a crash).
MIN_SIDE_PIXELS = 16

# Formats whose `draft` decodes fewer pixels: JPEG by DCT scaling, HEIF by an embedded thumbnail.
_DRAFT_FORMATS = frozenset({"JPEG", "HEIF"})

# Signatures of image formats Pillow and pillow-heif do not read: these are `unsupported`.
_UNSUPPORTED_SIGNATURES: tuple[tuple[int, bytes, str], ...] = (
    (0, b"\xff\x0a", "JPEG XL"),
    (4, b"JXL ", "JPEG XL"),
    (0, b"8BPS", "Photoshop (PSD)"),
    (0, b"II*\x00\x10\x00\x00\x00CR", "Canon RAW (CR2)"),
    (0, b"FUJIFILMCCD-RAW", "Fujifilm RAW (RAF)"),
    (0, b"IIRO", "Olympus RAW (ORF)"),
    (0, b"IIU\x00", "Panasonic RAW (RW2)"),
    (4, b"ftypcrx ", "Canon RAW (CR3)"),
    (0, b"%PDF", "PDF"),
    (0, b"<svg", "SVG"),
    (0, b"<?xml", "SVG/XML"),
)
_OBJECT_REPR = re.compile(r"\s*<[^<>]* object at 0x[0-9a-fA-F]+>")


class ImageError(ValueError):
    """The image can never be processed; `reason` is stored on the image document."""

    def __init__(self, reason: FailureReason, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class DecodedImage:
    pixels: np.ndarray  # BGR uint8 (H, W, 3), oriented upright
    width: int  # the original's width and height, after orientation
    height: int
    format: str
    scale: float = 1.0  # decoded pixels per original pixel (< 1 after a reduced decode)


def _flatten(image: Image.Image) -> Image.Image:
    """RGB for every mode: alpha composited on white, 16-bit and float grey rescaled."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        values = np.asarray(image, dtype=np.float64)
        top = float(values.max()) if values.size else 0.0
        scaled = values * (255.0 / top) if top > 0 else values
        return Image.fromarray(scaled.clip(0, 255).astype(np.uint8), "L").convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")


def describe_error(error: BaseException, limit: int = 300) -> str:
    """An exception as a sentence for people: its first line, no `<_io.BytesIO object at
    0x...>` in it, bounded in length."""
    lines = _OBJECT_REPR.sub("", str(error)).strip().splitlines()
    text = lines[0].strip().rstrip(":").strip() if lines else ""
    return (text or type(error).__name__)[:limit]


def unsupported_format(data: bytes) -> str | None:
    """The name of an image format this worker cannot decode, when the bytes start like one."""
    head = data[:32]
    for offset, signature, name in _UNSUPPORTED_SIGNATURES:
        if head[offset : offset + len(signature)] == signature:
            return name
    if head[4:8] == b"ftyp":  # an ISO-BMFF image brand pillow-heif does not register
        return f"ISO media ({head[8:12].decode('ascii', 'replace').strip()})"
    return None


def read_header(data: bytes, max_pixels: int) -> Image.Image:
    """Open the image lazily (header only) and enforce the pixel and side bounds."""
    if not data:
        raise ImageError(FailureReason.EMPTY, "the object has no bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        name = unsupported_format(data)
        if name is not None:
            raise ImageError(
                FailureReason.UNSUPPORTED, f"{name} images are not supported"
            ) from None
        raise ImageError(
            FailureReason.CORRUPT,
            f"the {len(data)} bytes are not an image in any supported format "
            "(JPEG, PNG, HEIC/HEIF, WebP, AVIF, GIF, TIFF, BMP, ...)",
        ) from None
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageError(
            FailureReason.CORRUPT, f"the image header is unreadable: {describe_error(error)}"
        ) from None
    width, height = image.size
    if width <= 0 or height <= 0:
        raise ImageError(FailureReason.CORRUPT, f"image header gives size {width}x{height}")
    if min(width, height) < MIN_SIDE_PIXELS:
        raise ImageError(
            FailureReason.TOO_SMALL,
            f"the image is {width}x{height} pixels: a side under {MIN_SIDE_PIXELS} pixels "
            "can hold no face",
        )
    if width * height > max_pixels:
        raise ImageError(
            FailureReason.TOO_MANY_PIXELS,
            f"{width}x{height} = {width * height} pixels exceeds MAX_IMAGE_PIXELS={max_pixels}",
        )
    return image


def decode_image(
    data: bytes,
    *,
    max_pixels: int = 50_000_000,
    max_bytes: int | None = None,
    max_side: int | None = None,
) -> DecodedImage:
    """Decode bytes to an upright BGR image, refusing empty, oversized and corrupt input.

    With `max_side`, a JPEG is decoded at the smallest DCT scale (1/2, 1/4, 1/8) that keeps its
    longer side at least `max_side`, and a HEIC as its smallest embedded thumbnail that does
    (none: the image itself); other formats decode at full size.
    """
    if max_bytes is not None and len(data) > max_bytes:
        raise ImageError(
            FailureReason.TOO_LARGE, f"{len(data)} bytes exceeds MAX_IMAGE_BYTES={max_bytes}"
        )
    image = read_header(data, max_pixels)
    stored_width, _ = image.size
    try:
        image.seek(0)  # multi-frame formats: the first frame
        if max_side and image.format in _DRAFT_FORMATS and max(image.size) >= 2 * max_side:
            ratio = max_side / max(image.size)
            image.draft("RGB", (int(image.size[0] * ratio) + 1, int(image.size[1] * ratio) + 1))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            image.load()
            decoded_width = image.size[0]
            oriented = ImageOps.exif_transpose(image)
            rgb = _flatten(oriented)
            pixels = cv2.cvtColor(np.asarray(rgb), cv2.COLOR_RGB2BGR)
    except ImageError:
        raise
    except (OSError, SyntaxError, ValueError, EOFError, MemoryError) as error:
        raise ImageError(
            FailureReason.CORRUPT, f"the image data cannot be decoded: {describe_error(error)}"
        ) from None
    scale = decoded_width / stored_width
    height, width = pixels.shape[:2]
    return DecodedImage(
        pixels=np.ascontiguousarray(pixels),
        width=round(width / scale),
        height=round(height / scale),
        format=str(image.format or "unknown"),
        scale=scale,
    )
