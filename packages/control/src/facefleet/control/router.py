"""The cutover router: each message on the ingress queue goes to the ECS queue or the Batch queue.

The ingress queue is the one producers already write to (the existing service's indexing queue);
the ECS service reads a queue of its own once the cutover starts (`Names.ecs_indexing_queue`).

The split is by USER, not by image: grouping state is per user, and two grouping
implementations must never write people for the same user. A user's bucket (0 <= b < 100, from
SHA-256 of the user id) goes to Batch when b < weight. The same user always takes the same path
at a given weight, and raising the weight only ever moves users from ECS to Batch (never back):
a user moves once, whole. The weight (and the stage) live in SSM Parameter Store under
`Names.cutover_parameter_prefix`; the cutover flow writes them and the router reads them,
cached for at most `MAX_CACHE_S` (a minute).

An S3 event with several records is split into one message per record (each record's user is
routed on its own). A message, or a record, whose user cannot be read (malformed) goes to the
ECS queue: the existing service keeps handling (and dead-lettering) what it always did.

Hosted by the router Lambda (`lambda_router`, an SQS event source on the ingress queue) in
production and by a process of the embedded stack (`router_process`) locally; both call
`Router.forward_batch`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from facefleet.common.aws import AwsTarget
from facefleet.common.messages import MalformedMessage, parse_indexing_message
from facefleet.common.metrics import Metric, MetricsEmitter
from facefleet.common.names import Names
from facefleet.control import parameters

WEIGHT = "weight"
STAGE = "stage"
MAX_CACHE_S = 60.0
METRICS_SERVICE = "router"
BATCH, ECS = "batch", "ecs"

log = logging.getLogger(__name__)


def parameter(names: Names, leaf: str) -> str:
    return f"{names.cutover_parameter_prefix}/{leaf}"


def bucket(user_id: str) -> float:
    """The user's place in [0, 100): uniform over ids, fixed for an id."""
    digest = hashlib.sha256(user_id.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 * 100.0


def goes_to_batch(user_id: str, weight: float) -> bool:
    return bucket(user_id) < weight


def side_of(user_id: str | None, weight: float) -> str:
    return BATCH if user_id is not None and goes_to_batch(user_id, weight) else ECS


def user_id_of(body: str | bytes) -> str | None:
    """The user a single-request message is about; None when it cannot be read."""
    try:
        requests = parse_indexing_message(body)
    except MalformedMessage:
        return None
    users = {r.user_id for r in requests}
    return users.pop() if len(users) == 1 else None


def split(body: str | bytes) -> list[tuple[str | bytes, str | None]]:
    """(body, user id or None) per message to forward: an S3 event with several records
    becomes one S3 event per record; anything else is one message, unchanged."""
    try:
        data = json.loads(body)
    except (ValueError, TypeError, RecursionError):
        return [(body, None)]
    records = data.get("Records") if isinstance(data, dict) else None
    if not isinstance(records, list) or len(records) < 2:
        return [(body, user_id_of(body))]
    parts: list[tuple[str | bytes, str | None]] = []
    for record in records:
        part = json.dumps({**data, "Records": [record]}, sort_keys=True)
        parts.append((part, user_id_of(part)))
    return parts


def read_weight(names: Names, aws: AwsTarget) -> int:
    """The Batch share in percent; 0 (all ECS) when the cutover has not started."""
    value = parameters.read(aws, parameter(names, WEIGHT))
    return 0 if value is None else int(value)


def write_weight(names: Names, weight: int, stage: int, aws: AwsTarget) -> None:
    for leaf, value in ((WEIGHT, weight), (STAGE, stage)):
        parameters.write(aws, parameter(names, leaf), str(value))


@dataclass(frozen=True)
class Forwarded:
    """Where one incoming message went: (side, queue URL, user id) per forwarded part."""

    parts: tuple[tuple[str, str, str | None], ...]

    @property
    def sides(self) -> list[str]:
        return [side for side, _, _ in self.parts]


class Router:
    """Routes (and forwards) ingress messages by the current cutover weight."""

    def __init__(
        self,
        names: Names,
        aws: AwsTarget,
        *,
        ecs_queue_url: str | None = None,
        batch_queue_url: str | None = None,
        cache_s: float = 30.0,
        metrics: MetricsEmitter | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 0 <= cache_s <= MAX_CACHE_S:
            raise ValueError(f"cache_s={cache_s}: the weight may be at most a minute stale")
        self.names = names
        self.aws = aws
        self.cache_s = cache_s
        self.metrics = metrics
        self.clock = clock
        self._sqs = aws.client("sqs")
        self.ecs_queue_url = ecs_queue_url or self._url(names.ecs_indexing_queue)
        self.batch_queue_url = batch_queue_url or self._url(names.indexing_queue)
        self._weight: tuple[float, int] | None = None  # (read at, weight)

    def _url(self, name: str) -> str:
        return str(self._sqs.get_queue_url(QueueName=name)["QueueUrl"])

    def weight(self) -> int:
        now = self.clock()
        if self._weight is None or now - self._weight[0] >= self.cache_s:
            self._weight = (now, read_weight(self.names, self.aws))
        return self._weight[1]

    def url(self, side: str) -> str:
        return self.batch_queue_url if side == BATCH else self.ecs_queue_url

    def forward(
        self,
        message: str | bytes | Mapping[str, Any],
        attributes: Mapping[str, Any] | None = None,
    ) -> Forwarded:
        """Send the message (split per S3 record) to its queue(s). Raises on a failed send:
        the caller keeps the ingress message, and a redelivery re-sends (the workers' writes
        are idempotent per image)."""
        body = json.dumps(message) if isinstance(message, Mapping) else message
        weight = self.weight()
        parts = []
        for part, user_id in split(body):
            side = side_of(user_id, weight)
            url = self.url(side)
            text = part.decode() if isinstance(part, bytes) else part
            if attributes:
                self._sqs.send_message(
                    QueueUrl=url, MessageBody=text, MessageAttributes=dict(attributes)
                )
            else:
                self._sqs.send_message(QueueUrl=url, MessageBody=text)
            parts.append((side, url, user_id))
        return Forwarded(tuple(parts))

    def forward_batch(
        self, messages: Iterable[tuple[str, str | bytes, Mapping[str, Any] | None]]
    ) -> tuple[list[str], list[str]]:
        """Forward (id, body, attributes) triples; (forwarded ids, failed ids). One counts
        metric line per batch: messages routed to each side."""
        done: list[str] = []
        failed: list[str] = []
        counts = {BATCH: 0, ECS: 0}
        for message_id, body, attributes in messages:
            try:
                forwarded = self.forward(body, attributes)
            except Exception:
                log.exception("forwarding failed; the message stays on the ingress queue")
                failed.append(message_id)
                continue
            done.append(message_id)
            for side in forwarded.sides:
                counts[side] += 1
        if self.metrics is not None and (done or failed):
            self.metrics.emit(
                {
                    Metric.ROUTED_TO_BATCH: counts[BATCH],
                    Metric.ROUTED_TO_ECS: counts[ECS],
                    Metric.ROUTER_ERRORS: len(failed),
                },
                prefix=self.names.prefix,
                weight=self.weight(),
            )
        return done, failed


def lambda_attributes(record: Mapping[str, Any]) -> dict[str, Any]:
    """An SQS event record's message attributes in SendMessage's shape (Lambda writes
    `stringValue`/`dataType` and base64 text for binary values; SendMessage takes
    `StringValue`/`DataType` and bytes)."""
    converted: dict[str, Any] = {}
    for name, value in (record.get("messageAttributes") or {}).items():
        entry: dict[str, Any] = {"DataType": value["dataType"]}
        if value.get("stringValue") is not None:
            entry["StringValue"] = value["stringValue"]
        if value.get("binaryValue") is not None:
            entry["BinaryValue"] = base64.b64decode(value["binaryValue"])
        converted[name] = entry
    return converted


def users_by_side(user_ids: Sequence[str], weight: float) -> dict[str, list[str]]:
    """The users on each side at `weight` (for status pages and tests)."""
    sides: dict[str, list[str]] = {BATCH: [], ECS: []}
    for user_id in sorted(set(user_ids)):
        sides[side_of(user_id, weight)].append(user_id)
    return sides
