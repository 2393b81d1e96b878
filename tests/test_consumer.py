"""The shared SQS consumer loop against the moto server: outcomes, outages, heartbeat, exits."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path
from typing import Any, cast

import pytest
from pymongo.errors import ServerSelectionTimeoutError

from facefleet.common.names import RETRYABLE_EXIT_CODE
from facefleet.worker.runtime.consumer import (
    Consumer,
    ConsumerConfig,
    ReceivedMessage,
    backoff_delay,
)
from facefleet.worker.runtime.outcome import Outcome, is_outage
from tests.sqs_helpers import counts, create_queue, receive_all, send, spawn, wait_for


def config(env, queue_url: str, **overrides) -> ConsumerConfig:
    values = dict(
        queue_url=queue_url,
        batch_size=10,
        visibility_timeout=30,
        poll_wait_seconds=1,
        idle_exit_seconds=1.0,
        shutdown_deadline_seconds=5.0,
        backoff_initial_seconds=0.1,
        backoff_max_seconds=0.4,
        aws=env.aws,
    )
    values.update(overrides)
    return ConsumerConfig(**values)


def test_outcomes_delete_dead_letter_and_retry_then_idle_exit(env) -> None:
    queue = create_queue(env, env.names.indexing_queue, max_receive_count=2)
    for body in ("good", "bad", "flaky"):
        send(env, queue.url, body)
    calls: dict[str, int] = {"flaky": 0}

    def handle(batch: list[ReceivedMessage]) -> dict[str, Outcome]:
        outcomes = {}
        for message in batch:
            if message.body == "good":
                outcomes[message.message_id] = Outcome.DONE
            elif message.body == "bad":
                outcomes[message.message_id] = Outcome.MALFORMED
            else:
                calls["flaky"] += 1
                if calls["flaky"] < 3:  # an outage twice, then the store is back
                    raise ServerSelectionTimeoutError("mongo down")
                outcomes[message.message_id] = Outcome.DONE
        return outcomes

    started = time.monotonic()
    code = Consumer(config(env, queue.url), handle).run()
    assert code == 0
    assert time.monotonic() - started < 30
    assert counts(env, queue.url) == (0, 0)
    dead = receive_all(env, queue.dlq_url)
    assert [m["Body"] for m in dead] == ["bad"]
    # The outage was retried in flight with backoff, not redelivered (no DLQ drift).
    assert calls["flaky"] == 3


def test_a_crashing_handler_never_kills_the_loop(env) -> None:
    queue = create_queue(env, env.names.indexing_queue, max_receive_count=1)
    send(env, queue.url, "poison")

    def handle(batch: list[ReceivedMessage]) -> dict[str, Outcome]:
        raise KeyError("bug")

    assert Consumer(config(env, queue.url), handle).run() == 0
    assert [m["Body"] for m in receive_all(env, queue.dlq_url)] == ["poison"]


def test_a_poison_message_is_dead_lettered_alone(env) -> None:
    """A handler that raises on one message of a batch: the message is tried alone and
    dead-lettered alone; its four batch-mates are processed (once they went to the DLQ too)."""
    queue = create_queue(env, env.names.indexing_queue, max_receive_count=2)
    for body in ("good-1", "good-2", "poison", "good-3", "good-4"):
        send(env, queue.url, body)
    done: list[str] = []

    def handle(batch: list[ReceivedMessage]) -> dict[str, Outcome]:
        if any(m.body == "poison" for m in batch):
            raise RecursionError("maximum recursion depth exceeded")
        done.extend(m.body for m in batch)
        return {m.message_id: Outcome.DONE for m in batch}

    assert Consumer(config(env, queue.url, batch_size=5), handle).run() == 0
    assert sorted(done) == ["good-1", "good-2", "good-3", "good-4"]
    assert [m["Body"] for m in receive_all(env, queue.dlq_url)] == ["poison"]
    assert counts(env, queue.url) == (0, 0)


def test_heartbeat_keeps_a_slow_batch_invisible(env) -> None:
    queue = create_queue(env, env.names.indexing_queue)
    send(env, queue.url, "slow")
    seen_by_other: list[int] = []

    def handle(batch: list[ReceivedMessage]) -> dict[str, Outcome]:
        # Longer than the visibility timeout: only the heartbeat keeps others off it.
        for _ in range(3):
            time.sleep(1.2)
            seen_by_other.append(len(receive_all(env, queue.url, wait=0)))
        return {m.message_id: Outcome.DONE for m in batch}

    consumer = Consumer(config(env, queue.url, visibility_timeout=2, idle_exit_seconds=0.5), handle)
    assert consumer.config.heartbeat_seconds == 1.0
    assert consumer.run() == 0
    assert seen_by_other == [0, 0, 0]
    assert counts(env, queue.url) == (0, 0)


def test_stop_releases_an_unfinished_batch_within_the_deadline(env) -> None:
    queue = create_queue(env, env.names.indexing_queue)
    send(env, queue.url, "long")
    entered = threading.Event()

    def handle(batch: list[ReceivedMessage]) -> dict[str, Outcome]:
        entered.set()
        time.sleep(30)
        return {m.message_id: Outcome.DONE for m in batch}

    consumer = Consumer(
        config(env, queue.url, idle_exit_seconds=60, shutdown_deadline_seconds=2), handle
    )

    def stop_once_entered() -> None:
        entered.wait(10)
        consumer.request_stop()

    threading.Thread(target=stop_once_entered, daemon=True).start()
    started = time.monotonic()
    assert consumer.run() == RETRYABLE_EXIT_CODE
    assert time.monotonic() - started < 10
    assert consumer.abandoned_handler
    assert [m["Body"] for m in receive_all(env, queue.url, wait=0)] == ["long"]


CHILD = """
import sys, time
from facefleet.common.logs import configure_logging
from facefleet.worker.runtime.consumer import ConsumerConfig
from facefleet.worker.runtime.serve import serve
from facefleet.worker.runtime.outcome import Outcome
from facefleet.common.aws import AwsTarget
configure_logging("test-consumer")
def handle(batch):
    print("HANDLING", flush=True)
    time.sleep(float(sys.argv[2]))
    return {m.message_id: Outcome.DONE for m in batch}
