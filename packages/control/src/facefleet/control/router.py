"""The cutover router: each incoming indexing message goes to the ECS queue or the Batch queue.

The split is a stable hash of the image id: an image's bucket (0 <= b < 100, from SHA-256) goes to
Batch when b < weight. The same image always takes the same path at a given weight, and raising
the weight only moves images from ECS to Batch (never back), so a retried or re-uploaded image
is not processed by both sides. The weight (and the stage) live in SSM Parameter Store under
`Names.cutover_parameter_prefix`; the cutover flow writes them and the router reads them,
cached for a few seconds.

Messages whose image id cannot be read (malformed) go to the ECS queue: the existing service
keeps handling (and dead-lettering) what it always did.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping
from typing import Any

from facefleet.common.aws import AwsTarget
from facefleet.common.config import Names
from facefleet.common.messages import MalformedMessage, parse_indexing_message

WEIGHT = "weight"
STAGE = "stage"


def parameter(names: Names, leaf: str) -> str:
    return f"{names.cutover_parameter_prefix}/{leaf}"


def bucket(image_id: str) -> float:
    """The image's place in [0, 100): uniform over ids, fixed for an id."""
    digest = hashlib.sha256(image_id.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 * 100.0


def goes_to_batch(image_id: str, weight: float) -> bool:
    return bucket(image_id) < weight


def image_id_of(body: str | bytes) -> str | None:
    """The image id a message is about (the first record's, for a multi-record S3 event); a
    photo's delete takes the same path as its create."""
    try:
        requests = parse_indexing_message(body)
    except MalformedMessage:
        return None
    return requests[0].image_id if requests else None


def read_weight(names: Names, aws: AwsTarget) -> int:
    """The Batch share in percent; 0 (all ECS) when the cutover has not started."""
    ssm = aws.client("ssm")
    try:
        value = ssm.get_parameter(Name=parameter(names, WEIGHT))["Parameter"]["Value"]
    except ssm.exceptions.ParameterNotFound:
        return 0
    return int(value)


def write_weight(names: Names, weight: int, stage: int, aws: AwsTarget) -> None:
    ssm = aws.client("ssm")
    for leaf, value in ((WEIGHT, weight), (STAGE, stage)):
        ssm.put_parameter(
            Name=parameter(names, leaf), Value=str(value), Type="String", Overwrite=True
        )


class Router:
    """Routes (and forwards) indexing messages by the current cutover weight."""

    def __init__(
        self,
        names: Names,
        aws: AwsTarget,
        *,
        ecs_queue_url: str | None = None,
        batch_queue_url: str | None = None,
        cache_s: float = 10.0,
    ) -> None:
        self.names = names
        self.aws = aws
        self.cache_s = cache_s
        self._sqs = aws.client("sqs")
        self.ecs_queue_url = ecs_queue_url or self._url(names.ecs_indexing_queue)
        self.batch_queue_url = batch_queue_url or self._url(names.indexing_queue)
        self._weight: tuple[float, int] | None = None  # (read at, weight)

    def _url(self, name: str) -> str:
        return str(self._sqs.get_queue_url(QueueName=name)["QueueUrl"])

    def weight(self) -> int:
        now = time.monotonic()
        if self._weight is None or now - self._weight[0] > self.cache_s:
            self._weight = (now, read_weight(self.names, self.aws))
        return self._weight[1]

    def route(self, message: str | bytes | Mapping[str, Any]) -> str:
        """The queue URL this message belongs on."""
        body = json.dumps(message) if isinstance(message, Mapping) else message
        image_id = image_id_of(body)
        if image_id is not None and goes_to_batch(image_id, self.weight()):
            return self.batch_queue_url
        return self.ecs_queue_url

    def forward(
        self, message: str | Mapping[str, Any], attributes: Mapping[str, Any] | None = None
    ) -> str:
        """Send the message to its queue; return that queue's URL."""
        body = json.dumps(message) if isinstance(message, Mapping) else message
        url = self.route(body)
        if attributes:
            self._sqs.send_message(
                QueueUrl=url, MessageBody=body, MessageAttributes=dict(attributes)
            )
        else:
            self._sqs.send_message(QueueUrl=url, MessageBody=body)
        return url
