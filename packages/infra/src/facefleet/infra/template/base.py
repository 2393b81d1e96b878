"""Shared template vocabulary: intrinsic functions, IAM statement helpers, tags, logical ids."""

from __future__ import annotations

from typing import Any

from facefleet.common.names import CONTAINER_WORKDIR as CONTAINER_WORKDIR
from facefleet.common.names import MODEL_ROOT as MODEL_ROOT
from facefleet.infra.stack_config import StackConfig

Json = dict[str, Any]


TEMPLATE_VERSION = "2010-09-09"


LAMBDA_RUNTIME = "python3.12"


# Logical ids the tests and the deploy code look up.
INDEXING_QUEUE = "IndexingQueue"


GROUP_FACE_QUEUE = "GroupFaceQueue"


DETECTION_JOB_ROLE = "DetectionJobRole"


GROUPING_JOB_ROLE = "GroupingJobRole"


EXECUTION_ROLE = "JobExecutionRole"


DISPATCH_ROLE = "DispatchFunctionRole"


GALLERY_SECRET = "GalleryMongoSecret"


HUEMN_SECRET = "HuemnMongoSecret"


GALLERY_URI_PARAMETER = "GalleryImagesMongoUri"


HUEMN_URI_PARAMETER = "HuemnMongoUri"


def ref(name: str) -> Json:
    return {"Ref": name}


def get_att(resource: str, attribute: str) -> Json:
    return {"Fn::GetAtt": [resource, attribute]}


def sub(text: str) -> Json:
    return {"Fn::Sub": text}


def arn(service: str, resource: str, *, region: bool = True, account: bool = True) -> Json:
    """arn:${AWS::Partition}:service:region:account:resource (as Fn::Sub)."""
    region_part = "${AWS::Region}" if region else ""
    account_part = "${AWS::AccountId}" if account else ""
    return sub(f"arn:${{AWS::Partition}}:{service}:{region_part}:{account_part}:{resource}")


def s3_arn(bucket: str, suffix: str = "") -> Json:
    return sub(f"arn:${{AWS::Partition}}:s3:::{bucket}{suffix}")


def statement(actions: list[str], resources: list[Any], **extra: Any) -> Json:
    return {"Effect": "Allow", "Action": sorted(actions), "Resource": resources, **extra}


def policy_document(statements: list[Json]) -> Json:
    return {"Version": "2012-10-17", "Statement": statements}


def assume_role(service: str) -> Json:
    return policy_document(
        [{"Effect": "Allow", "Principal": {"Service": service}, "Action": "sts:AssumeRole"}]
    )


def tag_list(config: StackConfig) -> list[Json]:
    return [{"Key": k, "Value": v} for k, v in sorted(config.tags.items())]


def retain(resource: Json, config: StackConfig) -> Json:
    """Keep production data when the stack is deleted or the resource replaced, except after a
    failed first create: the retained resources have fixed names, and an orphan left by a
    rolled-back create would make every retry fail with "already exists" (CloudFormation user
    guide, DeletionPolicy attribute: RetainExceptOnCreate). UpdateReplacePolicy has no such
    value (Delete, Retain or Snapshot only)."""
    if config.retain_data:
        resource["DeletionPolicy"] = "RetainExceptOnCreate"
        resource["UpdateReplacePolicy"] = "Retain"
    else:
        resource["DeletionPolicy"] = "Delete"
        resource["UpdateReplacePolicy"] = "Delete"
    return resource
