"""A worker process around the consumer: signal handlers, the Spot notice watcher, the start
and exit log lines, and the hard exit when the shutdown deadline left a handler running."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable
from typing import Any

from facefleet.common.config import Settings
from facefleet.common.metrics import MetricsEmitter
from facefleet.worker.runtime.consumer import Consumer, ConsumerConfig, Handler
from facefleet.worker.runtime.spot import SpotNoticeWatcher

log = logging.getLogger(__name__)


def batch_job_context(settings: Settings) -> dict[str, Any]:
    """The Batch job fields every worker logs at start (array index, attempt, job id)."""
    return {
        "batch_job_id": settings.batch_job_id,
        "batch_job_array_index": settings.batch_job_array_index,
        "batch_job_attempt": settings.batch_job_attempt,
    }


def serve(
    config: ConsumerConfig,
    handler: Handler,
    *,
    service: str,
    settings: Settings | None = None,
    metrics: MetricsEmitter | None = None,
    on_exit: Callable[[], None] | None = None,
) -> int:
    """Run a consumer in this process with signal handlers installed; return its exit code.

    When the shutdown deadline left a handler running, the process ends here (os._exit) so the
    abandoned thread cannot hold the exit past the Spot notice.
    """
    consumer = Consumer(config, handler, metrics=metrics)
    consumer.install_signal_handlers()
    watcher = None
    if settings is not None and settings.spot_notice_poll_seconds > 0:
        # Batch jobs never get ECS's Spot draining: the worker reads the notice itself.
        watcher = SpotNoticeWatcher(
            lambda notice: consumer.request_stop(),
            endpoint=settings.instance_metadata_endpoint,
            poll_s=settings.spot_notice_poll_seconds,
        )
        watcher.start()
    log.info(
        "%s worker starting",
        service,
        extra={
            "queue_url": config.queue_url,
            "batch_size": config.batch_size,
            "visibility_timeout_s": config.visibility_timeout,
            "idle_exit_s": config.idle_exit_seconds,
            **(batch_job_context(settings) if settings else {}),
        },
    )
    code = consumer.run()
    if watcher is not None:
        watcher.stop()
    log.info("%s worker exiting", service, extra={"exit_code": code})
    if on_exit is not None:
        with contextlib.suppress(Exception):
            on_exit()
    if consumer.abandoned_handler:
        logging.shutdown()
        os._exit(code)
    return code
