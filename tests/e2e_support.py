"""Helpers for the end-to-end tests: a provisioned stack on the session's servers, dispatch ticks
in local mode, and the checks every end-to-end test makes (images done once, queues drained).

The stack is deployed by the real `provision` flow. Its job definitions carry production's
environment (MODEL_DIR in the image, IDLE_EXIT_SECONDS=60, MongoDB URIs as Batch secrets, which
the local executor cannot inject), so `E2EStack.localize_jobs` registers one more revision of each
with the local values; the dispatch flow runs the latest revision, as Batch would.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from facefleet.common.documents import ImageStatus
from facefleet.common.names import Names
from facefleet.common.repository import GALLERY_DEFAULT_DB, HUEMN_DEFAULT_DB, connect
from facefleet.embedded import servers as local
from facefleet.embedded.batch import FINAL, ChildStatus, LocalExecutor
from facefleet.flows.dispatch import dispatch
from facefleet.infra.stack_config import worker_environment
from facefleet.tools.demo.gallery import Photo, requests, send, upload

ROOT = Path(__file__).resolve().parents[1]

# Workers in tests: short polls and a quick idle exit, so jobs scale back to zero in seconds.
FAST_WORKER_ENV = {
    "POLL_WAIT_SECONDS": "1",
    "IDLE_EXIT_SECONDS": "3",
    "MESSAGE_VISIBILITY_TIMEOUT": "60",
    "SHUTDOWN_DEADLINE_SECONDS": "10",
    "BATCH_SIZE": "5",
    "MAX_FACE_WORKERS": "2",
    "METRICS_TO_CLOUDWATCH": "false",
}


def queue_counts(sqs: Any, url: str) -> tuple[int, int]:
    """(visible, in flight) of a queue."""
    attributes = sqs.get_queue_attributes(
        QueueUrl=url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return (
        int(attributes["ApproximateNumberOfMessages"]),
        int(attributes["ApproximateNumberOfMessagesNotVisible"]),
    )


def drain_bodies(sqs: Any, url: str) -> list[str]:
    """Every message body on a queue (received with a long visibility, not deleted)."""
    bodies: list[str] = []
    while True:
        batch = sqs.receive_message(
            QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=0, VisibilityTimeout=300
        ).get("Messages", [])
        if not batch:
            return bodies
        bodies += [m["Body"] for m in batch]


@dataclass
class E2EStack:
    """One test's provisioned stack: names, the outputs' URLs and buckets, and a local executor."""

    env: Any  # conftest.ServerEnv
    names: Names
    outputs: dict[str, str]
    executor: LocalExecutor
    gallery_uri: str
    huemn_uri: str
    ticks: list[dict[str, Any]] = field(default_factory=list)
    _databases: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def sqs(self) -> Any:
        return self.env.aws.client("sqs")

    @property
    def s3(self) -> Any:
        return self.env.aws.client("s3")

    @property
    def indexing_url(self) -> str:
        return self.outputs["IndexingQueueUrl"]

    @property
    def indexing_dlq_url(self) -> str:
        return self.outputs["IndexingQueueDeadLetterUrl"]

    @property
    def group_url(self) -> str:
        return self.outputs["GroupFaceQueueUrl"]

    @property
    def group_dlq_url(self) -> str:
        return self.outputs["GroupFaceQueueDeadLetterUrl"]

    @property
    def bucket(self) -> str:
        return self.outputs["GalleryBucketName"]

    @property
    def face_bucket(self) -> str:
        return self.outputs["FaceGroupBucketName"]

    def gallery(self) -> Any:
        """The gallery database (one client per stack; it reconnects after an outage)."""
        if "gallery" not in self._databases:
            self._databases["gallery"] = connect(self.gallery_uri, GALLERY_DEFAULT_DB, 3000)
        return self._databases["gallery"]

    def huemn(self) -> Any:
        if "huemn" not in self._databases:
            self._databases["huemn"] = connect(self.huemn_uri, HUEMN_DEFAULT_DB, 3000)
        return self._databases["huemn"]

    def close(self) -> None:
        """Stop every local job (SIGTERM, then SIGKILL) and close the MongoDB clients."""
        self.executor.terminate(grace=5)
        for database in self._databases.values():
            database.client.close()
        self._databases.clear()

    # -- set-up --------------------------------------------------------------------------------
    def localize_jobs(self, models_dir: Path, **overrides: str) -> None:
        """A new revision of each job definition with the local environment: the model pack
        folder, the MongoDB URIs (secrets in production), fast idle exit, `overrides`."""
        batch = self.env.aws.client("batch")
        local = {
            **worker_environment(self.outputs),
            "AWS_ENDPOINT_URL": self.env.endpoint_url,
            "GALLERY_IMAGES_MONGO_URI": self.gallery_uri,
            "HUEMN_MONGO_URI": self.huemn_uri,
            "MODEL_DIR": str(models_dir),
            **FAST_WORKER_ENV,
            **overrides,
        }
        for spec in self.names.job_definitions:
            found = batch.describe_job_definitions(jobDefinitionName=spec.name, status="ACTIVE")
            latest = max(found["jobDefinitions"], key=lambda d: d["revision"])
            container = dict(latest["containerProperties"])
            environment = {e["name"]: e["value"] for e in container.get("environment", [])}
            environment.update(local)
            container["environment"] = [{"name": k, "value": v} for k, v in environment.items()]
            container.pop("secrets", None)  # injected above as plain values
            kwargs: dict[str, Any] = {
                "jobDefinitionName": spec.name,
                "type": "container",
                "containerProperties": container,
            }
            if "retryStrategy" in latest:
                kwargs["retryStrategy"] = latest["retryStrategy"]
            batch.register_job_definition(**kwargs)

    def send_photos(self, photos: list[Photo]) -> int:
        """Upload the photos to the gallery bucket and put one detection request each on the
        indexing queue (the demo's path)."""
        upload(photos, self.bucket, self.env.aws)
        to_send = requests(photos, self.bucket)
        return send(to_send, self.indexing_url, self.env.aws)

    # -- dispatch ----------------------------------------------------------------------------
    def tick(self, policy: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """One dispatch tick in local mode (jobs start as local processes)."""
        result: dict[str, Any] = dispatch(
            names=asdict(self.names),
            mode="local",
            policy=dict(policy or {}),
            region=self.env.region,
            endpoint_url=self.env.endpoint_url,
            local_batch_dir=str(self.executor.state_dir),
        )
        self.ticks.append(result)
        return result

    def active_children(self) -> list[ChildStatus]:
        return [c for c in self.executor.children() if c.status not in FINAL]

    def drained(self) -> bool:
        sqs = self.sqs
        return (
            queue_counts(sqs, self.indexing_url) == (0, 0)
            and queue_counts(sqs, self.group_url) == (0, 0)
            and not self.active_children()
        )

    def run_until_drained(
        self,
        policy: Mapping[str, Any] | None = None,
        timeout: float = 180.0,
        interval: float = 2.0,
    ) -> float:
        """Dispatch ticks until both queues are empty and no local job runs; the seconds taken.
        On timeout, fail with what is left: queue depths, running jobs, their logs' tails."""
        started = time.monotonic()
        while True:
            self.tick(policy)
            deadline = time.monotonic() + interval
            while time.monotonic() < deadline:
                if self.drained():
                    return time.monotonic() - started
                time.sleep(0.5)
            if time.monotonic() - started > timeout:
                raise AssertionError(f"not drained after {timeout:.0f} s:\n{self.report()}")

    def report(self) -> str:
        """What is left: queue depths (with DLQs), every local child, the logs' tails."""
        sqs = self.sqs
        lines = [
            f"{name}: (visible, in flight) = {queue_counts(sqs, url)}"
            for name, url in (
                ("indexing", self.indexing_url),
                ("indexing DLQ", self.indexing_dlq_url),
                ("GroupFace", self.group_url),
                ("GroupFace DLQ", self.group_dlq_url),
            )
        ]
        for child in self.executor.children():
            lines.append(
                f"job {child.job_id}:{child.index} {child.kind} {child.status} "
                f"attempt {child.attempt} exit codes {child.exit_codes}"
            )
            log = Path(child.log)
            if log.exists():
                lines.append(
                    "    " + log.read_text(errors="replace")[-1500:].replace("\n", "\n    ")
                )
        return "\n".join(lines)

    # -- checks --------------------------------------------------------------------------------
    def image_statuses(self, user_id: str) -> dict[str, dict[str, Any]]:
        return {d["image_id"]: d for d in self.gallery()["images"].find({"user_id": user_id})}

    def assert_processed_once(self, photos: list[Photo]) -> dict[str, Any]:
        """Every photo's image doc DONE; each face stored exactly once (as many face docs as the
        images report, one per (image, index)) with its crop in S3. Returns totals."""
        users = {p.user_id for p in photos}
        images: dict[str, dict[str, Any]] = {}
        for user in users:
            images.update(self.image_statuses(user))
        not_done = {
            p.image_id: images.get(p.image_id, {}).get("status")
            for p in photos
            if images.get(p.image_id, {}).get("status") != ImageStatus.DONE
        }
        assert not not_done, f"images not done: {not_done}\n{self.report()}"
        faces = list(
            self.gallery()["faces"].find(
                {"user_id": {"$in": sorted(users)}},
                {"image_id": 1, "index": 1, "model_id": 1, "crop_key": 1},
            )
        )
        keys = [(f["image_id"], f["model_id"], f["index"]) for f in faces]
        assert len(keys) == len(set(keys)), "a face is stored twice"
        expected = sum(int(images[p.image_id].get("face_count", 0)) for p in photos)
        assert len(faces) == expected, f"{len(faces)} face docs, images report {expected}"
        crops = set(self.crop_keys())
        missing = [f["crop_key"] for f in faces if f.get("crop_key") and f["crop_key"] not in crops]
        assert not missing, f"crops missing in S3: {missing[:5]}"
        return {"images": len(photos), "faces": len(faces)}

    def crop_keys(self) -> Iterator[str]:
        paginator = self.s3.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.face_bucket, Prefix="faces/"):
            for item in page.get("Contents", []):
                yield item["Key"]

    def assert_grouped(self, user_id: str) -> tuple[int, int]:
        """Every stored face of the user has an assignment, and each assigned person exists.
        Returns (assignments, people)."""
        face_ids = {
            f["_id"] for f in self.gallery()["faces"].find({"user_id": user_id}, {"_id": 1})
        }
        huemn = self.huemn()
        assignments = {a["_id"]: a for a in huemn["assignments"].find({"user_id": user_id})}
        assert set(assignments) == face_ids, (
            f"{len(face_ids - set(assignments))} faces without an assignment, "
            f"{len(set(assignments) - face_ids)} assignments without a face"
        )
        people = {p["person_id"] for p in huemn["people"].find({"user_id": user_id})}
        assigned = {a["person_id"] for a in assignments.values() if a["person_id"] is not None}
        assert assigned <= people, f"assigned to missing people: {sorted(assigned - people)}"
        return len(assignments), len(people)

    def assert_queues_empty(self, *, dead_letters: int = 0) -> None:
        sqs = self.sqs
        assert queue_counts(sqs, self.indexing_url) == (0, 0), self.report()
        assert queue_counts(sqs, self.group_url) == (0, 0), self.report()
        assert queue_counts(sqs, self.group_dlq_url) == (0, 0), self.report()
        assert queue_counts(sqs, self.indexing_dlq_url) == (dead_letters, 0), self.report()

    def assert_scaled_to_zero(self, policy: Mapping[str, Any] | None = None) -> None:
        """A tick on empty queues submits nothing, and no local job is left running."""
        result = self.tick(policy)
        assert result["submissions"] == [], result["reasons"]
        assert not self.active_children(), self.report()


def provision_stack(
    env: Any,
    state_dir: Path,
    *,
    gallery_uri: str | None = None,
    huemn_uri: str | None = None,
    config: Mapping[str, Any] | None = None,
) -> E2EStack:
    """Deploy the stack for the test's namespace with the `provision` flow (no dashboards)."""
    from facefleet.flows.provisioning import provision

    result = provision(
        names=asdict(env.names),
        local=True,
        config=dict(config or {}),
        with_dashboards=False,
        region=env.region,
        endpoint_url=env.endpoint_url,
    )
    return E2EStack(
        env=env,
        names=env.names,
        outputs=dict(result["outputs"]),
        executor=LocalExecutor(state_dir),
        gallery_uri=gallery_uri or env.gallery_uri,
        huemn_uri=huemn_uri or env.huemn_uri,
    )


def fill_backlog(
    sqs_client_factory: Any, queue_arn: str, count: int, per_feeder: int = 50
) -> float:
    """Put `count` messages on a queue through redrive fan-in; the seconds it took.

    moto 5's SendMessage is O(queue length): `send_message` reads `queue.attributes`, which
    recomputes ApproximateNumberOfMessages(/NotVisible/Delayed) by checking every message's
    visibility against the clock (`unix_time_millis`, tens of microseconds each on this machine).
    Filling one queue with n messages is O(n^2): 1,000 took ~30 s and 2,000 ~2 min here, so
    20,000 would take an hour or more. A dead-letter move is O(1) per message (moto appends to the
    DLQ's list), so the messages go to small feeder queues (`per_feeder` each, cheap to send
    to) whose redrive policy (maxReceiveCount 1) names the target: each message is received
    once, and the next receive moves it to the target. The target really holds `count`
    messages, as a backlog from any producer would (each already received once, which only a
    consumer with a redrive policy of its own would notice).
    """
    from concurrent.futures import ThreadPoolExecutor

    started = time.monotonic()
    local = threading.local()

    def sqs() -> Any:
        if not hasattr(local, "client"):
            local.client = sqs_client_factory()
        return local.client

    prefix = queue_arn.rsplit(":", 1)[-1]
    redrive = json.dumps({"deadLetterTargetArn": queue_arn, "maxReceiveCount": "1"})

    def feed(number: int) -> str:
        first = number * per_feeder
        size = min(per_feeder, count - first)
        url: str = sqs().create_queue(
            QueueName=f"{prefix}-feed{number}", Attributes={"RedrivePolicy": redrive}
        )["QueueUrl"]
        for start in range(0, size, 10):
            entries = [
                {"Id": str(i), "MessageBody": json.dumps({"n": first + start + i})}
                for i in range(min(10, size - start))
            ]
            sqs().send_message_batch(QueueUrl=url, Entries=entries)
        while (
            sqs()
            .receive_message(QueueUrl=url, MaxNumberOfMessages=10, VisibilityTimeout=1)
            .get("Messages")
        ):
            pass
        return url

    feeders = -(-count // per_feeder)
    with ThreadPoolExecutor(4) as pool:
        urls = list(pool.map(feed, range(feeders)))
    time.sleep(1.1)  # the receives' visibility ends: the next receive moves them

    def move(url: str) -> None:
        sqs().receive_message(QueueUrl=url, MaxNumberOfMessages=10, VisibilityTimeout=1)
        sqs().delete_queue(QueueUrl=url)

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(move, urls))
    return time.monotonic() - started


def start_mongo(port: int, data_dir: Path) -> subprocess.Popen[bytes]:
    """A dedicated nx-27017 on `port` over `data_dir` (restartable on the same port and data)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen(
        [
            local._bin("nx-27017"),
            "--host",
            local.LOOPBACK,
            "-p",
            str(port),
            "--data-dir",
            str(data_dir),
            "--pid-file",
            str(data_dir / "pid"),
            "--log-file",
            str(data_dir / "log"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 30
    while not local._mongo_ok(port):
        if process.poll() is not None or time.monotonic() > deadline:
            stop_process(process)
            raise AssertionError(f"dedicated nx-27017 on port {port} did not start")
        time.sleep(0.2)
    return process


def stop_process(process: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    """SIGTERM the process's group, SIGKILL it after `grace` seconds."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(5)


def wait_until(
    predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.1
) -> Any:
    """Poll `predicate` until it returns something truthy; fail naming `what` on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


# Workers that an interruption test kills mid-batch: small batches, and a SIGKILLed batch
# comes back after VISIBILITY_S seconds.
VISIBILITY_S = 6
INTERRUPTIBLE_WORKER = {
    "BATCH_SIZE": "3",
    "MESSAGE_VISIBILITY_TIMEOUT": str(VISIBILITY_S),
    "SHUTDOWN_DEADLINE_SECONDS": "2",
    "IDLE_EXIT_SECONDS": "4",
}


def localized_stack(
    env: Any, tmp_path: Path, models_dir: Path, monkeypatch: Any, **overrides: str
) -> Iterator[E2EStack]:
    """The body of an e2e test's `stack` fixture: a provisioned stack (the flows on Prefect's
    test harness) whose jobs run here with `overrides`, every local job stopped afterwards."""
    from tests.flows_support import prefect_harness

    prefect_harness()
    monkeypatch.setenv("FACEFLEET_WORKDIR", str(ROOT))
    provisioned = provision_stack(env, tmp_path / "batch")
    provisioned.localize_jobs(models_dir, **overrides)
    try:
        yield provisioned
    finally:
        provisioned.close()


def start_router(
    state: local.StackState, prefix: str, log_dir: Path, **env: str
) -> subprocess.Popen[bytes]:
    """One more router process for another `Names` prefix on this stack's moto server (tests
    run many stacks on one server); the caller stops it (SIGTERM its process group)."""
    log_dir.mkdir(parents=True, exist_ok=True)
    with (log_dir / f"router-{prefix}.out").open("ab") as out:
        return subprocess.Popen(
            local.service_command("router", 0, log_dir),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **local.router_environment(state, prefix), **env},
            start_new_session=True,
        )
