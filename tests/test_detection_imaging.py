"""Image decoding: orientation, modes, and every refusal with its reason (no servers needed)."""

from __future__ import annotations

import io
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from facefleet.worker.detection.imaging import FailureReason, ImageError, decode_image


def encode(image: Image.Image, fmt: str = "JPEG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose valid IHDR claims width x height, with almost no pixel data behind it."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    idat = b"IDAT" + zlib.compress(b"\0" * 64)
    return (
        b"\x89PNG\r\n\x1a\n"
        + struct.pack(">I", len(ihdr))
        + chunk
        + struct.pack(">I", zlib.crc32(chunk))
        + struct.pack(">I", len(idat) - 4)
        + idat
        + struct.pack(">I", zlib.crc32(idat))
        + struct.pack(">I", 0)
        + b"IEND"
        + struct.pack(">I", zlib.crc32(b"IEND"))
    )


def test_exif_orientation_is_applied() -> None:
    image = Image.new("RGB", (40, 20), (255, 0, 0))
    image.paste((0, 0, 255), (0, 0, 10, 20))  # blue band on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    decoded = decode_image(encode(image, exif=exif.tobytes()))
    assert decoded.pixels.shape == (40, 20, 3)
    assert (decoded.width, decoded.height) == (20, 40)
    top = decoded.pixels[:8].reshape(-1, 3).mean(axis=0)  # BGR: blue band now on top
    assert top[0] > 200 and top[2] < 60


def test_png_with_alpha_and_grayscale_and_16_bit(faces_dir: Path) -> None:
    alpha = decode_image((faces_dir / "groups" / "edge_32bit.png").read_bytes())
    assert alpha.pixels.dtype == np.uint8 and alpha.pixels.shape[2] == 3
    transparent = Image.new("RGBA", (20, 20), (0, 0, 0, 0))
    assert decode_image(encode(transparent, "PNG")).pixels.min() == 255  # composited on white
    grey = decode_image(encode(Image.new("L", (30, 20), 77)))
    assert grey.pixels.shape == (20, 30, 3)
    deep = Image.fromarray(np.full((24, 24), 4000, dtype=np.uint16))
    assert decode_image(encode(deep, "PNG")).pixels.shape == (24, 24, 3)


def test_large_jpeg_is_decoded_reduced_with_the_scale() -> None:
    data = encode(Image.new("RGB", (2600, 1400), (10, 200, 30)))
    decoded = decode_image(data, max_side=640)
    assert decoded.scale == 0.25
    assert decoded.pixels.shape == (350, 650, 3)
    assert (decoded.width, decoded.height) == (2600, 1400)


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"", FailureReason.EMPTY),
        (b"this is not an image at all", FailureReason.CORRUPT),
        (encode(Image.new("RGB", (300, 300), 5))[:400], FailureReason.CORRUPT),  # truncated
    ],
)
def test_bad_bytes_are_refused_with_a_reason(data: bytes, reason: FailureReason) -> None:
    with pytest.raises(ImageError) as caught:
        decode_image(data)
    assert caught.value.reason == reason
    assert "object at 0x" not in str(caught.value)  # reasons are for people


def test_heic_the_iphone_default_is_decoded() -> None:
    image = Image.new("RGB", (64, 48), (20, 30, 220))
    data = encode(image, "HEIF")
    assert data[4:12] == b"ftypheic"
    decoded = decode_image(data)
    assert decoded.format == "HEIF" and decoded.pixels.shape == (48, 64, 3)
    assert decoded.pixels.reshape(-1, 3).mean(axis=0)[0] > 180  # BGR: blue


