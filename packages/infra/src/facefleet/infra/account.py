"""What a deploy sets up outside the stack: AWS Batch's service-linked role and the gallery
bucket's notifications (the bucket is production's, referenced by name, not the stack's)."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

from botocore.exceptions import ClientError

from facefleet.common.aws import AwsTarget
from facefleet.infra.stack_config import StackConfig
from facefleet.infra.stack_waits import DeployError

log = logging.getLogger(__name__)


def ensure_batch_service_linked_role(aws: AwsTarget) -> bool:
    """Create AWS Batch's service-linked role when the account has none (True: created).

    The compute environments name it (template/batch.py); AWS creates it on its own only when a
    compute environment names no role at all. Needs iam:GetRole and iam:CreateServiceLinkedRole
    (for batch.amazonaws.com) the first time in an account."""
    from facefleet.infra.template.batch import BATCH_SERVICE, BATCH_SERVICE_LINKED_ROLE

    iam = aws.client("iam")
    try:
        iam.get_role(RoleName=BATCH_SERVICE_LINKED_ROLE)
        return False
    except ClientError as error:
        if error.response.get("Error", {}).get("Code") != "NoSuchEntity":
            raise
    log.info(
        "creating the AWS Batch service-linked role", extra={"role": BATCH_SERVICE_LINKED_ROLE}
    )
    created = iam.create_service_linked_role(AWSServiceName=BATCH_SERVICE)["Role"]
    if created["RoleName"] != BATCH_SERVICE_LINKED_ROLE:
        # moto (5.x) spells it AWSServiceRoleForbatch; AWS returns the documented name.
        iam.create_role(
            RoleName=BATCH_SERVICE_LINKED_ROLE,
            Path=f"/aws-service-role/{BATCH_SERVICE}/",
            AssumeRolePolicyDocument=json.dumps(
                {
                    "Version": "2012-10-17",
                    "Statement": [
                        {
                            "Effect": "Allow",
                            "Principal": {"Service": BATCH_SERVICE},
                            "Action": "sts:AssumeRole",
                        }
                    ],
                }
            ),
        )
    return True


def configure_gallery_notifications(
    config: StackConfig, aws: AwsTarget, stack_outputs: Mapping[str, str]
) -> None:
    """Point the gallery bucket's configured events (`gallery_notification_events`) at the
    Batch indexing queue.

    The gallery bucket is production's, referenced by name, so CloudFormation cannot carry its
    notifications; deploy merges FaceFleet's entry into the bucket's configuration (other
    entries kept) after every apply, on AWS and on the local stack alike. Needs
    s3:GetBucketNotification and s3:PutBucketNotification on the bucket."""
    from facefleet.infra.template.queues import gallery_notifications

    if not config.gallery_notification_events:
        return  # the gallery bucket's events are managed elsewhere
    queue_arn = stack_outputs.get("IndexingQueueArn")
    if not queue_arn:
        raise DeployError("stack outputs lack IndexingQueueArn: cannot route gallery events")
    s3: Any = aws.client("s3")  # the configuration is built as plain JSON
    bucket = config.gallery_bucket
    existing = s3.get_bucket_notification_configuration(Bucket=bucket)
    wanted = gallery_notifications(queue_arn, config.gallery_notification_events, existing)
    s3.put_bucket_notification_configuration(Bucket=bucket, NotificationConfiguration=wanted)
    log.info(
        "gallery bucket notifications set",
        extra={"bucket": bucket, "events": list(config.gallery_notification_events)},
    )
