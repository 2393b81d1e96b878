"""Versioned SQS message schemas: detection, deletion, grouping, forget and erasure requests.

The indexing queue receives FaceFleet's own detection and delete requests and the gallery
bucket's S3 notifications (ObjectCreated and ObjectRemoved, configured on one queue so that one
worker orders a photo's create against its delete): they parse to `DetectionRequest`s and
`DeleteRequest`s. The GroupFace queue receives `GroupingRequest`s, `ForgetRequest`s (faces of
deleted photos to take out of people), `ErasureRequest`s (every face of a user) and
`AnswerRequest`s (a user's answer to a suggested question). Requests carry
ids, keys and times, never embeddings. Anything else raises `MalformedMessage`, which says what is
wrong, so a consumer can leave the message for the dead-letter queue instead of crashing.

Order: SQS does not keep it, so every create and delete carries its position, `EventOrder`:
S3's per-key `sequencer` when S3 sent it, and a time (the request's `requested_at`, or the
event's `eventTime`), both in epoch milliseconds. `happened_after` compares two positions.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any, Literal
from urllib.parse import unquote_plus

# The key layout (and the ids allowed in keys) is `s3keys`.
from facefleet.common.s3keys import ID_PATTERN as _ID_PATTERN
from facefleet.common.s3keys import USER_KEY_PREFIX, image_id_from_key, user_key_prefix

SCHEMA_VERSION = 1
SUPPORTED_VERSIONS = frozenset({1})

# Bounds checked before a body is parsed: SQS's classic message limit (every FaceFleet request
# and S3 notification is far smaller), and a JSON nesting depth no request comes near (deeper
# input would make the parser recurse without end, a poison message for the whole batch).
MAX_BODY_BYTES = 256 * 1024
MAX_JSON_DEPTH = 32


class MalformedMessage(ValueError):
    """A message body that is not a valid request; the text says which field and why."""


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True)
class EventOrder:
    """Where a create or delete of one photo stands in that photo's history: S3's sequencer
    (per object key, hexadecimal, later is greater) and/or a time in epoch milliseconds."""

    at_ms: int | None = None
    sequencer: str | None = None

    @property
    def known(self) -> bool:
        return self.at_ms is not None or self.sequencer is not None


def happened_after(event: EventOrder, other: EventOrder) -> bool:
    """True only when `event` is known to come strictly after `other`: by sequencer when both
    have one (S3: right-pad the shorter with zeros, then compare), else by time. An event of
    unknown position comes after nothing, so an unordered create never beats a delete."""
    if event.sequencer and other.sequencer:
        width = max(len(event.sequencer), len(other.sequencer))
        return event.sequencer.upper().ljust(width, "0") > other.sequencer.upper().ljust(width, "0")
    if event.at_ms is None or other.at_ms is None:
        return event.known and not other.known
    return event.at_ms > other.at_ms


@dataclass(frozen=True)
class DetectionRequest:
    user_id: str
    image_id: str
    bucket: str
    key: str
    version: int = SCHEMA_VERSION
    # When the photo was uploaded (sent): orders this create against a delete of the photo.
    requested_at: int | None = field(default_factory=now_ms)
    sequencer: str | None = None

    @property
    def order(self) -> EventOrder:
        return EventOrder(self.requested_at, self.sequencer)

    def to_body(self) -> str:
        return json.dumps({"type": "detect", **asdict(self)}, sort_keys=True)


@dataclass(frozen=True)
class DeleteRequest:
    """A photo was deleted: forget its faces. From the gallery (`requested_at` required) or
    from an S3 ObjectRemoved notification (`sequencer` and the event time)."""

    user_id: str
    image_id: str
    requested_at: int | None
    sequencer: str | None = None
    version: int = SCHEMA_VERSION

    @property
    def order(self) -> EventOrder:
        return EventOrder(self.requested_at, self.sequencer)

    def to_body(self) -> str:
        body = {
            "type": "delete",
            "user_id": self.user_id,
            "image_id": self.image_id,
            "requested_at": self.requested_at,
            "version": self.version,
        }
        return json.dumps(body, sort_keys=True)


IndexingRequest = DetectionRequest | DeleteRequest


@dataclass(frozen=True)
class ForgetRequest:
    """Grouping: faces of these photos are gone; take them out of the user's people."""

    user_id: str
    image_ids: tuple[str, ...]
    version: int = SCHEMA_VERSION

    def to_body(self) -> str:
        body = {
            "type": "forget",
            "user_id": self.user_id,
            "image_ids": list(self.image_ids),
            "version": self.version,
        }
        return json.dumps(body, sort_keys=True)


ErasureReason = Literal["request", "opt_out", "retention"]
ERASURE_REASONS = frozenset({"request", "opt_out", "retention"})


@dataclass(frozen=True)
class ErasureRequest:
    """Erase every face of a user (the user asked, or turned face recognition off)."""

    user_id: str
    requested_at: int = field(default_factory=now_ms)
    reason: ErasureReason = "request"
    version: int = SCHEMA_VERSION

    def to_body(self) -> str:
        body = {
            "type": "erase",
            "user_id": self.user_id,
            "requested_at": self.requested_at,
            "reason": self.reason,
            "version": self.version,
        }
        return json.dumps(body, sort_keys=True)


