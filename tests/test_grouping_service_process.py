"""The grouping worker as a process, and through a MongoDB outage, on real servers."""

from __future__ import annotations

import signal
import subprocess
import threading
from datetime import timedelta
from pathlib import Path

from facefleet.common.names import RETRYABLE_EXIT_CODE
from facefleet.common.repository import LeaseHeld
from facefleet.embedded import servers as local
from facefleet.worker.grouping.service import GroupingService
from facefleet.worker.runtime.consumer import ReceivedMessage
from tests.grouping_service_helpers import Gallery, Identities, make_setup, people, store_for
from tests.sqs_helpers import counts, receive_all, spawn, wait_for


def start_mongo(port: int, data: Path) -> subprocess.Popen:
    process = subprocess.Popen(
        [
            local._bin("nx-27017"),
            "--host",
            local.LOOPBACK,
            "-p",
            str(port),
            "--data-dir",
            str(data),
            "--pid-file",
            str(data / "pid"),
            "--log-file",
            str(data / "log"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    assert wait_for(lambda: local._mongo_ok(port), 30), "dedicated nx-27017 did not start"
    return process


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)


def test_mongo_outage_mid_batch_keeps_the_message_until_recovery(
    env, monkeypatch, tmp_path: Path
) -> None:
    port, data = local.free_port(), tmp_path / "mongo"
    data.mkdir()
    mongo = start_mongo(port, data)
    monkeypatch.setenv("GALLERY_IMAGES_MONGO_URI", f"mongodb://{local.LOOPBACK}:{port}/gallery")
    monkeypatch.setenv("HUEMN_MONGO_URI", f"mongodb://{local.LOOPBACK}:{port}/huemn")
    setup = make_setup(env, monkeypatch)
    g = Gallery(env, "alice", setup.bucket, Identities(2))
    setup.request("alice", g.photos("a", 3, range(2)))
    store = store_for(env, timeout_ms=500)
    service = GroupingService(store, s3=setup.service().s3, bucket=setup.bucket)
    calls: list[int] = []

    def handle(batch: list[ReceivedMessage]):  # the store goes down once the batch is in hand
        if not calls:
            stop(mongo)
        calls.append(len(batch))
        return service.handle(batch)

    worker = threading.Thread(
        target=lambda: setup.consume_with(
            handle, backoff_initial_seconds=0.5, backoff_max_seconds=1.0
        )
    )
    worker.start()
    try:
        assert wait_for(lambda: len(calls) >= 2, 30)
        assert counts(env, setup.queue.url) == (0, 1)  # kept in flight, not deleted
        mongo = start_mongo(port, data)
        worker.join(60)
        assert not worker.is_alive()
        assert counts(env, setup.queue.url) == (0, 0)
        assert receive_all(env, setup.queue.dlq_url) == []
        assert len(people(env, "alice")) == 2
    finally:
        stop(mongo)


def worker_environment(setup) -> dict[str, str]:
    return {
        **setup.env.environment(),
        "GROUP_FACE_QUEUE_URL": setup.queue.url,
        "FACE_GROUP_BUCKET_NAME": setup.bucket,
        "POLL_WAIT_SECONDS": "1",
        "MESSAGE_VISIBILITY_TIMEOUT": "30",
        "SHUTDOWN_DEADLINE_SECONDS": "5",
    }


def test_the_process_groups_then_exits_0_when_the_queue_stays_empty(
    env, monkeypatch, tmp_path: Path
) -> None:
    setup = make_setup(env, monkeypatch)
    g = Gallery(env, "alice", setup.bucket, Identities(2))
    setup.request("alice", g.photos("a", 2, range(2)))
    log = tmp_path / "worker.log"

    process = spawn(
        ["run_grouping_service.py"], {**worker_environment(setup), "IDLE_EXIT_SECONDS": "1"}, log
    )

    assert process.wait(60) == 0, log.read_text()
    assert len(people(env, "alice")) == 2
    assert '"FacesGrouped": 4.0' in log.read_text()


def test_sigterm_exits_with_the_retryable_code_and_frees_the_lease(
    env, monkeypatch, tmp_path: Path
) -> None:
    setup = make_setup(env, monkeypatch)
    g = Gallery(env, "alice", setup.bucket, Identities(2))
    setup.request("alice", g.photos("a", 2, range(2)))
    log = tmp_path / "worker.log"
    process = spawn(
        ["run_grouping_service.py"], {**worker_environment(setup), "IDLE_EXIT_SECONDS": "120"}, log
    )
    try:
        assert wait_for(lambda: '"grouped user"' in log.read_text(), 60), log.read_text()
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == RETRYABLE_EXIT_CODE, log.read_text()
    finally:
        if process.poll() is None:
            process.kill()
    assert len(people(env, "alice")) == 2
    # Nothing of this worker is left holding a user.
    try:
        store_for(env).people.acquire_lease("alice", "next", timedelta(minutes=1))
    except LeaseHeld:
        raise AssertionError("a lease outlived the worker") from None
