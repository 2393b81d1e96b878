"""The one SQS consumer loop both workers run; each worker supplies only a batch handler.

API
---
A handler receives the messages of one receive call and says what became of each::

    from facefleet.worker.runtime.consumer import ConsumerConfig, ReceivedMessage
    from facefleet.worker.runtime.serve import serve
    from facefleet.worker.runtime.outcome import Outcome

    def handle(batch: list[ReceivedMessage]) -> dict[str, Outcome]:
        outcomes = {}
        for message in batch:
            try:
                request = parse_grouping_message(message.body)
            except MalformedMessage:
                outcomes[message.message_id] = Outcome.MALFORMED
                continue
            ...  # durable writes (idempotent)
            outcomes[message.message_id] = Outcome.DONE
        return outcomes

    config = ConsumerConfig.from_settings(settings, settings.group_face_queue_url)
    sys.exit(serve(config, handle, service="grouping", settings=settings))

Outcomes, keyed by `ReceivedMessage.message_id`:

- `Outcome.DONE`: the result is durably stored; the message is deleted.
- `Outcome.MALFORMED`: the message can never succeed; it is made visible again at once so the
  queue's RedrivePolicy (maxReceiveCount) moves it to the dead-letter queue. Never a crash.
- `Outcome.RETRY`: an outage (MongoDB, S3, ...). The message is kept in flight (heartbeat) and the
  handler is called again on the RETRY messages with exponential backoff, without re-receiving
  (so an outage does not push good messages towards the DLQ). After `max_outage_seconds` they are
  released (visibility 0) and the loop goes on.

- `Outcome.DEFER`: the message cannot be worked on by this worker now (another worker holds its
  user's lease). It goes back to the queue after `defer_seconds` (visibility set to that) and
  the loop goes on with the rest of the batch: no message waits behind another's user.

A message missing from the returned dict counts as RETRY. A handler raises, and
`outcome.classify` (the one place errors become outcomes) decides: an outage error (pymongo
ConnectionFailure / ServerSelectionTimeoutError, botocore endpoint, timeout, throttling and 5xx
errors) turns the whole batch into RETRY; any other exception makes the consumer run the handler
again on each message alone, so only the message that raises counts as MALFORMED (redelivered,
then dead-lettered) and its batch-mates are processed: a poison message can neither crash the
worker nor take good messages to the DLQ. Handlers that settle parts of a batch themselves use
`classify` on the part's error.

Retries: one layer per dependency. AWS calls retry inside botocore (adaptive mode, 8 attempts,
`common.aws`); the consumer does not wrap them again. An outage that outlasts those (and any
MongoDB error: the driver retries a read once, writes not at all) reaches the consumer as
RETRY, and its backoff (`backoff_initial_seconds` doubling to `backoff_max_seconds`, for at most
`max_outage_seconds`) is the one explicit policy above them: it keeps the message in flight
instead of multiplying attempts.

Loop semantics (settings in `ConsumerConfig`, read from `Settings`):

- long polling (POLL_WAIT_SECONDS), BATCH_SIZE messages per receive, visibility
  MESSAGE_VISIBILITY_TIMEOUT, extended by a heartbeat thread every third of it while the batch
  is worked on; deletion only after DONE.
- drain-and-exit: `run()` returns 0 once no message arrived for IDLE_EXIT_SECONDS.
- SIGTERM/SIGINT, or the Spot notice in instance metadata (`spot.SpotNoticeWatcher`, started by
  `serve.serve`): stop receiving, wait for the in-flight batch until
  SHUTDOWN_DEADLINE_SECONDS, delete what is DONE, release the rest (visibility 0) and return
  `RETRYABLE_EXIT_CODE`, which the job definitions' retry strategy retries.

The handler runs in a worker thread so the main thread can keep the deadline even when a handler
hangs; `serve.serve()` ends the process hard in that case (the abandoned handler's writes are
idempotent).
"""

from __future__ import annotations

import logging
import math
import signal
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import FrameType
from typing import TYPE_CHECKING, Any

from facefleet.common.aws import AwsTarget
from facefleet.common.config import Settings
from facefleet.common.metrics import Metric, MetricsEmitter
from facefleet.common.names import RETRYABLE_EXIT_CODE
from facefleet.worker.runtime.outcome import Outcome, classify

