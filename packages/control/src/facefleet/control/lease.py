"""One dispatch tick at a time: a lease in DynamoDB, taken with a conditional write.

Two concurrent ticks would both see the same backlog and both submit for it. The Lambda's
`ReservedConcurrentExecutions: 1` was the old guard; it fails to create on accounts whose
concurrency limit leaves nothing to reserve (Lambda keeps 100 unreserved executions, new accounts
may have a limit of 10), and it never covered the Prefect flow, which dispatches too. A
DynamoDB conditional put is atomic across both: the item is written only when no lease exists
or the existing one has expired, so exactly one tick holds it. A tick that crashes keeps the
lease only until it expires (longer than a tick may run: the Lambda's timeout is 60 s).

SSM Parameter Store (where the cool-down state lives) has no conditional update, and an SQS
FIFO queue as a mutex would need a message to be re-seeded after every loss; DynamoDB needs
neither. Imported by the Lambda handler: boto3 and facefleet.common only.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import Iterator
from typing import Any

from botocore.exceptions import ClientError

from facefleet.common.aws import AwsTarget

log = logging.getLogger(__name__)

LEASE_KEY = "dispatch"
LEASE_TTL_S = 120.0


class DispatchLease:
    """The lease item `LEASE_KEY` of `table` (partition key `lease`, a string)."""

    def __init__(self, table: str, aws: AwsTarget, key: str = LEASE_KEY) -> None:
        self.table = table
        self.key = key
        self._dynamodb: Any = aws.client("dynamodb")

    def acquire(self, owner: str, now_s: float, ttl_s: float = LEASE_TTL_S) -> bool:
        """Take the lease for `owner` until `now_s + ttl_s`; False when another holds it."""
        try:
            self._dynamodb.put_item(
                TableName=self.table,
                Item={
                    "lease": {"S": self.key},
                    "owner": {"S": owner},
                    "expires_at": {"N": f"{now_s + ttl_s:.3f}"},
                },
                ConditionExpression="attribute_not_exists(lease) OR expires_at < :now",
                ExpressionAttributeValues={":now": {"N": f"{now_s:.3f}"}},
            )
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException":
                return False
            raise
        return True

    def release(self, owner: str) -> None:
        """Give the lease back, only if `owner` still holds it."""
        try:
            self._dynamodb.delete_item(
                TableName=self.table,
                Key={"lease": {"S": self.key}},
                ConditionExpression="#owner = :owner",
                ExpressionAttributeNames={"#owner": "owner"},
                ExpressionAttributeValues={":owner": {"S": owner}},
            )
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") != "ConditionalCheckFailedException":
                raise
            log.warning("dispatch lease had expired and was taken over before release")

    @contextlib.contextmanager
    def held(self, now_s: float, ttl_s: float = LEASE_TTL_S) -> Iterator[bool]:
        """`with lease.held(now) as mine:` run the tick only when `mine`."""
        owner = uuid.uuid4().hex
        mine = self.acquire(owner, now_s, ttl_s)
        try:
            yield mine
        finally:
            if mine:
                self.release(owner)
