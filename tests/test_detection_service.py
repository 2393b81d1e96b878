"""The detection worker against the moto server and nx-27017: in-process handler runs, and real
worker processes for idle exit, SIGTERM and SIGKILL."""

from __future__ import annotations

import io
import json
import os
import signal
import time
from pathlib import Path

import boto3
import pytest
from botocore.config import Config
from PIL import Image

from facefleet.common.config import Settings
from facefleet.common.documents import ImageStatus
from facefleet.common.messages import DetectionRequest
from facefleet.common.names import RETRYABLE_EXIT_CODE
from facefleet.common.repository import GALLERY_DEFAULT_DB, GalleryRepository, connect
from facefleet.common.s3keys import image_key
from facefleet.worker.detection.analyzer import FaceAnalyzer
from facefleet.worker.detection.service import DetectionService
from facefleet.worker.runtime.consumer import Consumer, ConsumerConfig, ReceivedMessage
from facefleet.worker.runtime.outcome import Outcome
from tests.sqs_helpers import counts, create_bucket, create_queue, receive_all, spawn, wait_for
from tests.test_detection_imaging import png_header_only

SHARED = Path(os.environ.get("FACEFLEET_SHARED", Path(__file__).resolve().parents[2] / "shared"))
USER = "u1"


@pytest.fixture(scope="module")
def analyzer() -> FaceAnalyzer:
    return FaceAnalyzer.from_pack(SHARED / "models" / "facefleet-dev")


class Stack:
    """One test's queues, buckets and database, and the worker environment pointing at them."""

    def __init__(self, env, max_receive_count: int = 2) -> None:
        self.env = env
        names = env.names
        self.queue = create_queue(env, names.indexing_queue, max_receive_count)
        self.group_queue = create_queue(env, names.group_face_queue)
        self.bucket = create_bucket(env, f"{names.prefix}-gallery")
        self.face_bucket = create_bucket(env, f"{names.prefix}-faces")
        self.s3 = env.aws.client("s3")
        self.sqs = env.aws.client("sqs")
        self.repository = GalleryRepository(connect(env.gallery_uri, GALLERY_DEFAULT_DB))

    def environment(self, **extra: str) -> dict[str, str]:
        values = {
            **self.env.environment(),
            "QUEUE_URL": self.queue.url,
            "GROUP_FACE_QUEUE_URL": self.group_queue.url,
            "BUCKET_NAME": self.bucket,
            "FACE_GROUP_BUCKET_NAME": self.face_bucket,
            "MODEL_DIR": str(SHARED / "models" / "facefleet-dev"),
            "POLL_WAIT_SECONDS": "1",
            "IDLE_EXIT_SECONDS": "2",
            "MESSAGE_VISIBILITY_TIMEOUT": "30",
            "BATCH_SIZE": "5",
            "MAX_FACE_WORKERS": "2",
        }
        values.update(extra)
        return values

    def settings(self, **extra: str) -> Settings:
        return Settings.from_env(self.environment(**extra))

    def upload(self, image_id: str, data: bytes) -> DetectionRequest:
        key = image_key(USER, image_id)
        self.s3.put_object(Bucket=self.bucket, Key=key, Body=data)
        return DetectionRequest(USER, image_id, self.bucket, key)

    def send(self, body: str) -> None:
        self.sqs.send_message(QueueUrl=self.queue.url, MessageBody=body)

    def drain(self, analyzer: FaceAnalyzer, **extra: str) -> int:
        settings = self.settings(**extra)
        service = DetectionService.from_settings(settings, analyzer)
        try:
            config = ConsumerConfig.from_settings(settings, settings.queue_url)
            return Consumer(config, service.handle).run()
        finally:
            service.close()

    def grouping_requests(self) -> list[dict]:
        return [json.loads(m["Body"]) for m in receive_all(self.env, self.group_queue.url, 0)]