if TYPE_CHECKING:
    from mypy_boto3_sqs.type_defs import ChangeMessageVisibilityBatchRequestEntryTypeDef

log = logging.getLogger(__name__)

IDLE_EXIT_CODE = 0
SQS_MAX_BATCH = 10


@dataclass(frozen=True)
class ReceivedMessage:
    message_id: str
    receipt_handle: str
    body: str
    receive_count: int = 1
    attributes: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_sqs(cls, data: Mapping[str, Any]) -> ReceivedMessage:
        attributes = dict(data.get("Attributes", {}))
        return cls(
            message_id=data["MessageId"],
            receipt_handle=data["ReceiptHandle"],
            body=data.get("Body", ""),
            receive_count=int(attributes.get("ApproximateReceiveCount", 1)),
            attributes=attributes,
        )


Handler = Callable[[list[ReceivedMessage]], Mapping[str, Outcome]]


@dataclass(frozen=True)
class ConsumerConfig:
    queue_url: str
    batch_size: int = 5
    visibility_timeout: int = 1800
    # A deferred message is back on the queue after this long (about a lease's renewal period:
    # each redelivery counts towards the queue's maxReceiveCount).
    defer_seconds: int = 20
    poll_wait_seconds: int = 20
    idle_exit_seconds: float = 60.0
    shutdown_deadline_seconds: float = 90.0
    backoff_initial_seconds: float = 1.0
    backoff_max_seconds: float = 60.0
    max_outage_seconds: float = 900.0
    aws: AwsTarget = field(default_factory=AwsTarget)

    @property
    def heartbeat_seconds(self) -> float:
        return max(1.0, self.visibility_timeout / 3)

    @classmethod
    def from_settings(cls, settings: Settings, queue_url: str | None) -> ConsumerConfig:
        if not queue_url:
            raise ValueError("the consumer needs a queue URL (QUEUE_URL / GROUP_FACE_QUEUE_URL)")
        return cls(
            queue_url=queue_url,
            batch_size=settings.batch_size,
            visibility_timeout=settings.message_visibility_timeout,
            poll_wait_seconds=settings.poll_wait_seconds,
            idle_exit_seconds=settings.idle_exit_seconds,
            shutdown_deadline_seconds=settings.shutdown_deadline_seconds,
            aws=settings.aws,
        )


def backoff_delay(attempt: int, initial: float, maximum: float) -> float:
    """Exponential backoff: initial, 2x, 4x, ... capped at maximum (attempt counts from 0)."""
    return float(min(maximum, initial * (2 ** min(attempt, 30))))


class _Heartbeat(threading.Thread):
    """Keeps a batch invisible while it is worked on: ChangeMessageVisibility every interval."""

    def __init__(self, consumer: Consumer, messages: Sequence[ReceivedMessage]) -> None:
        super().__init__(name="sqs-heartbeat", daemon=True)
        self.consumer = consumer
        self.messages = list(messages)
        self.stopped = threading.Event()

    def run(self) -> None:
        config = self.consumer.config
        while not self.stopped.wait(config.heartbeat_seconds):
            self.consumer.change_visibility(self.messages, config.visibility_timeout)

    def stop(self) -> None:
        self.stopped.set()


class _HandlerRun(threading.Thread):
    def __init__(self, handler: Handler, batch: list[ReceivedMessage]) -> None:
        super().__init__(name="batch-handler", daemon=True)
        self.handler = handler
        self.batch = batch
        self.outcomes: dict[str, Outcome] = {}
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.outcomes = dict(self.handler(self.batch))
        except BaseException as error:  # reported to the supervising thread
            self.error = error


