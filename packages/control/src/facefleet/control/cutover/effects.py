"""The cutover's side effects: its state in SSM (and the router's weight), returning waiting
messages to the ECS queue, the SNS alert, releasing the ECS service, the weight metric. Moving
the ECS service to its own queue is `ecs_move`."""

from __future__ import annotations

import logging
from dataclasses import asdict
from typing import TYPE_CHECKING

from facefleet.common.aws import AwsTarget, topic_arn_by_name
from facefleet.common.metrics import Metric, MetricsEmitter
from facefleet.common.names import Names
from facefleet.control import observe, parameters, router
from facefleet.control.cutover.machine import CutoverState

if TYPE_CHECKING:
    from mypy_boto3_sqs.type_defs import SendMessageBatchRequestEntryTypeDef

    # Passed in by the flow (its entry point); the control core installs without pydantic.
    from facefleet.common.config import Settings

METRICS_SERVICE = "cutover"

log = logging.getLogger(__name__)


def state_parameter(names: Names) -> str:
    return router.parameter(names, "state")


def load_state(names: Names, aws: AwsTarget) -> CutoverState:
    """The cutover's record, with the weight from the one parameter the router reads (the
    record does not repeat it: a weight stored twice can disagree)."""
    data = parameters.read_json(aws, state_parameter(names))
    if data is None:
        return CutoverState()
    data.pop("weight", None)  # written by versions that stored it twice
    return CutoverState(**data, weight=router.read_weight(names, aws))


def save_state(names: Names, state: CutoverState, aws: AwsTarget) -> None:
    record = {k: v for k, v in asdict(state).items() if k != "weight"}
    parameters.write_json(aws, state_parameter(names), record)
    router.write_weight(names, state.weight, state.stage, aws)


def return_to_ecs(names: Names, aws: AwsTarget, *, idle_polls: int = 2) -> int:
    """Move the messages waiting in the Batch queue to the ECS queue; return how many.

    Sent before deleted: a crash in between duplicates a message, never loses one (the workers'
    writes are idempotent per image). Messages a Batch job holds in flight are not waiting;
    they finish on Batch, or return to the Batch queue and a second rollback moves them.
    """
    sqs = aws.client("sqs")
    batch_url = observe.stack_queue_url(names, aws, "IndexingQueueUrl", names.indexing_queue)
    ecs_url = observe.stack_queue_url(names, aws, "EcsIndexingQueueUrl", names.ecs_indexing_queue)
    moved, empty = 0, 0
    while empty < idle_polls:
        messages = sqs.receive_message(
            QueueUrl=batch_url,
            MaxNumberOfMessages=10,
            WaitTimeSeconds=0,
            VisibilityTimeout=120,
            MessageAttributeNames=["All"],
        ).get("Messages", [])
        if not messages:
            empty += 1
            continue
        empty = 0
        entries: list[SendMessageBatchRequestEntryTypeDef] = []
        for i, message in enumerate(messages):
            entry: SendMessageBatchRequestEntryTypeDef = {
                "Id": str(i),
                "MessageBody": message["Body"],
            }
            if message.get("MessageAttributes"):
                entry["MessageAttributes"] = message["MessageAttributes"]
            entries.append(entry)
        sent = sqs.send_message_batch(QueueUrl=ecs_url, Entries=entries)
        ok = {int(s["Id"]) for s in sent.get("Successful", [])}
        if ok:
            sqs.delete_message_batch(
                QueueUrl=batch_url,
                Entries=[
                    {"Id": str(i), "ReceiptHandle": messages[i]["ReceiptHandle"]}
                    for i in sorted(ok)
                ],
            )
        moved += len(ok)
    return moved


def alert(names: Names, subject: str, message: str, aws: AwsTarget, settings: Settings) -> bool:
    """Publish to the stack's alerts topic; False (logged) when the topic does not exist."""
    # The flow runtime is given the topic's ARN (its role may publish, not list topics).
    topic_arn = settings.alerts_topic_arn or topic_arn_by_name(aws, names.alerts_topic)
    if topic_arn is None:
        log.warning("alerts topic %s not found; alert not sent: %s", names.alerts_topic, subject)
        return False
    aws.client("sns").publish(TopicArn=topic_arn, Subject=subject[:99], Message=message)
    return True


def release_ecs(cluster: str | None, service: str | None, aws: AwsTarget) -> bool:
    """Scale the ECS service to zero (only ever called after the final soak at 100 %)."""
    if not cluster or not service:
        return False
    aws.client("ecs").update_service(cluster=cluster, service=service, desiredCount=0)
    return True


def emit_weight(names: Names, weight: int, aws: AwsTarget, settings: Settings) -> None:
    MetricsEmitter(
        settings.metrics_namespace,
        {"Service": METRICS_SERVICE},
        cloudwatch=aws if settings.metrics_to_cloudwatch else None,
    ).emit({Metric.CUTOVER_WEIGHT: weight}, prefix=names.prefix)


def rollback_effects(names: Names, state: CutoverState, aws: AwsTarget, settings: Settings) -> int:
    moved = return_to_ecs(names, aws)
    alert(
        names,
        f"FaceFleet cutover rolled back to 0 % ({names.prefix})",
        f"{state.reason}\n{moved} waiting message(s) returned to the ECS queue.",
        aws,
        settings,
    )
    return moved