def test_six_faces_stored_once_even_when_redelivered(env, analyzer, faces_dir: Path) -> None:
    stack = Stack(env)
    request = stack.upload("six", (faces_dir / "groups" / "group_six.jpg").read_bytes())
    stack.send(request.to_body())
    namespace = f"{env.names.prefix}-metrics"
    assert stack.drain(analyzer, METRICS_TO_CLOUDWATCH="true", METRICS_NAMESPACE=namespace) == 0
    cloudwatch = env.aws.client("cloudwatch")
    names = {m["MetricName"] for m in cloudwatch.list_metrics(Namespace=namespace)["Metrics"]}
    assert {"ImagesProcessed", "FacesDetected", "ProcessingTimeMs"} <= names

    image = stack.repository.get_image(USER, "six")
    assert image is not None and image.status == ImageStatus.DONE
    assert image.face_count == 6 and image.model_id == analyzer.model_id
    assert {"download", "decode", "detect", "embed", "store", "total"} <= set(image.timings_ms)
    faces = stack.repository.faces_of_images(USER, ["six"])
    assert len(faces) == 6
    assert all(f.embedding.shape == (128,) for f in faces)
    first_ids = sorted(f.doc_id for f in faces)
    crops = stack.s3.list_objects_v2(Bucket=stack.face_bucket)["Contents"]
    assert sorted(c["Key"] for c in crops) == sorted(str(f.crop_key) for f in faces)
    assert stack.grouping_requests() == [
        {"type": "group", "user_id": USER, "image_ids": ["six"], "version": 1}
    ]

    stack.send(request.to_body())  # a redelivery (or a re-run) of the same message
    assert stack.drain(analyzer) == 0
    assert stack.repository.count_faces(USER) == 6
    assert sorted(f.doc_id for f in stack.repository.faces_of_images(USER, ["six"])) == first_ids
    assert counts(env, stack.queue.url) == (0, 0)


def _png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), 128).save(buffer, "PNG")
    return buffer.getvalue()


def test_bad_inputs_fail_the_image_or_dead_letter_the_message(env, analyzer) -> None:
    stack = Stack(env, max_receive_count=2)
    requests = {
        "corrupt": stack.upload("corrupt", b"\xff\xd8\xff not really a jpeg"),
        "empty": stack.upload("empty", b""),
        "huge": stack.upload("huge", png_header_only(20000, 20000)),
        "missing": DetectionRequest(USER, "missing", stack.bucket, image_key(USER, "missing")),
        "thin": stack.upload("thin", _png(1, 40000)),
        # Decodes, then the detector's resize asserts: an unexpected per-image error.
        "sliver": stack.upload("sliver", _png(20, 30000)),
        "jxl": stack.upload("jxl", b"\xff\x0a" + b"\x00" * 200),
    }
    for request in requests.values():
        stack.send(request.to_body())
    stack.send("{not json")
    stack.send(json.dumps({"type": "detect", "version": 1, "user_id": USER}))  # no fields
    assert stack.drain(analyzer) == 0

    reasons = {}
    for image_id in requests:
        image = stack.repository.get_image(USER, image_id)
        assert image is not None and image.status == ImageStatus.FAILED, image_id
        reasons[image_id] = (image.reason or "").split(":")[0]
    assert reasons == {
        "corrupt": "corrupt",
        "empty": "empty",
        "huge": "too_many_pixels",
        "missing": "missing",
        "thin": "too_small",
        "sliver": "processing_error",
        "jxl": "unsupported",
    }
    for image_id in requests:
        reason = stack.repository.get_image(USER, image_id).reason  # type: ignore[union-attr]
        assert reason and "object at 0x" not in reason and len(reason) < 400
    assert counts(env, stack.queue.url) == (0, 0)  # failed images: messages deleted
    dead = sorted(m["Body"] for m in receive_all(env, stack.queue.dlq_url, 0))
    assert len(dead) == 2 and dead[1] == "{not json"
    assert stack.repository.count_faces(USER) == 0
    assert stack.grouping_requests() == []


def test_a_poison_body_is_dead_lettered_alone(env, analyzer, faces_dir: Path) -> None:
    """100 kB of `[[[[` once raised RecursionError in the parser and took four good photos in
    its batch to the DLQ with it."""
    stack = Stack(env, max_receive_count=2)
    photos = sorted((faces_dir / "gallery").glob("*/*.jpg"))[:4]
    for number, path in enumerate(photos):
        stack.send(stack.upload(f"good{number}.jpg", path.read_bytes()).to_body())
    stack.send("[" * 100_000)
    assert stack.drain(analyzer, BATCH_SIZE="5") == 0
    for number in range(4):
        image = stack.repository.get_image(USER, f"good{number}.jpg")
        assert image is not None and image.status == ImageStatus.DONE
    dead = [m["Body"] for m in receive_all(env, stack.queue.dlq_url, 0)]
    assert dead == ["[" * 100_000]


