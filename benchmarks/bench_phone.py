"""Phone photos on the real pipeline: decode per format, the worker over S3, the instance bound.

A phone-size set is made at run time from the shared photos (never committed; cached under
out/bench-phone/ so a second run skips the encoding): each photo is upscaled to a phone's size
with a little sensor-like grain (an upscaled photo is smoother than a camera's, and decode cost
follows the bitrate), then written as a phone writes it:

- jpeg: 4032x3024 (12 MP), quality 92 (an Android camera's default size and format);
- heic: 4032x3024 as a grid of 512x512 HEVC tiles (what an iPhone writes: 8x6 tiles), through
  pillow-heif's own grid encoder (`tile_size=512`; x265 `ultrafast` preset, quality 60: about
  the 2-3 MB an iPhone file has);
- png: a 1170x2532 screenshot (an iPhone's screen) with the photo in it;
- webp: 1600x1200, quality 80 (what messaging apps and the web hand around).

Measured, in one run, side by side on the same files:
- decode per core: `decode_image` (the worker's own, reduced JPEG decode, HEIC tiles on one
  thread) as CPU seconds per image, so other processes on a shared host count less (they still
  slow it through the caches: on a busy host, take the best of several runs); the HEIC
  latency with libheif decoding the tiles on every core is printed beside it;
- the worker over S3: `run_pipeline` (the detection pipeline: download from a moto S3 on loopback,
  decode, detect, embed) on message batches of each format, and on the format mix;
- the bound of this host: 1 / (1 / inference + 1 / (decode x cores)), as bench_detect.py, with
  inference and decode timed by the wall clock in turn with the worker, group by group (best of
  the rounds), so that load from other processes lands on the bound and the worker alike;
- the bound of each instance type: min(decode on its vCPUs, the device's rate), from
  `facefleet.common.instances` with the decode rates measured here.

    .venv/bin/python benchmarks/bench_phone.py [--per-format 6] [--mix iphone|android|heic=..,..]

Last line: RESULT jpeg_decode_per_core=.. heic_decode_per_core=.. jpeg_images_per_s=..
heic_images_per_s=.. mix_images_per_s=.. of_bound=.. (images/s; the worker over S3; of_bound: the
worker on the mix against this host's bound for the mix).
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("FACEFLEET_SHARED", ROOT.parent / "shared")).resolve()
CACHE = ROOT / "out" / "bench-phone"
SET_VERSION = "v1"  # change when the way the set is made changes

from bench_detect import Inference, pipelined, wide_sessions  # noqa: E402
from facefleet.common import instances  # noqa: E402
from facefleet.common.aws import AwsTarget  # noqa: E402
from facefleet.embedded import servers as local  # noqa: E402
from facefleet.worker.detection import imaging  # noqa: E402
from facefleet.worker.detection.analyzer import FaceAnalyzer  # noqa: E402
from facefleet.worker.detection.pipeline import StageClock  # noqa: E402
from facefleet.worker.models import cpu_cores  # noqa: E402

PHONE = (4032, 3024)
SCREEN = (1170, 2532)
WEBP = (1600, 1200)
SUFFIX = {"jpeg": ".jpg", "heic": ".heic", "png": ".png", "webp": ".webp"}


# -- the set ------------------------------------------------------------------------------------
def _grain(image: np.ndarray, seed: int) -> np.ndarray:
    noise = np.random.default_rng(seed).normal(0.0, 3.0, image.shape)
    return np.clip(image.astype(np.float32) + noise, 0, 255).astype(np.uint8)


def _encode(fmt: str, photo: np.ndarray, seed: int) -> bytes:
    from PIL import Image

    if fmt == "png":  # a screenshot: the photo in a white screen with bars, as an app shows it
        screen = np.full((SCREEN[1], SCREEN[0], 3), 248, np.uint8)
        screen[:140] = screen[-200:] = 30
        fit = min(SCREEN[0] / photo.shape[1], (SCREEN[1] - 340) / photo.shape[0])
        width, height = round(photo.shape[1] * fit), round(photo.shape[0] * fit)
        top, left = (SCREEN[1] - height) // 2, (SCREEN[0] - width) // 2
        shown = cv2.resize(photo, (width, height), interpolation=cv2.INTER_AREA)
        screen[top : top + height, left : left + width] = shown
        return bytes(cv2.imencode(".png", screen)[1])
    size = WEBP if fmt == "webp" else PHONE
    resized = cv2.resize(photo, size, interpolation=cv2.INTER_CUBIC)
    image = _grain(resized, seed)
    if fmt == "jpeg":
        return bytes(cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 92])[1])
    rgb = Image.fromarray(cv2.cvtColor(image, cv2.COLOR_BGR2RGB))
    buffer = io.BytesIO()
    if fmt == "webp":
        rgb.save(buffer, "WEBP", quality=80)
    else:
        rgb.save(buffer, "HEIF", quality=60, tile_size=512, enc_params={"preset": "ultrafast"})
    return buffer.getvalue()


def phone_set(per_format: int) -> dict[str, list[bytes]]:
    """`per_format` files of each format, made from the gallery photos (cached)."""
    sources = sorted((SHARED / "faces" / "gallery").glob("*/*.jpg"))
    if len(sources) < per_format:
        raise SystemExit(f"bench-phone: need {per_format} photos in {SHARED}/faces/gallery")
    chosen = sources[:: max(1, len(sources) // per_format)][:per_format]
    made: dict[str, list[bytes]] = {fmt: [] for fmt in instances.FORMATS}
    CACHE.mkdir(parents=True, exist_ok=True)
    for number, source in enumerate(chosen):
        photo = None
        for fmt in instances.FORMATS:
            target = CACHE / f"{SET_VERSION}_{source.stem}{SUFFIX[fmt]}"
            if not target.exists():
                photo = cv2.imread(str(source)) if photo is None else photo
                print(f"making {target.name}", file=sys.stderr, flush=True)
                target.write_bytes(_encode(fmt, photo, number))
            made[fmt].append(target.read_bytes())
    return made


def mixed(mix: dict[str, float], count: int) -> list[str]:
    """`count` formats in the mix's shares, interleaved (largest remainder)."""
    order: list[str] = []
    given = dict.fromkeys(mix, 0)
    for n in range(1, count + 1):
        fmt = max(mix, key=lambda f: mix[f] * n - given[f])
        given[fmt] += 1
        order.append(fmt)
    return order