class Consumer:
    """Receive, hand over, delete-after-done; see the module docstring for the contract."""

    def __init__(
        self,
        config: ConsumerConfig,
        handler: Handler,
        *,
        sqs: Any | None = None,
        metrics: MetricsEmitter | None = None,
    ) -> None:
        self.config = config
        self.handler = handler
        self.sqs = sqs or config.aws.client("sqs")
        self.metrics = metrics
        self._stop = threading.Event()
        self._stop_at: float | None = None
        self.abandoned_handler = False

    # -- control ---------------------------------------------------------------------------
    def request_stop(self, *_: object) -> None:
        """Stop receiving; in-flight work is finished or released within the deadline."""
        if not self._stop.is_set():
            self._stop_at = time.monotonic()
            log.warning(
                "stop requested: draining in-flight messages",
                extra={"deadline_s": self.config.shutdown_deadline_seconds},
            )
            self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def install_signal_handlers(self) -> None:
        def on_signal(signum: int, _frame: FrameType | None) -> None:
            log.warning("received %s", signal.Signals(signum).name)
            self.request_stop()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)

    def _deadline(self) -> float:
        assert self._stop_at is not None
        # Keep a little time for the delete/release calls themselves.
        margin = min(5.0, self.config.shutdown_deadline_seconds * 0.2)
        return self._stop_at + self.config.shutdown_deadline_seconds - margin

    # -- the loop --------------------------------------------------------------------------
    def run(self) -> int:
        """Consume until idle (return 0) or stopped (return RETRYABLE_EXIT_CODE)."""
        config = self.config
        last_message = time.monotonic()
        receive_failures = 0
        while not self.stopping:
            idle_left = config.idle_exit_seconds - (time.monotonic() - last_message)
            wait = min(config.poll_wait_seconds, max(0, math.ceil(idle_left)))
            try:
                batch = self.receive(wait)
                receive_failures = 0
            except Exception as error:
                if classify(error) is not Outcome.RETRY:
                    raise
                delay = backoff_delay(
                    receive_failures, config.backoff_initial_seconds, config.backoff_max_seconds
                )
                receive_failures += 1
                log.warning(
                    "receive failed, backing off", extra={"delay_s": delay, "error": repr(error)}
                )
                self._stop.wait(delay)
                continue
            if not batch:
                if time.monotonic() - last_message >= config.idle_exit_seconds:
                    log.info("queue idle, exiting", extra={"idle_s": config.idle_exit_seconds})
                    return IDLE_EXIT_CODE
                continue
            last_message = time.monotonic()
            if self.stopping:
                self.release(batch)
                break
            self.process(batch)
        return RETRYABLE_EXIT_CODE

    def receive(self, wait_seconds: int) -> list[ReceivedMessage]:
        response = self.sqs.receive_message(
            QueueUrl=self.config.queue_url,
            MaxNumberOfMessages=self.config.batch_size,
            WaitTimeSeconds=int(wait_seconds),
            VisibilityTimeout=self.config.visibility_timeout,
            AttributeNames=["ApproximateReceiveCount"],
        )
        return [ReceivedMessage.from_sqs(m) for m in response.get("Messages", [])]

    def process(self, batch: list[ReceivedMessage]) -> None:
        """Run the handler on a batch under a heartbeat; retry outages; settle every message."""
        heartbeat = _Heartbeat(self, batch)
        heartbeat.start()
        try:
            pending = list(batch)
            attempt = 0
            outage_started: float | None = None
            while pending:
                outcomes = self._run_handler(pending)
                if outcomes is None:  # stopped and the handler did not finish in time
                    self.release(pending)
                    return
                done = [m for m in pending if outcomes.get(m.message_id) == Outcome.DONE]
                malformed = [m for m in pending if outcomes.get(m.message_id) == Outcome.MALFORMED]
                deferred = [m for m in pending if outcomes.get(m.message_id) == Outcome.DEFER]
                settled = {m.message_id for m in (*done, *malformed, *deferred)}
                retry = [m for m in pending if m.message_id not in settled]
                self.delete(done)
                if deferred:
                    log.info(
                        "messages deferred",
                        extra={"count": len(deferred), "delay_s": self.config.defer_seconds},
                    )
                    self.change_visibility(deferred, self.config.defer_seconds)
                if malformed:
                    log.error(
                        "malformed messages left for the dead-letter queue",
                        extra={
                            "message_ids": [m.message_id for m in malformed],
                            "receive_counts": [m.receive_count for m in malformed],
                        },
                    )
                    self.release(malformed)
                pending = retry
                if not pending:
                    return
                now = time.monotonic()
                outage_started = outage_started or now
                delay = backoff_delay(
                    attempt, self.config.backoff_initial_seconds, self.config.backoff_max_seconds
                )
                attempt += 1
                if self.stopping or now - outage_started + delay > self.config.max_outage_seconds:
                    self.release(pending)
                    return
                log.warning(
                    "outage: retrying messages after backoff",
                    extra={
                        "delay_s": delay,
                        "attempt": attempt,
                        "message_ids": [m.message_id for m in pending],
                    },
                )
                if self._stop.wait(delay):
                    self.release(pending)
                    return
        finally:
            heartbeat.stop()

    def _run_handler(self, batch: list[ReceivedMessage]) -> dict[str, Outcome] | None:
        run = _HandlerRun(self.handler, batch)
        run.start()
        while run.is_alive():
            if self.stopping:
                remaining = self._deadline() - time.monotonic()
                if remaining <= 0:
                    log.warning("shutdown deadline reached with the handler still running")
                    self.abandoned_handler = True
                    return None
                run.join(min(remaining, 0.2))
            else:
                run.join(0.2)
        if run.error is not None:
            if classify(run.error) is Outcome.RETRY:
                log.warning("handler hit an outage", extra={"error": repr(run.error)})
                return {m.message_id: Outcome.RETRY for m in batch}
            if len(batch) > 1:
                log.error("handler failed; trying each message alone", exc_info=run.error)
                return self._isolate(batch)
            log.error("handler failed on the message", exc_info=run.error)
            return {batch[0].message_id: Outcome.MALFORMED}
        return run.outcomes

    def _isolate(self, batch: list[ReceivedMessage]) -> dict[str, Outcome] | None:
        """A poison message must not take its batch-mates with it: run the handler on each
        message alone, so only the one that raises is left for the dead-letter queue."""
        outcomes: dict[str, Outcome] = {}
        for message in batch:
            alone = self._run_handler([message])
            if alone is None:
                return None
            outcomes.update(alone)
        return outcomes

    # -- SQS calls ---------------------------------------------------------------------------
    def delete(self, messages: Sequence[ReceivedMessage]) -> None:
        for chunk in _chunks(messages):
            entries = [
                {"Id": str(i), "ReceiptHandle": m.receipt_handle} for i, m in enumerate(chunk)
            ]
            response = self._sqs_call(
                "delete_message_batch", QueueUrl=self.config.queue_url, Entries=entries
            )
            if response and response.get("Failed"):
                log.warning("delete failed for some messages", extra={"failed": response["Failed"]})

    def release(self, messages: Sequence[ReceivedMessage]) -> None:
        """Make messages visible again now (the next receiver, or the DLQ redrive, takes them)."""
        if messages:
            self.change_visibility(messages, 0)
            if self.metrics is not None and self.stopping:
                self.metrics.emit({Metric.MESSAGES_RELEASED: len(messages)})
            log.info("released messages", extra={"count": len(messages)})

    def change_visibility(self, messages: Sequence[ReceivedMessage], timeout: int) -> None:
        for chunk in _chunks(messages):
            entries: list[ChangeMessageVisibilityBatchRequestEntryTypeDef] = [
                {"Id": str(i), "ReceiptHandle": m.receipt_handle, "VisibilityTimeout": timeout}
                for i, m in enumerate(chunk)
            ]
            try:
                self.sqs.change_message_visibility_batch(
                    QueueUrl=self.config.queue_url, Entries=entries
                )
            except Exception as error:  # a lost heartbeat means a redelivery, never a loss
                log.warning("change visibility failed", extra={"error": repr(error)})

    def _sqs_call(self, operation: str, **kwargs: Any) -> Any:
        # One retry layer: the client retries adaptively (common.aws.RETRY_CONFIG, 8 attempts
        # with backoff and client-side rate limiting); a failure after those is left alone, as
        # not deleting is safe: the message comes back and the writes are idempotent.
        try:
            return getattr(self.sqs, operation)(**kwargs)
        except Exception as error:
            log.warning("%s failed", operation, extra={"error": repr(error)})
            return None


def _chunks(messages: Sequence[ReceivedMessage]) -> list[Sequence[ReceivedMessage]]:
    return [messages[i : i + SQS_MAX_BATCH] for i in range(0, len(messages), SQS_MAX_BATCH)]