def test_keys_that_differ_only_in_extension_are_two_images(env, analyzer, faces_dir: Path) -> None:
    """`plain.jpg` and `plain.png` (S3 notifications) once shared one image id: the last one
    processed replaced the other's image document, faces and crops."""
    stack = Stack(env)
    photo = Image.open(sorted((faces_dir / "gallery").glob("*/*.jpg"))[0])
    for fmt, ext in (("JPEG", "jpg"), ("PNG", "png"), ("WEBP", "webp"), ("HEIF", "heic")):
        buffer = io.BytesIO()
        photo.save(buffer, fmt)
        key = f"users/{USER}/plain.{ext}"
        stack.s3.put_object(Bucket=stack.bucket, Key=key, Body=buffer.getvalue())
        record = {
            "eventName": "ObjectCreated:Put",
            "s3": {"bucket": {"name": stack.bucket}, "object": {"key": key}},
        }
        stack.send(json.dumps({"Records": [record]}))
    assert stack.drain(analyzer) == 0
    ids = ["plain.jpg", "plain.png", "plain.webp", "plain.heic"]
    for image_id in ids:
        image = stack.repository.get_image(USER, image_id)
        assert image is not None and image.status == ImageStatus.DONE, image_id
        assert image.face_count >= 1 and image.key == f"users/{USER}/{image_id}"
    faces = stack.repository.faces_of_user(USER)
    assert sorted({f.image_id for f in faces}) == sorted(ids)
    crops = {c["Key"] for c in stack.s3.list_objects_v2(Bucket=stack.face_bucket)["Contents"]}
    assert crops == {str(f.crop_key) for f in faces}


def test_outages_keep_the_message_for_a_retry(env, analyzer, faces_dir: Path) -> None:
    stack = Stack(env)
    request = stack.upload("six", (faces_dir / "groups" / "group_six.jpg").read_bytes())
    message = ReceivedMessage("m1", "receipt", request.to_body())
    settings = stack.settings()

    # MongoDB unreachable (nothing listens on the port).
    down = GalleryRepository(connect("mongodb://127.0.0.1:9/gallery", "gallery", timeout_ms=300))
    service = DetectionService(
        settings,
        analyzer,
        down,
        s3=stack.s3,
        sqs=stack.sqs,
        metrics=DetectionService.from_settings(settings, analyzer).metrics,
    )
    assert service.handle([message]) == {"m1": Outcome.RETRY}

    # S3 unreachable: the download fails with an endpoint error, not "missing".
    dead_s3 = boto3.session.Session().client(
        "s3",
        region_name=env.region,
        endpoint_url="http://127.0.0.1:9",
        config=Config(retries={"max_attempts": 1}, connect_timeout=1),
    )
    service = DetectionService(
        settings, analyzer, stack.repository, s3=dead_s3, sqs=stack.sqs, metrics=service.metrics
    )
    assert service.handle([message]) == {"m1": Outcome.RETRY}
    assert stack.repository.get_image(USER, "six") is None  # nothing marked failed


def test_worker_process_exits_zero_on_an_empty_queue(env, tmp_path: Path) -> None:
    stack = Stack(env)
    log = tmp_path / "worker.log"
    worker = spawn(
        ["run_detection_service.py"],
        stack.environment(AWS_BATCH_JOB_ARRAY_INDEX="3", AWS_BATCH_JOB_ATTEMPT="2"),
        log,
    )
    try:
        assert worker.wait(90) == 0, log.read_text()[-3000:]
    finally:
        if worker.poll() is None:
            worker.kill()
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    starting = [line for line in lines if line.get("message") == "detection service starting"]
    assert starting and starting[0]["batch_job_array_index"] == 3
    assert starting[0]["batch_job_attempt"] == 2