@dataclass(frozen=True)
class GroupingRequest:
    user_id: str
    image_ids: tuple[str, ...]
    version: int = SCHEMA_VERSION

    def to_body(self) -> str:
        body = {
            "type": "group",
            "user_id": self.user_id,
            "image_ids": list(self.image_ids),
            "version": self.version,
        }
        return json.dumps(body, sort_keys=True)


ANSWERS = ("same", "different", "skip")


@dataclass(frozen=True)
class AnswerRequest:
    """Grouping: the user answered one of their suggested questions (`facefleet people
    suggest`): the question's id and "same", "different" or "skip"."""

    user_id: str
    question_id: str
    answer: str
    version: int = SCHEMA_VERSION

    def to_body(self) -> str:
        body = {
            "type": "answer",
            "user_id": self.user_id,
            "question_id": self.question_id,
            "answer": self.answer,
            "version": self.version,
        }
        return json.dumps(body, sort_keys=True)


GroupQueueRequest = GroupingRequest | ForgetRequest | ErasureRequest | AnswerRequest


def _json_depth(text: str) -> int:
    """The deepest bracket nesting outside strings (a linear scan, no recursion)."""
    depth = deepest = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest


def _load(body: str | bytes) -> dict[str, Any]:
    if not isinstance(body, str | bytes):
        raise MalformedMessage(f"body must be text, got {type(body).__name__}")
    size = len(body.encode() if isinstance(body, str) else body)
    if size > MAX_BODY_BYTES:
        raise MalformedMessage(f"body is {size} bytes, over the {MAX_BODY_BYTES}-byte limit")
    try:
        text = body.decode() if isinstance(body, bytes) else body
    except UnicodeDecodeError as error:
        raise MalformedMessage(f"body is not UTF-8: {error}") from None
    depth = _json_depth(text)
    if depth > MAX_JSON_DEPTH:
        raise MalformedMessage(
            f"body nests {depth} levels deep, over the limit of {MAX_JSON_DEPTH}"
        )
    try:
        data = json.loads(text)
    except (ValueError, TypeError, RecursionError) as error:
        raise MalformedMessage(f"body is not JSON: {error}") from None
    if not isinstance(data, dict):
        raise MalformedMessage(f"body must be a JSON object, got {type(data).__name__}")
    return data


def _field(data: dict[str, Any], name: str, kind: type, where: str = "") -> Any:
    if name not in data:
        raise MalformedMessage(f"missing field {where}{name!r}")
    value = data[name]
    # bool is an int subclass; a version of `true` is still wrong.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise MalformedMessage(
            f"field {where}{name!r} must be {kind.__name__}, got {type(value).__name__}"
        )
    return value


def _identifier(data: dict[str, Any], name: str) -> str:
    value: str = _field(data, name, str)
    if not _ID_PATTERN.match(value):
        raise MalformedMessage(f"field {name!r} is not a valid identifier: {value!r}")
    return value


def _version(data: dict[str, Any]) -> int:
    version: int = _field(data, "version", int)
    if version not in SUPPORTED_VERSIONS:
        raise MalformedMessage(
            f"unknown schema version {version}; supported: {sorted(SUPPORTED_VERSIONS)}"
        )
    return version


def _check_key(user_id: str, key: str) -> None:
    if not key.startswith(user_key_prefix(user_id)) or ".." in key.split("/"):
        raise MalformedMessage(
            f"key {key!r} is outside user {user_id!r}'s prefix {user_key_prefix(user_id)!r}"
        )


def _optional_int(data: dict[str, Any], name: str) -> int | None:
    if data.get(name) is None:
        return None
    value: int = _field(data, name, int)
    if value < 0:
        raise MalformedMessage(f"field {name!r} must not be negative, got {value}")
    return value


def _detection_from_request(data: dict[str, Any]) -> DetectionRequest:
    version = _version(data)
    user_id = _identifier(data, "user_id")
    image_id = _identifier(data, "image_id")
    bucket: str = _field(data, "bucket", str)
    key: str = _field(data, "key", str)
    if not bucket:
        raise MalformedMessage("field 'bucket' is empty")
    _check_key(user_id, key)
    # Bodies written before `requested_at` existed have no position: they never beat a delete.
    requested_at = _optional_int(data, "requested_at")
    return DetectionRequest(user_id, image_id, bucket, key, version, requested_at)


def _delete_from_request(data: dict[str, Any]) -> DeleteRequest:
    version = _version(data)
    user_id = _identifier(data, "user_id")
    image_id = _identifier(data, "image_id")
    requested_at: int = _field(data, "requested_at", int)
    if requested_at < 0:
        raise MalformedMessage(f"field 'requested_at' must not be negative, got {requested_at}")
    return DeleteRequest(user_id, image_id, requested_at, None, version)


