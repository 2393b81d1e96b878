"""Versioned SQS message schemas: detection and grouping requests.

The indexing queue receives either FaceFleet's own detection request or an S3 ObjectCreated
notification (a bucket can notify SQS directly); both parse to `DetectionRequest`s. Anything
else raises `MalformedMessage`, which says what is wrong, so a consumer can leave the message for
the dead-letter queue instead of crashing.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import unquote_plus

# The key layout (and the ids allowed in keys) is `s3keys`; re-exported for existing callers.
from facefleet.common.s3keys import ID_PATTERN as _ID_PATTERN
from facefleet.common.s3keys import USER_KEY_PREFIX as USER_KEY_PREFIX
from facefleet.common.s3keys import image_id_from_key as image_id_from_key
from facefleet.common.s3keys import image_key as image_key
from facefleet.common.s3keys import user_key_prefix as user_key_prefix

SCHEMA_VERSION = 1
SUPPORTED_VERSIONS = frozenset({1})

# Bounds checked before a body is parsed: SQS's classic message limit (every FaceFleet request
# and S3 notification is far smaller), and a JSON nesting depth no request comes near (deeper
# input would make the parser recurse without end, a poison message for the whole batch).
MAX_BODY_BYTES = 256 * 1024
MAX_JSON_DEPTH = 32


class MalformedMessage(ValueError):
    """A message body that is not a valid request; the text says which field and why."""


@dataclass(frozen=True)
class DetectionRequest:
    user_id: str
    image_id: str
    bucket: str
    key: str
    version: int = SCHEMA_VERSION

    def to_body(self) -> str:
        return json.dumps({"type": "detect", **asdict(self)}, sort_keys=True)


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


def _detection_from_request(data: dict[str, Any]) -> DetectionRequest:
    version = _version(data)
    user_id = _identifier(data, "user_id")
    image_id = _identifier(data, "image_id")
    bucket: str = _field(data, "bucket", str)
    key: str = _field(data, "key", str)
    if not bucket:
        raise MalformedMessage("field 'bucket' is empty")
    _check_key(user_id, key)
    return DetectionRequest(user_id, image_id, bucket, key, version)


def _detection_from_s3_record(record: Any, position: int) -> DetectionRequest:
    where = f"Records[{position}]."
    if not isinstance(record, dict):
        raise MalformedMessage(f"{where[:-1]} must be an object")
    event = _field(record, "eventName", str, where)
    if not event.startswith("ObjectCreated:"):
        raise MalformedMessage(f"{where}eventName {event!r} is not an ObjectCreated event")
    s3 = _field(record, "s3", dict, where)
    bucket = _field(_field(s3, "bucket", dict, where + "s3."), "name", str, where + "s3.bucket.")
    raw_key = _field(_field(s3, "object", dict, where + "s3."), "key", str, where + "s3.object.")
    key = unquote_plus(raw_key)  # S3 notifications URL-encode keys
    parts = key.split("/")
    if len(parts) < 3 or parts[0] != USER_KEY_PREFIX or not _ID_PATTERN.match(parts[1]):
        raise MalformedMessage(
            f"{where}s3.object.key {key!r} is not under '{USER_KEY_PREFIX}/<user id>/'"
        )
    user_id = parts[1]
    _check_key(user_id, key)
    return DetectionRequest(user_id, image_id_from_key(user_id, key), bucket, key)


def parse_detection_message(body: str | bytes) -> list[DetectionRequest]:
    """Parse an indexing-queue body: a FaceFleet request or an S3 ObjectCreated notification.

    An S3 test event (sent once when notifications are configured) yields no requests.
    """
    data = _load(body)
    if data.get("Event") == "s3:TestEvent":
        return []
    if "Records" in data:
        records = data["Records"]
        if not isinstance(records, list) or not records:
            raise MalformedMessage("field 'Records' must be a non-empty list")
        return [_detection_from_s3_record(record, i) for i, record in enumerate(records)]
    if data.get("type") != "detect":
        raise MalformedMessage(f"field 'type' must be 'detect', got {data.get('type')!r}")
    return [_detection_from_request(data)]


def parse_grouping_message(body: str | bytes) -> GroupingRequest:
    """Parse a GroupFace-queue body."""
    data = _load(body)
    if data.get("type") != "group":
        raise MalformedMessage(f"field 'type' must be 'group', got {data.get('type')!r}")
    version = _version(data)
    user_id = _identifier(data, "user_id")
    image_ids = _field(data, "image_ids", list)
    for position, image_id in enumerate(image_ids):
        if not isinstance(image_id, str) or not _ID_PATTERN.match(image_id):
            raise MalformedMessage(f"image_ids[{position}] is not a valid identifier: {image_id!r}")
    return GroupingRequest(user_id, tuple(image_ids), version)