def _enqueue_gallery(stack: Stack, faces_dir: Path, count: int) -> list[str]:
    photos = sorted((faces_dir / "gallery").glob("*/*.jpg"))[:count]
    image_ids = []
    for number, photo in enumerate(photos):
        request = stack.upload(f"g{number:02d}", photo.read_bytes())
        stack.send(request.to_body())
        image_ids.append(request.image_id)
    return image_ids


def _in_flight(env, stack: Stack) -> bool:
    return counts(env, stack.queue.url)[1] > 0


def test_sigterm_releases_in_flight_messages_and_exits_retryable(
    env, tmp_path: Path, faces_dir: Path, analyzer
) -> None:
    stack = Stack(env)
    image_ids = _enqueue_gallery(stack, faces_dir, 10)
    log = tmp_path / "worker.log"
    worker = spawn(
        ["run_detection_service.py"],
        stack.environment(
            BATCH_SIZE="10",
            SHUTDOWN_DEADLINE_SECONDS="0.5",
            MESSAGE_VISIBILITY_TIMEOUT="300",
            IDLE_EXIT_SECONDS="60",
        ),
        log,
    )
    try:
        assert wait_for(lambda: _in_flight(env, stack), 90), log.read_text()[-3000:]
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(30) == RETRYABLE_EXIT_CODE, log.read_text()[-3000:]
    finally:
        if worker.poll() is None:
            worker.kill()
    # Released, not left invisible for the 300 s visibility timeout.
    visible, in_flight = counts(env, stack.queue.url)
    assert in_flight == 0
    done = [
        i
        for i in image_ids
        if (d := stack.repository.get_image(USER, i)) is not None and d.status == ImageStatus.DONE
    ]
    assert visible + len(done) >= len(image_ids)


def test_sigkill_mid_batch_loses_no_image(env, tmp_path: Path, faces_dir: Path, analyzer) -> None:
    stack = Stack(env, max_receive_count=5)
    image_ids = _enqueue_gallery(stack, faces_dir, 5)
    log = tmp_path / "worker.log"
    worker = spawn(
        ["run_detection_service.py"],
        stack.environment(BATCH_SIZE="5", MESSAGE_VISIBILITY_TIMEOUT="3", IDLE_EXIT_SECONDS="60"),
        log,
    )
    try:
        assert wait_for(lambda: _in_flight(env, stack), 90), log.read_text()[-3000:]
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(10)
    finally:
        if worker.poll() is None:
            worker.kill()
    assert counts(env, stack.queue.url)[1] > 0  # the killed batch is still invisible
    # Once visibility expires, the next worker takes the batch up again.
    assert stack.drain(analyzer, MESSAGE_VISIBILITY_TIMEOUT="30", IDLE_EXIT_SECONDS="5") == 0
    for image_id in image_ids:
        image = stack.repository.get_image(USER, image_id)
        assert image is not None and image.status == ImageStatus.DONE, image_id
    assert counts(env, stack.queue.url) == (0, 0)
    assert receive_all(env, stack.queue.dlq_url, 0) == []


def test_stage_timings_add_up_to_at_most_the_elapsed_total(env, analyzer, faces_dir: Path) -> None:
    """One owner for an image's timings (issue 13): download and decode are counted once, every
    stage is an interval of the image's own life, and `total` (the PROCESSING_TIME metric) is its
    elapsed wall time, so the stages add up to no more than the total and the total to no more
    than the run."""
    stack = Stack(env)
    image_ids = _enqueue_gallery(stack, faces_dir, 5)
    started = time.perf_counter()
    assert stack.drain(analyzer, BATCH_SIZE="5", IDLE_EXIT_SECONDS="1") == 0
    run_ms = (time.perf_counter() - started) * 1000
    for image_id in image_ids:
        image = stack.repository.get_image(USER, image_id)
        assert image is not None and image.status == ImageStatus.DONE, image_id
        timings = dict(image.timings_ms)
        total = timings.pop("total")
        assert set(timings) == {"download", "decode", "detect", "embed", "store"}, timings
        assert all(ms >= 0 for ms in timings.values()), timings
        assert sum(timings.values()) <= total + 0.05, (timings, total)  # rounding to 0.01 ms
        assert total <= run_ms, (total, run_ms)
