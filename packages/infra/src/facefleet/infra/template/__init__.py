"""The FaceFleet CloudFormation template, rendered from a `StackConfig` as a plain dict.

One module per resource family: `queues`, `storage` (model bucket, image repository, secrets),
`iam`, `network`, `batch`, `alerts`, `dispatcher`, `router` (the cutover router), `flows_runtime`
(the flows image, task role and Prefect worker); `base` holds the shared helpers and the
logical ids. This module assembles them (`render`) and names the stack's outputs.

Every name, size and priority comes from `Names`, so the job definitions the dispatch policy
submits to are exactly those this template creates. The job environment is the `Settings`
contract with its defaults; the MongoDB URIs are Secrets Manager secrets injected through the job
definitions' `secrets`, never plain environment values.

IAM is least privilege: each role lists exact actions on exact ARNs. The only `Resource: "*"`
grants are for actions AWS does not scope by resource (cloudwatch:PutMetricData, conditioned on
the FaceFleet namespace; batch:ListJobs/DescribeJobs and cloudwatch:GetMetricStatistics for the
fallback dispatcher). MongoDB is not an IAM matter at all: it needs a network path from the
worker security group and credentials in the URI (see docs/infra.md).

Usage:
    >>> from facefleet.infra.stack_config import StackConfig
    >>> template = render(StackConfig(vpc_id="vpc-1", subnet_ids=("subnet-1",)))
    >>> template["Resources"]["DetectionJobDefinition"]["Properties"]["JobDefinitionName"]
    'face-recognition-job'
"""

from __future__ import annotations

import json
from typing import Any

from facefleet.infra.lambda_package import LambdaPackage
from facefleet.infra.stack_config import StackConfig
from facefleet.infra.template.alerts import alert_resources
from facefleet.infra.template.base import (
    CONTAINER_WORKDIR,
    DETECTION_JOB_ROLE,
    DISPATCH_ROLE,
    EXECUTION_ROLE,
    GALLERY_SECRET,
    GALLERY_URI_PARAMETER,
    GROUP_FACE_QUEUE,
    GROUPING_JOB_ROLE,
    HUEMN_SECRET,
    HUEMN_URI_PARAMETER,
    INDEXING_QUEUE,
    LAMBDA_RUNTIME,
    MODEL_ROOT,
    TEMPLATE_VERSION,
    Json,
    get_att,
    ref,
)
from facefleet.infra.template.batch import batch_resources, image
from facefleet.infra.template.dispatcher import artifact_bucket, dispatcher_resources, lease_table
from facefleet.infra.template.flows_runtime import flows_outputs, flows_runtime_resources
from facefleet.infra.template.iam import iam_resources
from facefleet.infra.template.network import network_template
from facefleet.infra.template.queues import Queues, queue_resources
from facefleet.infra.template.router import router_outputs, router_resources
from facefleet.infra.template.storage import model_bucket, repository, secret_template

__all__ = [
    "CONTAINER_WORKDIR",
    "DETECTION_JOB_ROLE",
    "DISPATCH_ROLE",
    "EXECUTION_ROLE",
    "GALLERY_SECRET",
    "GALLERY_URI_PARAMETER",
    "GROUPING_JOB_ROLE",
    "GROUP_FACE_QUEUE",
    "HUEMN_SECRET",
    "HUEMN_URI_PARAMETER",
    "INDEXING_QUEUE",
    "LAMBDA_RUNTIME",
    "MODEL_ROOT",
    "TEMPLATE_VERSION",
    "Json",
    "parameter_values",
    "render",
    "to_json",
]


