"""Queue/bucket helpers for the worker tests: real resources on the moto server, per namespace."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class TestQueue:
    url: str
    dlq_url: str


def create_queue(
    env: Any, name: str, max_receive_count: int = 2, visibility_timeout: int = 30
) -> TestQueue:
    sqs = env.aws.client("sqs")
    dlq_url = sqs.create_queue(QueueName=env.names.dead_letter_queue(name))["QueueUrl"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    url = sqs.create_queue(
        QueueName=name,
        Attributes={
            "VisibilityTimeout": str(visibility_timeout),
            "RedrivePolicy": json.dumps(
                {"deadLetterTargetArn": dlq_arn, "maxReceiveCount": str(max_receive_count)}
            ),
        },
    )["QueueUrl"]
    return TestQueue(url, dlq_url)


def create_bucket(env: Any, name: str) -> str:
    env.aws.client("s3").create_bucket(Bucket=name)
    return name


def send(env: Any, queue_url: str, body: str) -> str:
    sqs = env.aws.client("sqs")
    return str(sqs.send_message(QueueUrl=queue_url, MessageBody=body)["MessageId"])


def counts(env: Any, queue_url: str) -> tuple[int, int]:
    """(visible, in flight) messages of a queue."""
    sqs = env.aws.client("sqs")
    attributes = sqs.get_queue_attributes(
        QueueUrl=queue_url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return (
        int(attributes["ApproximateNumberOfMessages"]),
        int(attributes["ApproximateNumberOfMessagesNotVisible"]),
    )


def receive_all(env: Any, queue_url: str, wait: int = 1, visibility: int = 30) -> list[dict]:
    sqs = env.aws.client("sqs")
    messages: list[dict] = []
    while True:
        batch = sqs.receive_message(
            QueueUrl=queue_url,
            MaxNumberOfMessages=10,
            WaitTimeSeconds=wait,
            VisibilityTimeout=visibility,
            AttributeNames=["ApproximateReceiveCount"],
        ).get("Messages", [])
        if not batch:
            return messages
        messages.extend(batch)


def wait_for(predicate: Any, timeout: float, interval: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


def spawn(args: list[str], environment: dict[str, str], log_path: Path) -> subprocess.Popen:
    """A worker as a real child process (its own session, so signals reach only it)."""
    env = {**os.environ, **environment, "PYTHONUNBUFFERED": "1"}
    out = log_path.open("wb")
    return subprocess.Popen(
        [sys.executable, *args],
        cwd=ROOT,
        env=env,
        stdout=out,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
