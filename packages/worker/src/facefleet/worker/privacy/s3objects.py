"""Listing and deleting face-group bucket objects in bulk (crops and covers)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

DELETE_CHUNK = 1000  # DeleteObjects takes at most 1,000 keys


def keys_under(s3: Any, bucket: str, prefix: str) -> Iterator[str]:
    paginator = s3.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            yield item["Key"]


def delete_keys(s3: Any, bucket: str, keys: Iterable[str]) -> int:
    """Delete the objects (a missing one is no error); returns how many keys were sent."""
    unique = sorted(set(keys))
    for start in range(0, len(unique), DELETE_CHUNK):
        chunk = unique[start : start + DELETE_CHUNK]
        response = s3.delete_objects(
            Bucket=bucket, Delete={"Objects": [{"Key": k} for k in chunk], "Quiet": True}
        )
        errors = response.get("Errors", [])
        if errors:
            first = errors[0]
            raise RuntimeError(
                f"s3://{bucket}: {len(errors)} objects not deleted, "
                f"first {first.get('Key')!r}: {first.get('Code')} {first.get('Message')}"
            )
    return len(unique)
