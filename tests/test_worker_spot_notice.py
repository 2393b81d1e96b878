"""The Spot two-minute notice reaches the worker: on the local stack, a fake instance metadata
service (IMDSv2 only: no token, 401) posts `spot/instance-action` while a batch is in work; the
consumer (`serve`, as both workers run it) finishes that batch, leaves the rest on the queue and
exits with the retryable code the job definitions' retry strategy retries.

Before the fix nothing watched the notice: a Batch job heard of it only at shutdown."""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from facefleet.common.config import Settings
from facefleet.common.names import RETRYABLE_EXIT_CODE
from facefleet.worker.runtime.consumer import ConsumerConfig
from facefleet.worker.runtime.outcome import Outcome
from facefleet.worker.runtime.serve import serve
from facefleet.worker.runtime.spot import NOTICE_PATH, TOKEN_PATH, SpotNoticeWatcher
from tests.sqs_helpers import counts, create_queue, send

TOKEN = "imds-token-1"


class FakeMetadata(ThreadingHTTPServer):
    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.notice: dict[str, str] | None = None
        self.unavailable = 0  # answer this many next requests 503 (a metadata service hiccup)
        self.requests: list[tuple[str, str, bool]] = []  # method, path, had a token

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    server: FakeMetadata

    def log_message(self, *args: object) -> None:
        pass

    def _reply(self, status: int, body: bytes = b"") -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_PUT(self) -> None:
        self.server.requests.append(("PUT", self.path, False))
        if self.server.unavailable > 0:
            self.server.unavailable -= 1
            self._reply(503)
            return
        if self.path != TOKEN_PATH or "X-aws-ec2-metadata-token-ttl-seconds" not in self.headers:
            self._reply(400)
            return
        self._reply(200, TOKEN.encode())

    def do_GET(self) -> None:
        has_token = self.headers.get("X-aws-ec2-metadata-token") == TOKEN
        self.server.requests.append(("GET", self.path, has_token))
        if not has_token:  # HttpTokens: required
            self._reply(401)
        elif self.path != NOTICE_PATH or self.server.notice is None:
            self._reply(404)
        else:
            self._reply(200, json.dumps(self.server.notice).encode())


@pytest.fixture
def metadata() -> Iterator[FakeMetadata]:
    server = FakeMetadata()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def restore_signals() -> Iterator[None]:
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, handler in saved.items():
            signal.signal(s, handler)


def test_notice_mid_batch_drains_and_exits_retryable(env, metadata, restore_signals) -> None:
    queue = create_queue(env, f"{env.names.prefix}-spot")
    for i in range(3):
        send(env, queue.url, json.dumps({"n": i}))
    handled: list[str] = []

    def handle(batch):  # the interruption warning arrives while this batch is in work
        metadata.notice = {"action": "terminate", "time": "2026-12-01T10:00:00Z"}
        time.sleep(1.0)
        handled.extend(m.message_id for m in batch)
        return {m.message_id: Outcome.DONE for m in batch}

    settings = Settings.from_env(
        {
            **env.environment(),
            "SPOT_NOTICE_POLL_SECONDS": "0.1",
            "INSTANCE_METADATA_ENDPOINT": metadata.url,
        }
    )
    config = ConsumerConfig(
        queue.url,
        batch_size=1,
        poll_wait_seconds=1,
        idle_exit_seconds=30,
        shutdown_deadline_seconds=10,
        aws=env.aws,
    )
    started = time.monotonic()
    code = serve(config, handle, service="test", settings=settings)

    assert code == RETRYABLE_EXIT_CODE
    assert time.monotonic() - started < 10  # the notice, not the idle exit, ended it
    assert len(handled) == 1  # the batch in work was finished and deleted...
    assert counts(env, queue.url) == (2, 0)  # ...the rest stays for the retry
    gets = [r for r in metadata.requests if r[0] == "GET"]
    assert gets and all(has_token for _, _, has_token in gets)  # IMDSv2 only


def test_no_metadata_service_turns_the_watcher_off() -> None:
    fired: list[object] = []
    watcher = SpotNoticeWatcher(
        fired.append,
        endpoint="http://127.0.0.1:9",
        poll_s=0.1,
        startup_attempts=3,
        startup_backoff_s=0.05,
    )
    watcher.start()
    watcher.join(5)
    assert not watcher.is_alive() and not fired


def test_a_failed_first_call_does_not_turn_the_watcher_off(metadata) -> None:
    """One metadata call failing at start-up (two here) is retried with backoff: the notice
    that comes later still reaches the job. Before, the first failure switched it off."""
    fired: list[object] = []
    metadata.unavailable = 2
    watcher = SpotNoticeWatcher(
        fired.append, endpoint=metadata.url, poll_s=0.05, startup_backoff_s=0.05
    )
    watcher.start()
    deadline = time.monotonic() + 5
    while sum(1 for r in metadata.requests if r[0] == "GET") < 2:  # polling, notice-less
        assert watcher.is_alive() and time.monotonic() < deadline
        time.sleep(0.02)
    metadata.notice = {"action": "terminate", "time": "2026-12-01T10:00:00Z"}
    watcher.join(5)
    assert fired == [metadata.notice]
    assert [r[0] for r in metadata.requests[:3]] == ["PUT", "PUT", "PUT"]


def test_expired_token_is_renewed(metadata) -> None:
    watcher = SpotNoticeWatcher(lambda n: None, endpoint=metadata.url)
    assert watcher.check() is None
    watcher._token = "stale"
    metadata.notice = {"action": "stop", "time": "2026-12-01T10:00:00Z"}
    assert watcher.check() == metadata.notice
