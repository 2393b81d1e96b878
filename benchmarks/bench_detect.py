"""Detection throughput: the worker's pipelined, batched path against a naive insightface loop.

Both read the same photos from S3 (a moto server started here: the worker downloads every image)
and run the same model pack and sessions:

- naive: one image at a time: GET, cv2.imdecode, SCRFD at 640x640, then per face norm_crop and
  one recogniser call (insightface FaceAnalysis.get style);
- worker: `service.run_pipeline` on batches of BATCH_SIZE: MAX_FACE_WORKERS threads download and
  decode (reduced JPEG decode) while this thread detects on aspect-fit canvases, then one batched
  recognition pass per message batch.

    .venv/bin/python benchmarks/bench_detect.py [--lfw 60] [--batch-size 10] [--workers 4]

Last line: RESULT images_per_s=.. naive_images_per_s=.. ratio=..
"""

from __future__ import annotations

import argparse
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

from facefleet.common.aws import AwsTarget  # noqa: E402
from facefleet.localstack import servers as local  # noqa: E402
from facefleet.worker.detection.analyzer import FaceAnalyzer  # noqa: E402
from facefleet.worker.detection.imaging import decode_image  # noqa: E402
from facefleet.worker.detection.service import run_pipeline  # noqa: E402


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


def naive(analyzer: FaceAnalyzer, s3, bucket: str, keys: list[str]) -> tuple[float, int]:
    from insightface.utils import face_align

    pack = analyzer.pack
    started = time.perf_counter()
    faces = 0
    for key in keys:
        data = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        _boxes, points = pack.detector.detect(image, input_size=(640, 640))
        for landmarks in points:
            crop = face_align.norm_crop(image, landmarks, image_size=112)
            embedding = pack.recogniser.get_feat(crop).flatten()
            embedding /= np.linalg.norm(embedding)
            faces += 1
    return time.perf_counter() - started, faces


def pipelined(
    analyzer: FaceAnalyzer,
    s3,
    bucket: str,
    keys: list[str],
    batch_size: int,
    executor: ThreadPoolExecutor,
) -> tuple[float, int]:
    def fetch(key: str):
        data = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        return decode_image(data, max_side=2 * analyzer.det_size)

    started = time.perf_counter()
    faces = 0
    for i in range(0, len(keys), batch_size):
        for result in run_pipeline(analyzer, keys[i : i + batch_size], fetch, executor):
            if result.error is not None:
                raise result.error
            faces += len(result.faces)
    return time.perf_counter() - started, faces


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lfw", type=int, default=60, help="LFW photos added to the set")
    parser.add_argument("--batch-size", type=int, default=10, help="images per message batch")
    parser.add_argument("--workers", type=int, default=4, help="MAX_FACE_WORKERS")
    parser.add_argument("--rec-batch", type=int, default=0, help="0: the provider's default")
    parser.add_argument("--models", type=Path, default=SHARED / "models" / "facefleet-dev")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    for key, value in local.LOCAL_AWS_ENV.items():
        os.environ.setdefault(key, value)

    files = photos(args.lfw)
    analyzer = FaceAnalyzer.from_pack(
        args.models, rec_batch_size=args.rec_batch or None, keep_crops=False
    )
    with tempfile.TemporaryDirectory() as state, local.running(state, ("moto",)) as stack:
        s3 = AwsTarget(local.LOCAL_AWS_ENV["AWS_DEFAULT_REGION"], stack.moto_url).client("s3")
        bucket = "bench-detect"
        s3.create_bucket(Bucket=bucket)
        keys = []
        for number, path in enumerate(files):
            key = f"users/bench/{number:05d}{path.suffix.lower()}"
            s3.put_object(Bucket=bucket, Key=key, Body=path.read_bytes())
            keys.append(key)
        megapixels = sum(_pixels(p) for p in files) / len(files) / 1e6
        print(
            f"photos: {len(files)} (gallery + groups + {args.lfw} lfw), "
            f"mean {megapixels:.2f} MP; model {analyzer.model_id} on {analyzer.pack.providers}"
        )
        print(
            f"batch sizes: {args.batch_size} images per message batch, "
            f"recognition batch {analyzer.rec_batch_size}, {args.workers} fetch/decode threads"
        )
        with ThreadPoolExecutor(args.workers, thread_name_prefix="fetch") as executor:
            pipelined(analyzer, s3, bucket, keys[:4], args.batch_size, executor)  # warm both
            naive(analyzer, s3, bucket, keys[:4])
            naive_s, naive_faces = naive(analyzer, s3, bucket, keys)
            worker_s, worker_faces = pipelined(
                analyzer, s3, bucket, keys, args.batch_size, executor
            )
    worker_rate, naive_rate = len(keys) / worker_s, len(keys) / naive_s
    print(f"naive : {naive_rate:6.2f} images/s ({naive_s:.1f} s, {naive_faces} faces)")
    print(f"worker: {worker_rate:6.2f} images/s ({worker_s:.1f} s, {worker_faces} faces)")
    print(
        f"RESULT images_per_s={worker_rate:.2f} naive_images_per_s={naive_rate:.2f} "
        f"ratio={worker_rate / naive_rate:.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
