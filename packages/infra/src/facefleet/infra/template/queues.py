"""The SQS queues (indexing, GroupFace) with their dead-letter queues and the bucket policy,
or references to existing queues."""

from __future__ import annotations

from typing import Any

from facefleet.infra.stack_config import QueueRef, StackConfig
from facefleet.infra.template.base import (
    GROUP_FACE_QUEUE,
    INDEXING_QUEUE,
    Json,
    get_att,
    policy_document,
    ref,
    s3_arn,
    tag_list,
)


class Queues:
    """Where each queue's URL and ARN come from: the stack, or an existing queue."""

    def __init__(self, config: StackConfig) -> None:
        self.config = config
        self.existing: dict[str, QueueRef | None] = {
            INDEXING_QUEUE: self._parse(config.indexing_queue),
            GROUP_FACE_QUEUE: self._parse(config.group_face_queue),
        }

    @staticmethod
    def _parse(value: str | None) -> QueueRef | None:
        # The region only fills in a moto-style URL's ARN; CloudFormation's own is used below.
        return QueueRef.parse(value, "us-east-1") if value else None

    def created(self, logical_id: str) -> bool:
        return self.existing[logical_id] is None

    def url(self, logical_id: str) -> Any:
        existing = self.existing[logical_id]
        return ref(logical_id) if existing is None else existing.url

    def arn(self, logical_id: str) -> Any:
        existing = self.existing[logical_id]
        return get_att(logical_id, "Arn") if existing is None else existing.arn


def queue_with_dead_letter(config: StackConfig, logical_id: str, name: str) -> Json:
    """A queue named `name` and its dead-letter queue (`<logical id>DeadLetter`), which takes a
    message after `max_receive_count` receives."""
    dlq_id = f"{logical_id}DeadLetter"
    return {
        dlq_id: {
            "Type": "AWS::SQS::Queue",
            "Properties": {
                "QueueName": config.names.dead_letter_queue(name),
                "MessageRetentionPeriod": config.dlq_retention_s,
                "SqsManagedSseEnabled": True,
                "Tags": tag_list(config),
            },
        },
        logical_id: {
            "Type": "AWS::SQS::Queue",
            "Properties": {
                "QueueName": name,
                "VisibilityTimeout": config.queue_visibility_timeout_s,
                "MessageRetentionPeriod": config.message_retention_s,
                "ReceiveMessageWaitTimeSeconds": 20,
                "SqsManagedSseEnabled": True,
                "RedrivePolicy": {
                    "deadLetterTargetArn": get_att(dlq_id, "Arn"),
                    "maxReceiveCount": config.max_receive_count,
                },
                "Tags": tag_list(config),
            },
        },
    }


def queue_resources(config: StackConfig, queues: Queues) -> Json:
    names = config.names
    resources: Json = {}
    for logical_id, queue_name in (
        (INDEXING_QUEUE, names.indexing_queue),
        (GROUP_FACE_QUEUE, names.group_face_queue),
    ):
        if not queues.created(logical_id):
            continue
        resources.update(queue_with_dead_letter(config, logical_id, queue_name))
    if queues.created(INDEXING_QUEUE):
        # The gallery bucket's event notifications feed the indexing queue: only that bucket,
        # only SendMessage, and only over TLS for everyone.
        resources["IndexingQueuePolicy"] = {
            "Type": "AWS::SQS::QueuePolicy",
            "Properties": {
                "Queues": [ref(INDEXING_QUEUE)],
                "PolicyDocument": policy_document(
                    [
                        {
                            "Sid": "GalleryBucketNotifications",
                            "Effect": "Allow",
                            "Principal": {"Service": "s3.amazonaws.com"},
                            "Action": "sqs:SendMessage",
                            "Resource": get_att(INDEXING_QUEUE, "Arn"),
                            "Condition": {
                                "ArnEquals": {"aws:SourceArn": s3_arn(config.gallery_bucket)},
                                "StringEquals": {"aws:SourceAccount": ref("AWS::AccountId")},
                            },
                        },
                    ]
                ),
            },
        }
    return resources


# The Id that marks FaceFleet's entries in the gallery bucket's notification configuration.
GALLERY_NOTIFICATION_ID = "facefleet-indexing"


def gallery_notifications(
    queue_arn: str, events: tuple[str, ...], existing: Json | None = None
) -> Json:
    """The gallery bucket's NotificationConfiguration: whatever else it sends (entries of other
    owners are kept as they are) plus one queue entry, FaceFleet's, for `events` of keys under
    `users/` to the indexing queue (whose policy above admits only this bucket)."""
    current = dict(existing or {})
    current.pop("ResponseMetadata", None)
    queues = [
        q for q in current.get("QueueConfigurations", []) if q.get("Id") != GALLERY_NOTIFICATION_ID
    ]
    if events:
        queues.append(
            {
                "Id": GALLERY_NOTIFICATION_ID,
                "QueueArn": queue_arn,
                "Events": list(events),
                "Filter": {"Key": {"FilterRules": [{"Name": "prefix", "Value": "users/"}]}},
            }
        )
    current["QueueConfigurations"] = queues
    return current
