"""Message schemas: round-trips for every valid request, one typed error for anything else."""

from __future__ import annotations

import contextlib
import json
from dataclasses import replace
from typing import Any
from urllib.parse import quote_plus

import pytest
from hypothesis import given
from hypothesis import strategies as st

from facefleet.common.messages import (
    DetectionRequest,
    GroupingRequest,
    MalformedMessage,
    parse_grouping_message,
    parse_indexing_message,
)
from facefleet.common.s3keys import image_id_from_key, image_key

identifiers = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9._@:-]{0,40}\Z")
buckets = st.from_regex(r"\A[a-z0-9][a-z0-9.-]{2,40}\Z")


@st.composite
def detection_requests(draw: st.DrawFn) -> DetectionRequest:
    user, image = draw(identifiers), draw(identifiers)
    return DetectionRequest(user, image, draw(buckets), image_key(user, image))


@given(detection_requests())
def test_detection_request_round_trips(request: DetectionRequest) -> None:
    assert parse_indexing_message(request.to_body()) == [request]


@given(identifiers, st.lists(identifiers, max_size=20))
def test_grouping_request_round_trips(user: str, images: list[str]) -> None:
    request = GroupingRequest(user, tuple(images))
    assert parse_grouping_message(request.to_body()) == request


def s3_event(bucket: str, *keys: str, event: str = "ObjectCreated:Put") -> str:
    records = [
        {"eventName": event, "s3": {"bucket": {"name": bucket}, "object": {"key": quote_plus(k)}}}
        for k in keys
    ]
    return json.dumps({"Records": records})


@given(detection_requests())
def test_s3_notification_parses_to_the_same_request(request: DetectionRequest) -> None:
    parsed = parse_indexing_message(s3_event(request.bucket, request.key))
    # The notification has no eventTime here, so no position; the photo is the same.
    assert parsed == [replace(request, requested_at=None)]


def test_s3_notification_with_several_records_and_encoded_keys() -> None:
    body = s3_event("gallery", "users/u1/my photo+1.jpg", "users/u1/b.png")
    parsed = parse_indexing_message(body)
    assert [p.key for p in parsed] == ["users/u1/my photo+1.jpg", "users/u1/b.png"]
    assert parsed[1].image_id == "b.png"
    # A name that is no identifier still maps to one stable, valid image id.
    again = parse_indexing_message(body)[0].image_id
    assert parsed[0].image_id == again and again.startswith("k") and " " not in again


def test_image_ids_are_unique_per_key_and_stable() -> None:
    """Keys that differ only in extension or folder are different photos (issue: `plain.jpg`
    and `plain.png` once shared an image id, and the last one processed replaced the other)."""
    keys = [
        "users/bob/plain.jpg",
        "users/bob/plain.png",
        "users/bob/face.gif",
        "users/bob/face.webp",
        "users/bob/face.heic",
        "users/bob/face",
        "users/bob/2024/plain.jpg",
        "users/bob/2025/plain.jpg",
        "users/bob/my plain.jpg",
    ]
    ids = [image_id_from_key("bob", key) for key in keys]
    assert len(set(ids)) == len(keys)
    assert ids == [image_id_from_key("bob", key) for key in keys]  # stable
    assert ids[:2] == ["plain.jpg", "plain.png"]


@given(identifiers, identifiers)
def test_image_key_and_image_id_from_key_agree(user: str, image: str) -> None:
    assert image_id_from_key(user, image_key(user, image)) == image


def test_s3_test_event_yields_nothing() -> None:
    assert parse_indexing_message(json.dumps({"Event": "s3:TestEvent"})) == []


def valid() -> dict[str, Any]:
    return json.loads(DetectionRequest("u1", "img1", "gallery", image_key("u1", "img1")).to_body())


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        (lambda d: d.pop("user_id"), "missing field 'user_id'"),
        (lambda d: d.pop("key"), "missing field 'key'"),
        (lambda d: d.update(image_id=7), "'image_id' must be str, got int"),
        (lambda d: d.update(version=True), "'version' must be int, got bool"),
        (lambda d: d.update(version=99), "unknown schema version 99"),
        (lambda d: d.update(key="users/u2/img1.jpg"), "outside user 'u1'"),
        (lambda d: d.update(key="users/u1/../u2/x.jpg"), "outside user 'u1'"),
        (lambda d: d.update(user_id="../etc"), "not a valid identifier"),
        (lambda d: d.update(type="resize"), "'type' must be 'detect'"),
        (lambda d: d.update(bucket=""), "'bucket' is empty"),
    ],
)
def test_malformed_detection_requests_say_what_is_wrong(change: Any, fragment: str) -> None:
    data = valid()
    change(data)
    with pytest.raises(MalformedMessage, match=fragment.replace("(", r"\(").replace(".", r"\.")):
        parse_indexing_message(json.dumps(data))


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ("not json", "not JSON"),
        ("[1, 2]", "must be a JSON object"),
        (json.dumps({"Records": []}), "non-empty list"),
        (
            s3_event("gallery", "users/u1/a.jpg", event="ObjectTagging:Put"),
            "not an ObjectCreated",
        ),
        (s3_event("gallery", "elsewhere/a.jpg"), "is not under 'users/<user id>/'"),
        ("[" * 100_000, "nests 100000 levels deep"),  # once a RecursionError: poison
        ('{"a": ' * 40 + "1" + "}" * 40, "nests 40 levels deep"),
        (json.dumps({"type": "detect", "pad": "x" * 300_000}), "over the 262144-byte limit"),
        (b"\xff\xfe{}", "not UTF-8"),
    ],
)
def test_malformed_bodies(body: str | bytes, fragment: str) -> None:
    with pytest.raises(MalformedMessage, match=fragment.replace("(", r"\(")):
        parse_indexing_message(body)
    with pytest.raises(MalformedMessage):
        parse_grouping_message(body)


def test_brackets_inside_strings_do_not_count_as_nesting() -> None:
    body = json.dumps({**valid(), "note": "[" * 1000})
    assert parse_indexing_message(body)[0].image_id == "img1"


def test_malformed_grouping_requests() -> None:
    with pytest.raises(MalformedMessage, match="image_ids"):
        parse_grouping_message(json.dumps({"type": "group", "version": 1, "user_id": "u"}))
    with pytest.raises(MalformedMessage, match=r"image_ids\[1\]"):
        parse_grouping_message(
            json.dumps({"type": "group", "version": 1, "user_id": "u", "image_ids": ["a", 3]})
        )


@given(
    st.dictionaries(st.text(max_size=8), st.one_of(st.integers(), st.text(max_size=8)), max_size=6)
)
def test_arbitrary_objects_never_crash_the_parser(data: dict[str, Any]) -> None:
    for parse in (parse_indexing_message, parse_grouping_message):
        with contextlib.suppress(MalformedMessage):
            parse(json.dumps(data))


def test_every_key_layout_comes_from_s3keys() -> None:
    from facefleet.common import s3keys
    from facefleet.worker.detection import records
    from facefleet.worker.grouping import writeback

    assert records.crop_key is s3keys.crop_key
    assert writeback.cover_key is s3keys.cover_key
    assert s3keys.image_key("u1", "img1.jpg") == "users/u1/img1.jpg"
    assert s3keys.crop_key("u1", "img1", "f1") == "faces/u1/img1/f1.jpg"
    assert s3keys.cover_key("u1", 7, s3keys.crop_key("u1", "img1", "f1")) == "people/u1/000007.jpg"