# -- measurements -------------------------------------------------------------------------------
def decode_cpu_s(datas: list[bytes], max_side: int, rounds: int) -> float:
    """CPU seconds per image of `decode_image` on one thread, the best round."""
    best = float("inf")
    for _ in range(rounds):
        started = time.process_time()
        for data in datas:
            imaging.decode_image(data, max_side=max_side)
        best = min(best, (time.process_time() - started) / len(datas))
    return best


def decode_wall_s(datas: list[bytes], max_side: int, rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        for data in datas:
            imaging.decode_image(data, max_side=max_side)
        best = min(best, (time.perf_counter() - started) / len(datas))
    return best


def gpu_jpeg(datas: list[bytes], max_side: int, rounds: int) -> str:
    """nvJPEG (through NVIDIA's nvImageCodec) on the phone JPEGs, to the size the CPU's reduced
    decode gives, pixels back on the host: one at a time and as one batch. A GPU host only; the
    worker does not use it yet (README, Detection: the figure decides whether it should)."""
    try:
        from nvidia import nvimgcodec  # type: ignore[import-not-found]
    except ImportError:
        return "nvJPEG: nvidia-nvimgcodec-cu12 not installed (a GPU host: gpu-requirements.txt)"
    try:
        decoder = nvimgcodec.Decoder()
        params = nvimgcodec.DecodeParams(apply_exif_orientation=True)

        def to_host(image: object) -> np.ndarray:
            pixels = np.asarray(image.cpu())  # type: ignore[attr-defined]
            height, width = pixels.shape[:2]
            scale = 1 / 2 ** int(np.log2(max(1, max(height, width) // max_side)))
            size = (round(width * scale), round(height * scale))
            return cv2.resize(pixels, size, interpolation=cv2.INTER_AREA)

        one = batch = float("inf")
        for _ in range(rounds):
            started = time.perf_counter()
            for data in datas:
                to_host(decoder.decode(data, params=params))
            one = min(one, time.perf_counter() - started)
            started = time.perf_counter()
            for image in decoder.decode(datas, params=params):
                to_host(image)
            batch = min(batch, time.perf_counter() - started)
    except Exception as error:  # the measurement is optional: say why it is missing
        return f"nvJPEG: not measured ({type(error).__name__}: {error})"
    return (
        f"nvJPEG: {len(datas) / one:.1f} images/s one at a time, {len(datas) / batch:.1f} as "
        f"one batch of {len(datas)} (pixels back on the host, resized as the CPU's draft)"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-format", type=int, default=10, help="photos of each format")
    parser.add_argument("--mix", default=instances.DEFAULT_MIX, help="iphone, android, f=x,..")
    parser.add_argument("--batch-size", type=int, default=10, help="images per message batch")
    parser.add_argument("--workers", type=int, default=4, help="MAX_FACE_WORKERS")
    parser.add_argument("--rounds", type=int, default=2, help="rounds; each figure is the best")
    parser.add_argument("--models", type=Path, default=SHARED / "models" / "facefleet-dev")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    mix = instances.parse_mix(args.mix)
    for key, value in local.LOCAL_AWS_ENV.items():
        os.environ.setdefault(key, value)

    made = phone_set(args.per_format)
    cores = cpu_cores()
    analyzer = FaceAnalyzer.from_pack(args.models, keep_crops=False)
    max_side = 2 * analyzer.det_size
    order = mixed(mix, args.per_format * len(instances.FORMATS))
    taken = dict.fromkeys(instances.FORMATS, 0)
    datas: dict[str, bytes] = {}
    for n, fmt in enumerate(order):  # the mix's files, cycling through each format's photos
        datas[f"users/bench/{n:04d}{SUFFIX[fmt]}"] = made[fmt][taken[fmt] % len(made[fmt])]
        taken[fmt] += 1
    for fmt in instances.FORMATS:
        for n, data in enumerate(made[fmt]):
            datas[f"users/bench/{fmt}/{n:04d}{SUFFIX[fmt]}"] = data
    groups = {fmt: [k for k in datas if f"/{fmt}/" in k] for fmt in instances.FORMATS}
    groups["mix"] = [k for k in datas if k.count("/") == 2]

    print(
        f"set: {args.per_format} photos per format from {SHARED}/faces/gallery; mean size "
        + ", ".join(
            f"{fmt} {np.mean([len(d) for d in made[fmt]]) / 2**20:.2f} MiB"
            for fmt in instances.FORMATS
        )
    )
    print(
        f"mix {args.mix}: "
        + ", ".join(f"{fmt} {share:.0%}" for fmt, share in mix.items())
        + f"; model {analyzer.model_id} on {analyzer.pack.providers}, {cores} cores, "
        f"{args.workers} fetch/decode threads, best of {args.rounds} rounds"
    )

    # Decode per core: one thread, libheif's tile threads at 1 so the CPU time is one core's.
    imaging.set_heif_decode_threads(1)
    per_core = {
        fmt: 1.0 / decode_cpu_s(made[fmt], max_side, args.rounds) for fmt in instances.FORMATS
    }
    heic_one = decode_wall_s(made["heic"], max_side, args.rounds)
    imaging.set_heif_decode_threads(cores)
    heic_all = decode_wall_s(made["heic"], max_side, args.rounds)
    imaging.set_heif_decode_threads(imaging.HEIF_DECODE_THREADS)
    for fmt in instances.FORMATS:
        print(f"decode {fmt:5s}: {per_core[fmt]:6.2f} images/s per core (CPU time, one thread)")
    if analyzer.pack.on_gpu:
        print(gpu_jpeg(made["jpeg"], max_side, args.rounds))
    print(
        f"HEIC latency: {heic_one:.3f} s with the tiles on one thread, {heic_all:.3f} s on "
        f"{cores} ({heic_one / heic_all:.2f}x)"
    )

    keys = groups
    prepared = {
        name: Inference(
            analyzer, [imaging.decode_image(datas[k], max_side=max_side).pixels for k in group]
        )
        for name, group in keys.items()
    }
    wide = None if analyzer.pack.on_gpu else wide_sessions(analyzer)
    worker: dict[str, float] = {}
    inference: dict[str, float] = {}
    decode: dict[str, float] = {}
    with (
        tempfile.TemporaryDirectory() as state,
        local.running(state, ("moto",)) as stack,
        ThreadPoolExecutor(args.workers, thread_name_prefix="fetch") as executor,
        ThreadPoolExecutor(cores, thread_name_prefix="bench") as pool,
    ):
        s3 = AwsTarget(local.LOCAL_AWS_ENV["AWS_DEFAULT_REGION"], stack.moto_url).client("s3")
        bucket = "bench-phone"
        s3.create_bucket(Bucket=bucket)
        for key, data in datas.items():
            s3.put_object(Bucket=bucket, Key=key, Body=data)

        def from_s3(key: str, clock: StageClock) -> imaging.DecodedImage:
            started = time.perf_counter()
            data = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
            clock.record("download", started)
            started = time.perf_counter()
            decoded = imaging.decode_image(data, max_side=max_side)
            clock.record("decode", started)
            return decoded

        pipelined(analyzer, keys["jpeg"][:2], from_s3, args.batch_size, executor)  # warm up
        for _ in range(args.rounds):
            for name, group in keys.items():  # each way in turn, as bench_detect.py
                started = time.perf_counter()
                prepared[name].streams(pool)
                streams = time.perf_counter() - started
                if wide is not None:
                    started = time.perf_counter()
                    prepared[name].intra_op(wide)
                    streams = min(streams, time.perf_counter() - started)
                inference[name] = max(inference.get(name, 0.0), len(group) / streams)
                group_data = [datas[k] for k in group]
                rate = 1.0 / decode_wall_s(group_data, max_side, 1)
                decode[name] = max(decode.get(name, 0.0), rate)
                started = time.perf_counter()
                pipelined(analyzer, group, from_s3, args.batch_size, executor)
                rate = len(group) / (time.perf_counter() - started)
                worker[name] = max(worker.get(name, 0.0), rate)
    analyzer.close()

    def host_bound(name: str) -> float:
        return 1.0 / (1.0 / inference[name] + 1.0 / (decode[name] * cores))

    print("images/s, wall clock: inference on every core, decode on one thread, this host's bound")
    print(
        f"{'':6s} {'inference':>10s} {'decode':>8s} {'host bound':>11s} {'worker/S3':>10s} "
        f"{'of bound':>9s}"
    )
    for name in keys:
        bound = host_bound(name)
        print(
            f"{name:6s} {inference[name]:10.2f} {decode[name]:8.2f} {bound:11.2f} "
            f"{worker[name]:10.2f} {worker[name] / bound:9.2f}"
        )

    measured = {fmt: instances.Rate(per_core[fmt], "this run", True) for fmt in instances.FORMATS}
    table = instances.throughput_table(measured)
    columns = [*instances.FORMATS, *(f"{m} mix" for m in instances.MIXES)]
    print("instance bound, images/s: min(decode measured here x vCPUs, device rate)")
    print(f"{'':14s}" + "".join(f"{c:>12s}" for c in columns) + "  device rate")
    for facts in instances.GPU_INSTANCES:
        device = instances.DEVICE_RATE[facts.gpu]
        row = table[facts.instance_type]
        print(
            f"{facts.instance_type:14s}"
            + "".join(f"{row[c]:12.1f}" for c in columns)
            + f"  {device.images_per_s:.0f} ({'measured' if device.measured else 'anchored'})"
        )
    mix_bound = host_bound("mix")
    print(
        f"RESULT jpeg_decode_per_core={per_core['jpeg']:.2f} "
        f"heic_decode_per_core={per_core['heic']:.2f} jpeg_images_per_s={worker['jpeg']:.2f} "
        f"heic_images_per_s={worker['heic']:.2f} mix_images_per_s={worker['mix']:.2f} "
        f"of_bound={worker['mix'] / mix_bound:.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