def _textured(width: int, height: int) -> Image.Image:
    """A photo-like test card: gradients and a blue band on the left, so tiles differ."""
    x = np.linspace(0, 255, width, dtype=np.float32)[None, :]
    y = np.linspace(0, 255, height, dtype=np.float32)[:, None]
    pixels = np.stack(
        [np.broadcast_to(x, (height, width)), np.broadcast_to(y, (height, width)), (x + y) / 2],
        axis=2,
    ).astype(np.uint8)
    pixels[:, : width // 4] = (0, 0, 255)
    return Image.fromarray(pixels, "RGB")


@pytest.fixture(scope="module")
def grid_heic() -> bytes:
    """A HEIC as phones write it: a grid of tiles (here 4x3 tiles of 128 px), EXIF orientation 6
    (the phone held upright), which pillow-heif stores as the image's rotation."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(_textured(512, 384), "HEIF", quality=90, tile_size=128, exif=exif.tobytes())


def test_a_grid_heic_decodes_to_the_same_pixels_whatever_the_thread_count(
    grid_heic: bytes,
) -> None:
    import pillow_heif

    from facefleet.worker.detection import imaging

    tiling = pillow_heif.open_heif(grid_heic).info["tiling"]
    assert tiling["num_columns"] * tiling["num_rows"] == 12  # a real grid of 4x3 tiles
    decoded = {}
    try:
        for threads in (1, 2, 4):
            imaging.set_heif_decode_threads(threads)
            decoded[threads] = decode_image(grid_heic).pixels
    finally:
        imaging.set_heif_decode_threads(imaging.HEIF_DECODE_THREADS)
    assert np.array_equal(decoded[1], decoded[2]) and np.array_equal(decoded[1], decoded[4])
    # Orientation kept: 512x384 stored, displayed upright as 384 wide, 512 high, the band that
    # was on the left now on top (BGR: blue).
    assert decoded[1].shape == (512, 384, 3)
    top = decoded[1][:100].reshape(-1, 3).mean(axis=0)
    bottom = decoded[1][-20:].reshape(-1, 3).mean(axis=0)  # the stored right edge: red 255
    assert top[0] > 200 and top[2] < 60 and bottom[2] > 200
    with pytest.raises(ValueError):
        imaging.set_heif_decode_threads(0)


def test_a_heic_thumbnail_large_enough_for_detection_is_decoded_instead() -> None:
    data = encode(_textured(960, 720), "HEIF", quality=50, thumbnails=[480, 96])
    reduced = decode_image(data, max_side=400)
    assert reduced.pixels.shape == (360, 480, 3) and reduced.scale == 0.5
    assert (reduced.width, reduced.height) == (960, 720)  # the original's size, for the boxes
    # A thumbnail smaller than detection needs is never used: the image itself is decoded.
    full = decode_image(data, max_side=480)
    assert full.pixels.shape == (720, 960, 3) and full.scale == 1.0


@pytest.mark.parametrize(
    "data, name",
    [
        (b"\xff\x0a" + b"\x00" * 64, "JPEG XL"),
        (b"\x00\x00\x00\x0cJXL \r\n\x87\n" + b"\x00" * 64, "JPEG XL"),
        (b"8BPS\x00\x01" + b"\x00" * 64, "Photoshop"),
        (b"\x00\x00\x00\x18ftypcrx " + b"\x00" * 64, "CR3"),
    ],
)
def test_images_in_formats_nothing_reads_are_unsupported_not_corrupt(
    data: bytes, name: str
) -> None:
    with pytest.raises(ImageError) as caught:
        decode_image(data)
    assert caught.value.reason == FailureReason.UNSUPPORTED
    assert name in caught.value.detail


def test_a_one_pixel_wide_image_is_too_small_not_a_crash() -> None:
    """A 1x40000 PNG once tripped an OpenCV assertion in the detector's resize."""
    with pytest.raises(ImageError) as caught:
        decode_image(encode(Image.new("RGB", (1, 40000), 128), "PNG"))
    assert caught.value.reason == FailureReason.TOO_SMALL
    assert "1x40000" in caught.value.detail


def test_a_20000_square_header_is_refused_before_decoding() -> None:
    data = png_header_only(20000, 20000)
    started = time.perf_counter()
    with pytest.raises(ImageError) as caught:
        decode_image(data)  # default MAX_IMAGE_PIXELS: 50 megapixels
    assert caught.value.reason == FailureReason.TOO_MANY_PIXELS
    assert "20000x20000" in caught.value.detail
    assert time.perf_counter() - started < 0.5


def test_pixel_and_byte_limits() -> None:
    data = encode(Image.new("RGB", (1200, 1000), 5))
    with pytest.raises(ImageError) as caught:
        decode_image(data, max_pixels=1_000_000)
    assert caught.value.reason == FailureReason.TOO_MANY_PIXELS
    with pytest.raises(ImageError) as caught:
        decode_image(data, max_bytes=100)
    assert caught.value.reason == FailureReason.TOO_LARGE
    assert decode_image(data, max_pixels=1_200_000).pixels.shape == (1000, 1200, 3)
