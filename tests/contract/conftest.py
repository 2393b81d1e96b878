"""The production contract layer: what AWS enforces and the emulators do not.

Each module states what it proves here and what only a real account can (docs/infra.md,
"What the contract tests prove"). The renderings checked are the production one for ap-south-1
with the existing service's queues, which live in two other accounts.
"""

from __future__ import annotations

from facefleet.infra.stack_config import StackConfig

# The existing service's queues: indexing and GroupFace in two different AWS accounts.
EXISTING_INDEXING = "https://sqs.ap-south-1.amazonaws.com/992382426603/ve-inhouse-indexing"
EXISTING_GROUP_FACE = "https://sqs.ap-south-1.amazonaws.com/566073089169/GroupFace"
PRODUCTION_REGION = "ap-south-1"

PRODUCTION = StackConfig(
    vpc_id="vpc-0abc",
    subnet_ids=("subnet-0a", "subnet-0b"),
    indexing_queue=EXISTING_INDEXING,
    group_face_queue=EXISTING_GROUP_FACE,
    fallback_dispatcher=True,
    artifact_bucket="facefleet-artifacts-ap-south-1",
    alert_email="ops@example.com",
)
