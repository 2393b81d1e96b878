"""The cutover router as a process: the embedded stack's stand-in for the router Lambda.

It long-polls the ingress queue and does what the Lambda's SQS event source does: forward each
message (`Router.forward_batch`), then delete the forwarded ones; a failed one becomes visible
again and is retried. It waits for its queues to exist (the local stack starts before the infra
stack is provisioned) and stops on SIGTERM or SIGINT after the batch in hand.

    FACEFLEET_PREFIX=face-recognition python -m facefleet.control.router_process

Environment: FACEFLEET_PREFIX / FACEFLEET_GROUPING_PREFIX, AWS_ENDPOINT_URL and credentials,
optional INGRESS_QUEUE_URL / ECS_QUEUE_URL / BATCH_QUEUE_URL (default: the `Names` queues),
WEIGHT_CACHE_S, METRICS_TO_CLOUDWATCH (PutMetricData too, as the local stack sets it).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Mapping
from typing import Any

from facefleet.common.aws import AwsTarget
from facefleet.common.metrics import MetricsEmitter
from facefleet.common.names import Names
from facefleet.control.router import METRICS_SERVICE, Router

log = logging.getLogger("facefleet.router")


def _wait_for_queues(
    names: Names, aws: AwsTarget, environ: Mapping[str, str], stop: threading.Event
) -> tuple[str, Router] | None:
    sqs = aws.client("sqs")
    to_cloudwatch = environ.get("METRICS_TO_CLOUDWATCH", "").lower() in ("1", "true", "yes")
    metrics = MetricsEmitter(
        names.metrics_namespace,
        {"Service": METRICS_SERVICE},
        cloudwatch=aws if to_cloudwatch else None,
    )
    while not stop.is_set():
        try:
            ingress = (
                environ.get("INGRESS_QUEUE_URL")
                or sqs.get_queue_url(QueueName=names.ingress_queue)["QueueUrl"]
            )
            router = Router(
                names,
                aws,
                ecs_queue_url=environ.get("ECS_QUEUE_URL") or None,
                batch_queue_url=environ.get("BATCH_QUEUE_URL") or None,
                cache_s=float(environ.get("WEIGHT_CACHE_S", "5")),
                metrics=metrics,
            )
            return ingress, router
        except sqs.exceptions.QueueDoesNotExist:
            stop.wait(1.0)
        except Exception:  # the moto server starting or restarting
            log.warning("router waiting for SQS", exc_info=True)
            stop.wait(2.0)
    return None


def run(environ: Mapping[str, str], stop: threading.Event, poll_s: int = 1) -> int:
    """Forward ingress messages until `stop`; the number forwarded."""
    names = Names.from_env(environ)
    aws = AwsTarget.from_env(environ)
    found = _wait_for_queues(names, aws, environ, stop)
    if found is None:
        return 0
    ingress, router = found
    sqs = aws.client("sqs")
    log.info(
        "router forwarding %s -> %s | %s", ingress, router.ecs_queue_url, router.batch_queue_url
    )
    total = 0
    while not stop.is_set():
        try:
            messages: list[Any] = sqs.receive_message(
                QueueUrl=ingress,
                MaxNumberOfMessages=10,
                WaitTimeSeconds=poll_s,
                VisibilityTimeout=30,
                MessageAttributeNames=["All"],
            ).get("Messages", [])
        except Exception:
            log.warning("receive failed; retrying", exc_info=True)
            stop.wait(1.0)
            continue
        if not messages:
            continue
        by_id = {m["MessageId"]: m for m in messages}
        done, _ = router.forward_batch(
            (m["MessageId"], m["Body"], m.get("MessageAttributes") or None) for m in messages
        )
        if done:
            sqs.delete_message_batch(
                QueueUrl=ingress,
                Entries=[
                    {"Id": str(i), "ReceiptHandle": by_id[message_id]["ReceiptHandle"]}
                    for i, message_id in enumerate(done)
                ],
            )
        total += len(done)
    return total


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    started = time.monotonic()
    total = run(os.environ, stop)
    log.info("router stopped: %d message(s) forwarded in %.0f s", total, time.monotonic() - started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
