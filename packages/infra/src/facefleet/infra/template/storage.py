"""Where data and code live: the model bucket, the worker image repository and the MongoDB
URI secrets."""

from __future__ import annotations

import json
from typing import Any

from facefleet.infra.stack_config import StackConfig
from facefleet.infra.template.base import (
    GALLERY_SECRET,
    GALLERY_URI_PARAMETER,
    HUEMN_SECRET,
    HUEMN_URI_PARAMETER,
    Json,
    get_att,
    policy_document,
    ref,
    retain,
    s3_arn,
    tag_list,
)


def model_bucket(config: StackConfig) -> Json:
    bucket = config.model_bucket_name
    resources: Json = {
        "ModelBucket": retain(
            {
                "Type": "AWS::S3::Bucket",
                "Properties": {
                    "BucketName": bucket,
                    "VersioningConfiguration": {"Status": "Enabled"},
                    "BucketEncryption": {
                        "ServerSideEncryptionConfiguration": [
                            {"ServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}
                        ]
                    },
                    "PublicAccessBlockConfiguration": {
                        "BlockPublicAcls": True,
                        "BlockPublicPolicy": True,
                        "IgnorePublicAcls": True,
                        "RestrictPublicBuckets": True,
                    },
                    "OwnershipControls": {"Rules": [{"ObjectOwnership": "BucketOwnerEnforced"}]},
                    "LifecycleConfiguration": {
                        "Rules": [
                            {
                                "Id": "expire-old-model-versions",
                                "Status": "Enabled",
                                "NoncurrentVersionExpiration": {"NoncurrentDays": 90},
                            }
                        ]
                    },
                    "Tags": tag_list(config),
                },
            },
            config,
        ),
        "ModelBucketPolicy": {
            "Type": "AWS::S3::BucketPolicy",
            "Properties": {
                "Bucket": ref("ModelBucket"),
                "PolicyDocument": policy_document(
                    [
                        {
                            "Sid": "DenyInsecureTransport",
                            "Effect": "Deny",
                            "Principal": "*",
                            "Action": "s3:*",
                            "Resource": [get_att("ModelBucket", "Arn"), s3_arn(bucket, "/*")],
                            "Condition": {"Bool": {"aws:SecureTransport": "false"}},
                        }
                    ]
                ),
            },
        },
    }
    return resources


def repository(config: StackConfig) -> Json:
    lifecycle = {
        "rules": [
            {
                "rulePriority": 1,
                "description": "drop untagged images after 7 days",
                "selection": {
                    "tagStatus": "untagged",
                    "countType": "sinceImagePushed",
                    "countUnit": "days",
                    "countNumber": 7,
                },
                "action": {"type": "expire"},
            },
            {
                "rulePriority": 2,
                "description": f"keep the {config.keep_images} most recent images",
                "selection": {
                    "tagStatus": "any",
                    "countType": "imageCountMoreThan",
                    "countNumber": config.keep_images,
                },
                "action": {"type": "expire"},
            },
        ]
    }
    return {
        "WorkerImageRepository": retain(
            {
                "Type": "AWS::ECR::Repository",
                "Properties": {
                    "RepositoryName": config.names.ecr_repository,
                    "ImageScanningConfiguration": {"ScanOnPush": True},
                    "ImageTagMutability": "MUTABLE",
                    # Not retained (a local stack): its images must not block the delete.
                    "EmptyOnDelete": not config.retain_data,
                    "EncryptionConfiguration": {"EncryptionType": "AES256"},
                    "LifecyclePolicy": {
                        "LifecyclePolicyText": json.dumps(lifecycle, sort_keys=True)
                    },
                    "Tags": tag_list(config),
                },
            },
            config,
        )
    }


def secret_arns(config: StackConfig) -> dict[str, Any]:
    """Environment variable -> secret ARN (a created secret's Ref is its ARN)."""
    return {
        "GALLERY_IMAGES_MONGO_URI": config.gallery_mongo_secret_arn or ref(GALLERY_SECRET),
        "HUEMN_MONGO_URI": config.huemn_mongo_secret_arn or ref(HUEMN_SECRET),
    }


def secret_template(config: StackConfig) -> tuple[Json, Json]:
    """Parameters and resources for the MongoDB secrets the stack creates."""
    parameters: Json = {}
    resources: Json = {}
    for logical_id, parameter, existing, name, what in (
        (
            GALLERY_SECRET,
            GALLERY_URI_PARAMETER,
            config.gallery_mongo_secret_arn,
            config.names.gallery_mongo_secret,
            "gallery_images",
        ),
        (
            HUEMN_SECRET,
            HUEMN_URI_PARAMETER,
            config.huemn_mongo_secret_arn,
            config.names.huemn_mongo_secret,
            "huemn",
        ),
    ):
        if existing:
            continue
        parameters[parameter] = {
            "Type": "String",
            "NoEcho": True,
            "MinLength": 1,
            "Description": f"MongoDB URI of the {what} database (stored in Secrets Manager)",
        }
        resources[logical_id] = {
            "Type": "AWS::SecretsManager::Secret",
            "Properties": {
                "Name": name,
                "Description": f"FaceFleet: MongoDB URI of the {what} database",
                "SecretString": ref(parameter),
                "Tags": tag_list(config),
            },
        }
    return parameters, resources
