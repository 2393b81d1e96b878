"""The grouping worker as deployed: grouping's handler with the privacy requests plugged in.

`python3 run_grouping_service.py` (Batch job `face-grouping-job`) runs `main`. Grouping never
imports privacy (an import-linter contract); privacy builds on grouping, so the composition
lives here.
"""

from __future__ import annotations

import sys

from facefleet.common.config import Settings, load_service_settings
from facefleet.common.logs import configure_logging
from facefleet.common.metrics import MetricsEmitter
from facefleet.worker.grouping import service as grouping
from facefleet.worker.grouping.service import GroupingService
from facefleet.worker.privacy import retention
from facefleet.worker.privacy.forget import PrivacyRequests
from facefleet.worker.runtime.consumer import ConsumerConfig
from facefleet.worker.runtime.serve import serve


def build_service(settings: Settings, metrics: MetricsEmitter | None = None) -> GroupingService:
    """The grouping handler with forget, erase and opt-out handling."""
    return grouping.build_service(settings, metrics, privacy=PrivacyRequests())


def main() -> int:
    """Entry point of `python3 run_grouping_service.py`."""
    settings = load_service_settings("grouping")
    configure_logging("grouping")
    metrics = MetricsEmitter(
        settings.metrics_namespace,
        {"Service": "grouping"},
        cloudwatch=settings.aws if settings.metrics_to_cloudwatch else None,
    )
    service = build_service(settings, metrics)
    retention.run_if_due(service.store, service.s3, service.bucket, settings, owner=service.owner)
    config = ConsumerConfig.from_settings(settings, settings.group_face_queue_url)
    return serve(config, service.handle, service="grouping", settings=settings, metrics=metrics)


if __name__ == "__main__":
    sys.exit(main())