def _event_time_ms(record: dict[str, Any]) -> int | None:
    value = record.get("eventTime")
    if not isinstance(value, str):
        return None
    try:
        return int(datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp() * 1000)
    except ValueError:
        return None


def _from_s3_record(record: Any, position: int) -> IndexingRequest:
    where = f"Records[{position}]."
    if not isinstance(record, dict):
        raise MalformedMessage(f"{where[:-1]} must be an object")
    event = _field(record, "eventName", str, where)
    created = event.startswith("ObjectCreated:")
    if not created and not event.startswith("ObjectRemoved:"):
        raise MalformedMessage(
            f"{where}eventName {event!r} is not an ObjectCreated or ObjectRemoved event"
        )
    s3 = _field(record, "s3", dict, where)
    bucket = _field(_field(s3, "bucket", dict, where + "s3."), "name", str, where + "s3.bucket.")
    s3_object = _field(s3, "object", dict, where + "s3.")
    raw_key = _field(s3_object, "key", str, where + "s3.object.")
    key = unquote_plus(raw_key)  # S3 notifications URL-encode keys
    parts = key.split("/")
    if len(parts) < 3 or parts[0] != USER_KEY_PREFIX or not _ID_PATTERN.match(parts[1]):
        raise MalformedMessage(
            f"{where}s3.object.key {key!r} is not under '{USER_KEY_PREFIX}/<user id>/'"
        )
    user_id = parts[1]
    _check_key(user_id, key)
    sequencer = s3_object.get("sequencer")
    if sequencer is not None and (
        not isinstance(sequencer, str) or not all(c in "0123456789abcdefABCDEF" for c in sequencer)
    ):
        raise MalformedMessage(f"{where}s3.object.sequencer is not hexadecimal: {sequencer!r}")
    at_ms = _event_time_ms(record)
    image_id = image_id_from_key(user_id, key)
    if created:
        return DetectionRequest(user_id, image_id, bucket, key, SCHEMA_VERSION, at_ms, sequencer)
    return DeleteRequest(user_id, image_id, at_ms, sequencer)


def parse_indexing_message(body: str | bytes) -> list[IndexingRequest]:
    """Parse an indexing-queue body: a FaceFleet detect or delete request, or an S3
    ObjectCreated / ObjectRemoved notification. An S3 test event yields no requests."""
    data = _load(body)
    if data.get("Event") == "s3:TestEvent":
        return []
    if "Records" in data:
        records = data["Records"]
        if not isinstance(records, list) or not records:
            raise MalformedMessage("field 'Records' must be a non-empty list")
        return [_from_s3_record(record, i) for i, record in enumerate(records)]
    kind = data.get("type")
    if kind == "delete":
        return [_delete_from_request(data)]
    if kind != "detect":
        raise MalformedMessage(f"field 'type' must be 'detect' or 'delete', got {kind!r}")
    return [_detection_from_request(data)]


def _image_ids(data: dict[str, Any]) -> tuple[str, ...]:
    image_ids = _field(data, "image_ids", list)
    for position, image_id in enumerate(image_ids):
        if not isinstance(image_id, str) or not _ID_PATTERN.match(image_id):
            raise MalformedMessage(f"image_ids[{position}] is not a valid identifier: {image_id!r}")
    return tuple(image_ids)


def parse_group_queue_message(body: str | bytes) -> GroupQueueRequest:
    """Parse a GroupFace-queue body: a group, forget or erase request."""
    data = _load(body)
    kind = data.get("type")
    if kind == "group":
        return parse_grouping_message(body)
    if kind == "forget":
        version = _version(data)
        return ForgetRequest(_identifier(data, "user_id"), _image_ids(data), version)
    if kind == "erase":
        version = _version(data)
        user_id = _identifier(data, "user_id")
        requested_at: int = _field(data, "requested_at", int)
        reason = data.get("reason", "request")
        if reason not in ERASURE_REASONS:
            raise MalformedMessage(
                f"field 'reason' must be one of {sorted(ERASURE_REASONS)}, got {reason!r}"
            )
        return ErasureRequest(user_id, requested_at, reason, version)
    if kind == "answer":
        return _answer_from_request(data)
    raise MalformedMessage(
        f"field 'type' must be 'group', 'forget', 'erase' or 'answer', got {kind!r}"
    )


def _answer_from_request(data: dict[str, Any]) -> AnswerRequest:
    version = _version(data)
    user_id = _identifier(data, "user_id")
    question_id = _identifier(data, "question_id")
    answer = data.get("answer")
    if answer not in ANSWERS:
        raise MalformedMessage(f"field 'answer' must be one of {list(ANSWERS)}, got {answer!r}")
    return AnswerRequest(user_id, question_id, answer, version)


def parse_grouping_message(body: str | bytes) -> GroupingRequest:
    """Parse a GroupFace-queue body."""
    data = _load(body)
    if data.get("type") != "group":
        raise MalformedMessage(f"field 'type' must be 'group', got {data.get('type')!r}")
    version = _version(data)
    user_id = _identifier(data, "user_id")
    return GroupingRequest(user_id, _image_ids(data), version)
