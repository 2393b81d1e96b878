"""The one place boto3 clients are built: region, endpoint override and retries configured.

AWS_ENDPOINT_URL (honoured by boto3 itself) points every client at the local moto server; the
adaptive retry mode backs off on throttling, which a burst of Batch submissions or SQS calls hits.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import boto3
from botocore.config import Config

RETRY_CONFIG = Config(
    retries={"max_attempts": 8, "mode": "adaptive"},
    connect_timeout=5,
    read_timeout=60,
)


@lru_cache(maxsize=64)
def _client(service: str, region: str, endpoint_url: str | None) -> Any:
    session = boto3.session.Session()
    return session.client(  # type: ignore[call-overload]
        service, region_name=region, endpoint_url=endpoint_url, config=RETRY_CONFIG
    )


def client(service: str, region: str, endpoint_url: str | None = None) -> Any:
    """A cached, thread-safe boto3 client for `service`.

    Clients are typed `Any` here; callers annotate with the boto3-stubs type they use.
    """
    return _client(service, region, endpoint_url)


def queue_name(queue_url: str) -> str:
    """The queue name at the end of an SQS queue URL."""
    return queue_url.rstrip("/").rsplit("/", 1)[-1]