def _outputs(config: StackConfig, queues: Queues) -> Json:
    names = config.names
    values: dict[str, tuple[Any, str]] = {
        "IndexingQueueUrl": (queues.url(INDEXING_QUEUE), "QUEUE_URL"),
        "IndexingQueueArn": (queues.arn(INDEXING_QUEUE), "indexing queue ARN"),
        "GroupFaceQueueUrl": (queues.url(GROUP_FACE_QUEUE), "GROUP_FACE_QUEUE_URL"),
        "GroupFaceQueueArn": (queues.arn(GROUP_FACE_QUEUE), "GroupFace queue ARN"),
        "GalleryBucketName": (config.gallery_bucket, "BUCKET_NAME"),
        "FaceGroupBucketName": (config.face_group_bucket, "FACE_GROUP_BUCKET_NAME"),
        "ModelBucketName": (ref("ModelBucket"), "MODEL_BUCKET"),
        "LogGroupName": (ref("LogGroup"), "LOG_GROUP"),
        "MetricsNamespace": (names.metrics_namespace, "METRICS_NAMESPACE"),
        "Region": (ref("AWS::Region"), "AWS_DEFAULT_REGION"),
        "PrimaryJobQueueName": (names.primary_queue.name, "primary job queue"),
        "SecondaryJobQueueName": (names.secondary_queue.name, "secondary job queue"),
        "DetectionJobDefinitionName": (names.detection_job.name, "detection job definition"),
        "GroupingJobDefinitionName": (names.grouping_job.name, "grouping job definition"),
        "AlertsTopicArn": (ref("AlertsTopic"), "SNS topic for alerts"),
        "RepositoryUri": (get_att("WorkerImageRepository", "RepositoryUri"), "ECR repository"),
        "ImageUri": (image(config), "worker image the job definitions run"),
        "WorkerSecurityGroupId": (
            get_att("WorkerSecurityGroup", "GroupId"),
            "admit this group where MongoDB runs",
        ),
    }
    for logical_id in (INDEXING_QUEUE, GROUP_FACE_QUEUE):
        if queues.created(logical_id):
            values[f"{logical_id}DeadLetterUrl"] = (
                ref(f"{logical_id}DeadLetter"),
                "dead-letter queue",
            )
    if config.fallback_dispatcher:
        values["DispatchFunctionName"] = (ref("DispatchFunction"), "fallback dispatcher")
    if config.router:
        values.update(router_outputs(config))
    values.update(flows_outputs(config))
    return {key: {"Description": what, "Value": value} for key, (value, what) in values.items()}


def render(
    config: StackConfig,
    package: LambdaPackage | None = None,
    router_package: LambdaPackage | None = None,
) -> Json:
    """The template for `config`. `package` is the dispatcher zip, `router_package` the
    router's (each built here when its function is enabled and none is given; only the key is
    used)."""
    config.validate()
    queues = Queues(config)
    network_parameters, network_resources = network_template(config)
    secret_parameters, secret_resources = secret_template(config)
    resources: Json = {
        **network_resources,
        **repository(config),
        "LogGroup": {
            "Type": "AWS::Logs::LogGroup",
            "Properties": {
                "LogGroupName": config.names.log_group,
                "RetentionInDays": config.log_retention_days,
            },
        },
        **queue_resources(config, queues),
        **model_bucket(config),
        **secret_resources,
        **iam_resources(config, queues),
        **batch_resources(config, queues),
        **alert_resources(config),
        **lease_table(config),
    }
    if config.fallback_dispatcher:
        if package is None:
            from facefleet.infra import lambda_package

            package = lambda_package.build()
        resources.update(dispatcher_resources(config, queues, package))
    if config.router:
        if config.router_lambda and router_package is None:
            from facefleet.infra import lambda_package

            router_package = lambda_package.build_router()
        resources.update(router_resources(config, queues, router_package, artifact_bucket(config)))
    resources.update(flows_runtime_resources(config, queues))
    return {
        "AWSTemplateFormatVersion": TEMPLATE_VERSION,
        "Description": f"FaceFleet face recognition on AWS Batch ({config.names.prefix})",
        "Parameters": {**network_parameters, **secret_parameters},
        "Resources": resources,
        "Outputs": _outputs(config, queues),
    }


def parameter_values(config: StackConfig) -> dict[str, str | None]:
    """CloudFormation parameter values for `config`; None: keep the deployed value."""
    values: dict[str, str | None] = {
        "VpcId": config.vpc_id,
        "SubnetIds": ",".join(config.subnet_ids),
    }
    if config.security_group_ids:
        values["SecurityGroupIds"] = ",".join(config.security_group_ids)
    if not config.gallery_mongo_secret_arn:
        values[GALLERY_URI_PARAMETER] = config.gallery_mongo_uri
    if not config.huemn_mongo_secret_arn:
        values[HUEMN_URI_PARAMETER] = config.huemn_mongo_uri
    return values


def to_json(template: Json) -> str:
    """Stable text: the same config always renders to the same bytes (idempotent deploys)."""
    return json.dumps(template, indent=1, sort_keys=True)
