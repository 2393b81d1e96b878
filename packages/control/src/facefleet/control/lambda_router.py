"""The cutover router as an AWS Lambda handler: an SQS event source on the ingress queue.

Each invocation gets up to a batch of ingress messages; each is forwarded (split per S3 record)
to the ECS queue or the Batch indexing queue by the user's hash against the SSM weight
(`facefleet.control.router`). Failures are reported per message (`ReportBatchItemFailures` on the
event source mapping): only those return to the ingress queue, the rest are deleted by Lambda.

Zipped alone for Lambda: imports only boto3, facefleet.common and facefleet.control.router.
Configuration comes from the function's environment: FACEFLEET_PREFIX /
FACEFLEET_GROUPING_PREFIX (the `Names` prefixes), ECS_QUEUE_URL and BATCH_QUEUE_URL (the two
targets), WEIGHT_CACHE_S (at most 60), METRICS_NAMESPACE.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from facefleet.common.aws import AwsTarget
from facefleet.common.metrics import MetricsEmitter
from facefleet.common.names import Names
from facefleet.control.router import METRICS_SERVICE, Router, lambda_attributes


def router_from_env(environ: Mapping[str, str]) -> Router:
    names = Names.from_env(environ)
    # EMF on stdout: CloudWatch Logs turns it into the routed-per-side metrics, no API call.
    metrics = MetricsEmitter(
        environ.get("METRICS_NAMESPACE", names.metrics_namespace), {"Service": METRICS_SERVICE}
    )
    return Router(
        names,
        AwsTarget.from_env(environ),
        ecs_queue_url=environ.get("ECS_QUEUE_URL") or None,
        batch_queue_url=environ.get("BATCH_QUEUE_URL") or None,
        cache_s=float(environ.get("WEIGHT_CACHE_S", "30")),
        metrics=metrics,
    )


_router: Router | None = None  # one per execution environment: the weight cache survives calls


def handler(event: Mapping[str, Any], context: Any) -> dict[str, Any]:
    global _router
    if _router is None:
        _router = router_from_env(os.environ)
    records = event.get("Records", [])
    _, failed = _router.forward_batch(
        (r["messageId"], r["body"], lambda_attributes(r) or None) for r in records
    )
    return {"batchItemFailures": [{"itemIdentifier": message_id} for message_id in failed]}
