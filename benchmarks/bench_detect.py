"""Detection throughput against the bound of its own models, in one run on the same photos.

The photos (gallery + groups + LFW, 144 by default) go into a moto S3 server started here on
loopback. Measured, each on all photos, with the same model pack and sessions:

- inference: the models alone, on inputs prepared beforehand: the detector on each photo's
  aspect-fit canvas, the recogniser on the photos' aligned crops in its batches, using every core
  (the faster of one single-thread stream per core and one session with an intra-op thread per
  core);
- decode: `decode_image` (reduced JPEG decode) on one thread;
- bound: inference using every core plus decoding spread over the cores,
  1 / (1 / inference + 1 / (decode x cores)): what the CPU could do if nothing else ran;
- worker (memory): `run_pipeline` on message batches of BATCH_SIZE, photos decoded from memory;
- worker (S3): the same, downloading every photo from the moto S3 (the worker's real path);
- naive: one image at a time: GET, cv2.imdecode, SCRFD at 640x640, then per face norm_crop and
  one recogniser call (insightface FaceAnalysis.get style).

Everything runs message batch by message batch, each way in turn on the same batch, for `--rounds`
rounds; a figure is the sum over the batches of each batch's best round, so that a burst of load
from other processes on the host lands on the bound and on the worker alike. Then the peak RSS of
a detection worker (a child process: model pack, `run_pipeline` on one batch of ten 12-megapixel
JPEGs made by upscaling gallery photos) is measured and checked against 1.5 GiB.

    .venv/bin/python benchmarks/bench_detect.py [--lfw 60] [--batch-size 10] [--workers 4]

Last line: RESULT images_per_s=.. naive_images_per_s=.. ratio=.. bound_images_per_s=.. of_bound=..
(images_per_s: the worker over S3; ratio: against the naive loop; of_bound: against the bound).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("FACEFLEET_SHARED", ROOT.parent / "shared")).resolve()
RSS_LIMIT_BYTES = int(1.5 * 2**30)
RSS_PHOTOS, RSS_SIZE = 10, (4000, 3000)  # ten 12-megapixel photos, one message batch

from facefleet.common.aws import AwsTarget  # noqa: E402
from facefleet.embedded import servers as local  # noqa: E402
from facefleet.worker.detection.analyzer import FaceAnalyzer  # noqa: E402
from facefleet.worker.detection.imaging import decode_image  # noqa: E402
from facefleet.worker.detection.pipeline import StageClock, run_pipeline  # noqa: E402
from facefleet.worker.models import cpu_cores  # noqa: E402


def photos(lfw: int) -> list[Path]:
    faces = SHARED / "faces"
    chosen = sorted((faces / "gallery").glob("*/*"))
    chosen += sorted(p for p in (faces / "groups").iterdir() if p.is_file())
    chosen += sorted((faces / "lfw").glob("*/*.jpg"))[:lfw]
    return chosen


def _pixels(path: Path) -> int:
    from PIL import Image

    with Image.open(path) as image:
        return image.size[0] * image.size[1]


def timed(run: Callable[[], object]) -> float:
    started = time.perf_counter()
    run()
    return time.perf_counter() - started


# -- the models alone ---------------------------------------------------------------------------
class Inference:
    """The detector and recogniser inputs of one message batch, prepared once, and two ways to run
    them on every core."""

    def __init__(self, analyzer: FaceAnalyzer, images: list[np.ndarray]) -> None:
        self.analyzer = analyzer
        self.blobs = []
        detector = analyzer.pack.detector
        # The detector inputs the worker builds: one aspect-fit canvas per image on the CPU, the
        # batch's images on one square canvas per detector call when batched (GPU).
        step = analyzer.det_batch_size
        for start in range(0, len(images), step):
            group = images[start : start + step]
            canvases = [
                detector.canvas(i.shape[1], i.shape[0], analyzer.det_size, analyzer.batched)
                for i in group
            ]
            width, height = canvases[0].size
            blob = np.empty((len(group), 3, height, width), dtype=np.float32)
            for slot, image, canvas in zip(blob, group, canvases, strict=True):
                detector.fill(slot, image, canvas)
            self.blobs.append(blob)
        crops = [face.crop for faces in analyzer.locate_parallel(images) for face in faces]
        rec = analyzer.pack.recogniser
        self.faces = len(crops)
        self.rec_blobs = [
            cv2.dnn.blobFromImages(
                crops[i : i + analyzer.rec_batch_size],
                1.0 / rec.input_std,
                rec.input_size,
                (rec.input_mean,) * 3,
                swapRB=True,
            )
            for i in range(0, len(crops), analyzer.rec_batch_size)
        ]

    def _jobs(self, det: object, rec: object) -> list[Callable[[], object]]:
        detector, recogniser = self.analyzer.pack.detector, self.analyzer.pack.recogniser
        feed = [(det, detector.input_name, b) for b in self.blobs]
        feed += [(rec, recogniser.input_name, b) for b in self.rec_blobs]
        return [lambda s=s, n=n, b=b: s.run(None, {n: b}) for s, n, b in feed]  # type: ignore[attr-defined]

    def streams(self, pool: ThreadPoolExecutor) -> None:
        """One single-thread session run per core at a time (the worker's own sessions)."""
        jobs = self._jobs(
            self.analyzer.pack.detector.session, self.analyzer.pack.recogniser.session
        )
        list(pool.map(lambda job: job(), jobs))

    def intra_op(self, sessions: tuple[object, object] | None) -> None:
        """One stream, every core inside each run (intra-op threads, not spinning)."""
        assert sessions is not None
        for job in self._jobs(*sessions):
            job()


def wide_sessions(analyzer: FaceAnalyzer) -> tuple[object, object]:
    """The pack's models as single sessions with an intra-op thread per core (CPU only)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = cpu_cores()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    files = (analyzer.pack.detector.model_file, analyzer.pack.recogniser.model_file)
    return tuple(  # type: ignore[return-value]
        ort.InferenceSession(f, options, providers=analyzer.pack.providers) for f in files
    )


# -- the worker and the naive loop --------------------------------------------------------------
def pipelined(
    analyzer: FaceAnalyzer,
    keys: list[str],
    fetch: Callable[[str, StageClock], object],
    batch_size: int,
    executor: ThreadPoolExecutor,
) -> int:
    faces = 0
    for i in range(0, len(keys), batch_size):
        for result in run_pipeline(analyzer, keys[i : i + batch_size], fetch, executor):  # type: ignore[arg-type]
            if result.error is not None:
                raise result.error
            faces += len(result.faces)
    return faces


def insightface_models(analyzer: FaceAnalyzer) -> tuple[object, object]:
    """insightface's own SCRFD and ArcFace classes on the pack's sessions: the naive loop is
    insightface's path (its letterbox, full decoding and NMS), not the worker's models."""
    from insightface.model_zoo import SCRFD, ArcFaceONNX

    pack = analyzer.pack
    detector = SCRFD(
        model_file=pack.detector.model_file,
        session=pack.detector.session,
        static_shape_sessions=False,
    )
    recogniser = ArcFaceONNX(model_file=pack.recogniser.model_file, session=pack.recogniser.session)
    return detector, recogniser


def naive(models: tuple[object, object], s3, bucket: str, keys: list[str]) -> int:
    from insightface.utils import face_align

    detector, recogniser = models
    faces = 0
    for key in keys:
        data = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        _boxes, points = detector.detect(image, input_size=(640, 640))  # type: ignore[attr-defined]
        for landmarks in points:
            crop = face_align.norm_crop(image, landmarks, image_size=112)
            embedding = recogniser.get_feat(crop).flatten()  # type: ignore[attr-defined]
            embedding /= np.linalg.norm(embedding)
            faces += 1
    return faces


# -- memory -------------------------------------------------------------------------------------
def synthesise_large(folder: Path, count: int = RSS_PHOTOS) -> list[Path]:
    """`count` 12-megapixel JPEGs: gallery photos upscaled (phone-camera sized uploads)."""
    sources = sorted((SHARED / "faces" / "gallery").glob("*/*.jpg"))[:count]
    made = []
    for number, source in enumerate(sources):
        image = cv2.imread(str(source))
        large = cv2.resize(image, RSS_SIZE, interpolation=cv2.INTER_CUBIC)
        target = folder / f"large_{number:02d}.jpg"
        cv2.imwrite(str(target), large, [cv2.IMWRITE_JPEG_QUALITY, 92])
        made.append(target)
    return made


def rss_child(models: Path, folder: Path, workers: int) -> int:
    """In a fresh process: what a detection worker holds for one batch of the large photos."""
    analyzer = FaceAnalyzer.from_pack(models)
    files = sorted(folder.glob("*.jpg"))

    def fetch(path: Path, clock: StageClock):
        data = path.read_bytes()  # a worker holds the GET's bytes the same way
        started = time.perf_counter()
        decoded = decode_image(data, max_side=2 * analyzer.det_size)
        clock.record("decode", started)
        return decoded

    with ThreadPoolExecutor(workers, thread_name_prefix="fetch") as executor:
        results = run_pipeline(analyzer, files, fetch, executor)
    faces = sum(len(r.faces) for r in results)
    errors = [repr(r.error) for r in results if r.error is not None]
    # VmHWM, not ru_maxrss: ru_maxrss survives exec, so it would report the parent's size.
    status = Path("/proc/self/status").read_text()
    peak = int(status.split("VmHWM:")[1].split()[0]) * 1024
    print(
        json.dumps({"peak_rss_bytes": peak, "photos": len(files), "faces": faces, "errors": errors})
    )
    return 0


def peak_rss(models: Path, workers: int) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        made = synthesise_large(Path(folder))
        megapixels = RSS_SIZE[0] * RSS_SIZE[1] / 1e6
        out = subprocess.run(
            [
                sys.executable,
                __file__,
                "--rss-child",
                folder,
                "--models",
                str(models),
                "--workers",
                str(workers),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        report = json.loads(out.stdout.strip().splitlines()[-1])
        report["megapixels"] = megapixels
        report["bytes"] = sum(p.stat().st_size for p in made)
        return report


# -- the run ------------------------------------------------------------------------------------
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lfw", type=int, default=60, help="LFW photos added to the set")
    parser.add_argument("--batch-size", type=int, default=10, help="images per message batch")
    parser.add_argument("--workers", type=int, default=4, help="MAX_FACE_WORKERS")
    parser.add_argument("--rec-batch", type=int, default=0, help="0: the provider's default")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; each figure is the best")
    parser.add_argument("--models", type=Path, default=SHARED / "models" / "facefleet-dev")
    parser.add_argument("--no-rss", action="store_true", help="skip the peak-RSS child")
    parser.add_argument("--rss-child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    if args.rss_child:
        return rss_child(args.models, args.rss_child, args.workers)
    for key, value in local.LOCAL_AWS_ENV.items():
        os.environ.setdefault(key, value)

    files = photos(args.lfw)
    datas = {f"users/bench/{n:05d}{p.suffix.lower()}": p.read_bytes() for n, p in enumerate(files)}
    keys = list(datas)
    analyzer = FaceAnalyzer.from_pack(
        args.models, rec_batch_size=args.rec_batch or None, keep_crops=False
    )
    cores = cpu_cores()
    max_side = 2 * analyzer.det_size
    images = [decode_image(datas[k], max_side=max_side).pixels for k in keys]
    batches = [keys[i : i + args.batch_size] for i in range(0, len(keys), args.batch_size)]
    index = {key: n for n, key in enumerate(keys)}
    prepared = [Inference(analyzer, [images[index[k]] for k in batch]) for batch in batches]
    # On a GPU, intra-op CPU threads mean nothing (and a second TensorRT engine would be built).
    wide = None if analyzer.pack.on_gpu else wide_sessions(analyzer)
    reference = insightface_models(analyzer)
    del images
    faces = sum(p.faces for p in prepared)

    def from_memory(key: str, clock: StageClock):
        started = time.perf_counter()
        decoded = decode_image(datas[key], max_side=max_side)
        clock.record("decode", started)
        return decoded

    # times[name][batch]: seconds, the best of the rounds
    times: dict[str, list[float]] = {}
    counts: dict[str, int] = {}
    with tempfile.TemporaryDirectory() as state, local.running(state, ("moto",)) as stack:
        s3 = AwsTarget(local.LOCAL_AWS_ENV["AWS_DEFAULT_REGION"], stack.moto_url).client("s3")
        bucket = "bench-detect"
        s3.create_bucket(Bucket=bucket)
        for key, data in datas.items():
            s3.put_object(Bucket=bucket, Key=key, Body=data)

        def from_s3(key: str, clock: StageClock):
            started = time.perf_counter()
            data = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
            clock.record("download", started)
            started = time.perf_counter()
            decoded = decode_image(data, max_side=max_side)
            clock.record("decode", started)
            return decoded

        megapixels = sum(_pixels(p) for p in files) / len(files) / 1e6
        print(
            f"photos: {len(files)} (gallery + groups + {args.lfw} lfw), mean {megapixels:.2f} MP, "
            f"{faces} faces; model {analyzer.model_id} on {analyzer.pack.providers}, {cores} cores"
        )
        print(
            f"batch sizes: {args.batch_size} images per message batch, recognition batch "
            f"{analyzer.rec_batch_size}; {analyzer.streams} inference streams, "
            f"{args.workers} fetch/decode threads; best of {args.rounds} rounds per batch"
        )
        with (
            ThreadPoolExecutor(args.workers, thread_name_prefix="fetch") as executor,
            ThreadPoolExecutor(cores, thread_name_prefix="bench") as pool,
        ):
            pipelined(analyzer, keys[:4], from_s3, args.batch_size, executor)  # warm everything
            naive(reference, s3, bucket, keys[:4])
            if wide is not None:
                prepared[0].intra_op(wide)
            # Batch by batch, every way in turn: a burst of load from other processes on the host
            # lands on the bound and on the worker alike.
            for _ in range(args.rounds):
                for number, (batch, inputs) in enumerate(zip(batches, prepared, strict=True)):
                    runs: dict[str, Callable[[], object]] = {
                        "inference_streams": lambda i=inputs: i.streams(pool),
                        "inference_intra_op": lambda i=inputs: i.intra_op(wide),
                        "decode": lambda b=batch: [
                            decode_image(datas[k], max_side=max_side) for k in b
                        ],
                        "memory": lambda b=batch: pipelined(
                            analyzer, b, from_memory, args.batch_size, executor
                        ),
                        "s3": lambda b=batch: pipelined(
                            analyzer, b, from_s3, args.batch_size, executor
                        ),
                        "naive": lambda b=batch: naive(reference, s3, bucket, b),
                    }
                    if wide is None:
                        del runs["inference_intra_op"]
                    for name, run in runs.items():
                        started = time.perf_counter()
                        found = run()
                        elapsed = time.perf_counter() - started
                        best = times.setdefault(name, [float("inf")] * len(batches))
                        best[number] = min(best[number], elapsed)
                        if isinstance(found, int) and _ == 0:
                            counts[name] = counts.get(name, 0) + found
    analyzer.close()

    n = len(keys)
    rate = {name: n / sum(values) for name, values in times.items()}
    inference_rate = max(rate["inference_streams"], rate.get("inference_intra_op", 0.0))
    bound = 1.0 / (1.0 / inference_rate + 1.0 / (rate["decode"] * cores))
    print(
        f"inference: {inference_rate:6.2f} images/s ({rate['inference_streams']:.2f} as "
        f"{analyzer.streams} streams, {rate.get('inference_intra_op', float('nan')):.2f} as one "
        f"{cores}-thread stream)"
    )
    print(f"decode   : {rate['decode']:6.2f} images/s on one thread")
    print(f"bound    : {bound:6.2f} images/s (inference on every core + decode over {cores} cores)")
    for name, label in (
        ("memory", "worker, from memory"),
        ("s3", "worker, over S3"),
        ("naive", "naive loop"),
    ):
        print(
            f"{label:20s}: {rate[name]:6.2f} images/s, {rate[name] / bound:.2f} of the bound "
            f"({counts[name]} faces)"
        )
    if not args.no_rss:
        report = peak_rss(args.models, args.workers)
        verdict = "under" if report["peak_rss_bytes"] < RSS_LIMIT_BYTES else "OVER"
        print(
            f"peak RSS: {report['peak_rss_bytes'] / 2**20:.0f} MiB for one batch of "
            f"{report['photos']} x {report['megapixels']:.0f}-megapixel JPEGs "
            f"({report['bytes'] / 2**20:.0f} MiB of files, {report['faces']} faces), "
            f"{verdict} the {RSS_LIMIT_BYTES / 2**30:.1f} GiB limit"
        )
        if report["errors"]:
            print(f"peak RSS run errors: {report['errors']}")
    worker_rate, naive_rate = rate["s3"], rate["naive"]
    print(
        f"RESULT images_per_s={worker_rate:.2f} naive_images_per_s={naive_rate:.2f} "
        f"ratio={worker_rate / naive_rate:.2f} bound_images_per_s={bound:.2f} "
        f"of_bound={worker_rate / bound:.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
