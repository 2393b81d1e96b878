"""Helpers for the flow tests: the Batch/SQS resources a namespace needs, on the moto server.

Created directly with boto3 (what the infra stack would create), so the flow tests exercise
dispatch, cutover and the router without depending on the stack deployment.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from facefleet.common.aws import AwsTarget
from facefleet.common.names import RETRYABLE_EXIT_CODE, Names

ROLE_POLICY = json.dumps(
    {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"Service": "batch.amazonaws.com"},
                "Action": "sts:AssumeRole",
            }
        ],
    }
)


def create_batch(
    names: Names,
    aws: AwsTarget,
    command: tuple[str, ...] | None = None,
    environment: dict[str, str] | None = None,
) -> None:
    """Compute environments, job queues and job definitions named by `names`."""
    iam = aws.client("iam")
    role = iam.create_role(RoleName=f"{names.prefix}-batch", AssumeRolePolicyDocument=ROLE_POLICY)[
        "Role"
    ]["Arn"]
    create_lease_table(names, aws)
    batch = aws.client("batch")
    for env in names.compute_environments:
        batch.create_compute_environment(
            computeEnvironmentName=env.name, type="UNMANAGED", state="ENABLED", serviceRole=role
        )
    for queue in names.job_queues:
        batch.create_job_queue(
            jobQueueName=queue.name,
            state="ENABLED",
            priority=queue.priority,
            computeEnvironmentOrder=[{"order": 1, "computeEnvironment": queue.compute_environment}],
        )
    for definition in names.job_definitions:
        batch.register_job_definition(
            jobDefinitionName=definition.name,
            type="container",
            containerProperties={
                "image": "facefleet:test",
                "vcpus": definition.vcpus,
                "memory": definition.memory_mib,
                "command": list(command or definition.command),
                "environment": [
                    {"name": k, "value": v}
                    for k, v in {
                        "SERVICE_TYPE": definition.service_type,
                        **(environment or {}),
                    }.items()
                ],
            },
            retryStrategy={
                "attempts": definition.attempts,
                "evaluateOnExit": [
                    {"onExitCode": str(RETRYABLE_EXIT_CODE), "action": "RETRY"},
                    {"onStatusReason": "Host EC2*", "action": "RETRY"},
                    {"onReason": "*", "action": "EXIT"},
                ],
            },
        )


def use_queues(monkeypatch: Any, names: Names, urls: dict[str, str]) -> dict[str, str]:
    """Hand the queues to dispatch as production does: QUEUE_URL / GROUP_FACE_QUEUE_URL."""
    monkeypatch.setenv("QUEUE_URL", urls[names.indexing_queue])
    monkeypatch.setenv("GROUP_FACE_QUEUE_URL", urls[names.group_face_queue])
    return urls


def create_lease_table(names: Names, aws: AwsTarget) -> None:
    """The dispatch lease table, as the template creates it."""
    aws.client("dynamodb").create_table(
        TableName=names.dispatch_lease_table,
        BillingMode="PAY_PER_REQUEST",
        AttributeDefinitions=[{"AttributeName": "lease", "AttributeType": "S"}],
        KeySchema=[{"AttributeName": "lease", "KeyType": "HASH"}],
    )


def create_queues(names: Names, aws: AwsTarget) -> dict[str, str]:
    """Indexing, GroupFace and ECS queues with their dead-letter queues; name -> URL."""
    sqs = aws.client("sqs")
    urls = {}
    for name in (names.indexing_queue, names.group_face_queue, names.ecs_indexing_queue):
        dlq = sqs.create_queue(QueueName=names.dead_letter_queue(name))["QueueUrl"]
        arn = sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"])["Attributes"][
            "QueueArn"
        ]
        urls[name] = sqs.create_queue(
            QueueName=name,
            Attributes={
                "RedrivePolicy": json.dumps({"deadLetterTargetArn": arn, "maxReceiveCount": "3"})
            },
        )["QueueUrl"]
        urls[names.dead_letter_queue(name)] = dlq
    return urls


def fill(queue_url: str, count: int, aws: AwsTarget) -> None:
    """Put `count` small messages on a queue (batches of 10)."""
    sqs = aws.client("sqs")
    for start in range(0, count, 10):
        sqs.send_message_batch(
            QueueUrl=queue_url,
            Entries=[
                {"Id": str(i), "MessageBody": json.dumps({"n": start + i})}
                for i in range(min(10, count - start))
            ],
        )


def batch_jobs(names: Names, aws: AwsTarget) -> list[dict[str, Any]]:
    """Every job moto holds on the stack's queues (array parents only), with array sizes."""
    batch = aws.client("batch")
    jobs = []
    for queue in names.job_queues:
        for status in (
            "SUBMITTED",
            "PENDING",
            "RUNNABLE",
            "STARTING",
            "RUNNING",
            "SUCCEEDED",
            "FAILED",
        ):
            for summary in batch.list_jobs(jobQueue=queue.name, jobStatus=status)["jobSummaryList"]:
                if ":" in summary["jobId"]:
                    continue
                detail = batch.describe_jobs(jobs=[summary["jobId"]])["jobs"][0]
                jobs.append(
                    {
                        "queue": queue.name,
                        "definition": detail["jobDefinition"].rsplit("/", 1)[-1].split(":")[0],
                        "array_size": detail.get("arrayProperties", {}).get("size"),
                        "name": detail["jobName"],
                    }
                )
    return jobs


SLEEP = (sys.executable, "-c", "import time; time.sleep(30)")


_HARNESS: Any = None


def prefect_harness() -> None:
    """Prefect's test harness (a temporary local API), entered once per test process."""
    global _HARNESS
    if _HARNESS is None:
        import atexit

        from prefect.testing.utilities import prefect_test_harness

        _HARNESS = prefect_test_harness(server_startup_timeout=120)
        _HARNESS.__enter__()
        atexit.register(_stop_harness)


def _stop_harness() -> None:
    import logging

    # pytest has closed the captured streams by now; the server's goodbye has nowhere to go.
    logging.disable(logging.CRITICAL)
    _HARNESS.__exit__(None, None, None)