cfg = ConsumerConfig(queue_url=sys.argv[1], visibility_timeout=60, poll_wait_seconds=1,
                     idle_exit_seconds=60, shutdown_deadline_seconds=4,
                     aws=AwsTarget(sys.argv[3], sys.argv[4]))
sys.exit(serve(cfg, handle, service="test"))
"""


@pytest.mark.parametrize("handler_seconds, finished", [(600, False), (1, True)])
def test_sigterm_finishes_or_releases_and_exits_retryable(
    env, tmp_path: Path, handler_seconds: int, finished: bool
) -> None:
    queue = create_queue(env, env.names.indexing_queue)
    send(env, queue.url, "in-flight")
    log = tmp_path / "child.log"
    child = spawn(
        ["-c", CHILD, queue.url, str(handler_seconds), env.region, env.endpoint_url],
        env.environment(),
        log,
    )
    try:
        assert wait_for(lambda: b"HANDLING" in log.read_bytes(), 30), log.read_text()
        child.send_signal(signal.SIGTERM)
        assert child.wait(15) == RETRYABLE_EXIT_CODE, log.read_text()
    finally:
        if child.poll() is None:
            child.kill()
    remaining = receive_all(env, queue.url, wait=0)
    if finished:  # done inside the deadline: deleted, not redelivered
        assert remaining == []
    else:  # released: visible again at once, long before the 60 s visibility timeout
        assert [m["Body"] for m in remaining] == ["in-flight"]


def test_outage_classification_and_backoff() -> None:
    from botocore.exceptions import ClientError, EndpointConnectionError

    assert is_outage(ServerSelectionTimeoutError("x"))
    assert is_outage(EndpointConnectionError(endpoint_url="http://x"))
    assert is_outage(
        ClientError(
            cast(
                Any,
                {"Error": {"Code": "InternalError"}, "ResponseMetadata": {"HTTPStatusCode": 500}},
            ),
            "GetObject",
        )
    )
    assert not is_outage(
        ClientError(
            cast(
                Any, {"Error": {"Code": "NoSuchKey"}, "ResponseMetadata": {"HTTPStatusCode": 404}}
            ),
            "GetObject",
        )
    )
    assert not is_outage(ValueError("bad"))
    assert [backoff_delay(a, 1, 8) for a in range(5)] == [1, 2, 4, 8, 8]


def test_the_consumer_adds_no_retry_layer_over_the_clients(monkeypatch: pytest.MonkeyPatch) -> None:
    """One retry layer (issue 25): an SQS call the client gave up on after its own retries is
    not retried again by the consumer (it once was, 6 times: up to 6 x 8 attempts)."""
    import socket

    from facefleet.common.aws import AwsTarget

    with socket.socket() as probe:  # a loopback port nobody listens on: connection refused
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    aws = AwsTarget("us-east-1", f"http://127.0.0.1:{port}")
    sqs = aws.client("sqs", retries="quick")
    attempts = {"count": 0}

    def count(**_: Any) -> None:
        attempts["count"] += 1

    sqs.meta.events.register("before-send.sqs.*", count)
    queue_url = f"http://127.0.0.1:{port}/000000000000/q"
    entries = [{"Id": "0", "ReceiptHandle": "r"}]
    with pytest.raises(Exception) as raised:
        sqs.delete_message_batch(QueueUrl=queue_url, Entries=entries)
    assert is_outage(raised.value)
    by_the_client = attempts["count"]
    assert by_the_client > 1  # the client's own retries

    attempts["count"] = 0
    consumer = Consumer(ConsumerConfig(queue_url=queue_url, aws=aws), lambda b: {}, sqs=sqs)
    consumer.delete([ReceivedMessage("m", "r", "body")])  # logged, never raised
    assert attempts["count"] == by_the_client


def test_classify_and_the_outage_guard() -> None:
    """One place turns errors into outcomes: an outage keeps the message, anything else is the
    message's own fault; the guard catches outages only."""
    from facefleet.worker.runtime.outcome import OutageGuard, classify, worse

    assert classify(ServerSelectionTimeoutError("down")) is Outcome.RETRY
    assert classify(ValueError("bad")) is Outcome.MALFORMED
    with OutageGuard() as guard:
        raise ServerSelectionTimeoutError("down")
    assert guard.hit and isinstance(guard.error, ServerSelectionTimeoutError)
    with pytest.raises(ValueError), OutageGuard() as other:
        raise ValueError("bad")
    assert not other.hit
    assert worse(Outcome.MALFORMED, Outcome.RETRY) is Outcome.RETRY
    assert worse(Outcome.RETRY, Outcome.DONE) is Outcome.RETRY
