"""AWS Batch: the two compute environments, their job queues and the job definitions."""

from __future__ import annotations

from typing import Any

from facefleet.common.config import (
    RETRYABLE_EXIT_CODE,
    ComputeEnvironmentSpec,
    JobDefinitionSpec,
    JobQueueSpec,
    Settings,
)
from facefleet.infra.stack_config import StackConfig
from facefleet.infra.template.base import (
    DETECTION_JOB_ROLE,
    EXECUTION_ROLE,
    GROUP_FACE_QUEUE,
    GROUPING_JOB_ROLE,
    INDEXING_QUEUE,
    MODEL_ROOT,
    Json,
    get_att,
    ref,
    sub,
)
from facefleet.infra.template.network import security_groups
from facefleet.infra.template.queues import Queues
from facefleet.infra.template.storage import secret_arns


def _compute_environment(spec: ComputeEnvironmentSpec, config: StackConfig) -> Json:
    return {
        "Type": "AWS::Batch::ComputeEnvironment",
        "Properties": {
            "ComputeEnvironmentName": spec.name,
            "Type": "MANAGED",
            "State": "ENABLED",
            "ServiceRole": get_att("BatchServiceRole", "Arn"),
            "ComputeResources": {
                "Type": "SPOT",
                "AllocationStrategy": spec.allocation_strategy,
                "BidPercentage": spec.bid_percentage,
                "InstanceTypes": list(spec.instance_types),
                "MinvCpus": spec.min_vcpus,
                "MaxvCpus": spec.max_vcpus,
                "Subnets": ref("SubnetIds"),
                "SecurityGroupIds": security_groups(config),
                "InstanceRole": get_att("InstanceProfile", "Arn"),
                "Ec2Configuration": [{"ImageType": config.ami_image_type}],
                "Tags": dict(sorted(config.tags.items())),
            },
            "Tags": dict(sorted(config.tags.items())),
        },
    }


def _job_queue(spec: JobQueueSpec, environment_logical_id: str, config: StackConfig) -> Json:
    return {
        "Type": "AWS::Batch::JobQueue",
        "Properties": {
            "JobQueueName": spec.name,
            "Priority": spec.priority,
            "State": "ENABLED",
            "ComputeEnvironmentOrder": [
                {"Order": 1, "ComputeEnvironment": ref(environment_logical_id)}
            ],
            "Tags": dict(sorted(config.tags.items())),
        },
    }


def retry_strategy(spec: JobDefinitionSpec) -> Json:
    """Retry Spot reclaims and the worker's early-stop exit code; anything else is final."""
    return {
        "Attempts": spec.attempts,
        "EvaluateOnExit": [
            {"OnStatusReason": "Host EC2*", "Action": "RETRY"},
            {"OnExitCode": str(RETRYABLE_EXIT_CODE), "Action": "RETRY"},
            {"OnReason": "*", "Action": "EXIT"},
        ],
    }


def job_environment(config: StackConfig, service_type: str, queues: Queues) -> list[Json]:
    """The `Settings` contract with its defaults, the stack's own resources filled in."""
    env: dict[str, Any] = Settings(service_type=service_type).to_env()
    env.update(
        {
            "AWS_DEFAULT_REGION": ref("AWS::Region"),
            "QUEUE_URL": queues.url(INDEXING_QUEUE),
            "GROUP_FACE_QUEUE_URL": queues.url(GROUP_FACE_QUEUE),
            "BUCKET_NAME": config.gallery_bucket,
            "FACE_GROUP_BUCKET_NAME": config.face_group_bucket,
            "LOG_GROUP": config.names.log_group,
            "MODEL_BUCKET": config.model_bucket_name,
            "METRICS_NAMESPACE": config.names.metrics_namespace,
        }
    )
    env.update(config.worker_settings)
    if service_type == "detection" and "MODEL_DIR" not in config.worker_settings:
        env["MODEL_DIR"] = f"{MODEL_ROOT}/{env['MODEL_PACK']}"
    for secret in secret_arns(config):
        env.pop(secret, None)
    return [{"Name": k, "Value": v} for k, v in sorted(env.items())]


def image(config: StackConfig) -> Any:
    if config.image_uri:
        return config.image_uri
    return sub(f"${{WorkerImageRepository.RepositoryUri}}:{config.image_tag}")


def _job_definition(
    spec: JobDefinitionSpec, role: str, config: StackConfig, queues: Queues
) -> Json:
    secrets = secret_arns(config)
    wanted = ["GALLERY_IMAGES_MONGO_URI"]
    if spec.service_type == "grouping":
        wanted.append("HUEMN_MONGO_URI")
    return {
        "Type": "AWS::Batch::JobDefinition",
        "Properties": {
            "JobDefinitionName": spec.name,
            "Type": "container",
            "PlatformCapabilities": ["EC2"],
            "PropagateTags": True,
            "ContainerProperties": {
                "Image": image(config),
                "Command": list(spec.command),
                "ResourceRequirements": [
                    {"Type": "VCPU", "Value": str(spec.vcpus)},
                    {"Type": "MEMORY", "Value": str(spec.memory_mib)},
                    {"Type": "GPU", "Value": str(spec.gpus)},
                ],
                "Environment": job_environment(config, spec.service_type, queues),
                "Secrets": [{"Name": name, "ValueFrom": secrets[name]} for name in wanted],
                "JobRoleArn": get_att(role, "Arn"),
                "ExecutionRoleArn": get_att(EXECUTION_ROLE, "Arn"),
                "LogConfiguration": {
                    "LogDriver": "awslogs",
                    "Options": {
                        "awslogs-group": ref("LogGroup"),
                        "awslogs-stream-prefix": spec.service_type,
                    },
                },
            },
            "RetryStrategy": retry_strategy(spec),
            "Timeout": {"AttemptDurationSeconds": spec.timeout_s},
            "Tags": dict(sorted(config.tags.items())),
        },
    }


def batch_resources(config: StackConfig, queues: Queues) -> Json:
    names = config.names
    resources: Json = {}
    environment_ids = {
        names.primary_environment.name: "PrimaryComputeEnvironment",
        names.secondary_environment.name: "SecondaryComputeEnvironment",
    }
    for spec in names.compute_environments:
        resources[environment_ids[spec.name]] = _compute_environment(spec, config)
    for logical_id, queue in (
        ("PrimaryJobQueue", names.primary_queue),
        ("SecondaryJobQueue", names.secondary_queue),
    ):
        resources[logical_id] = _job_queue(
            queue, environment_ids[queue.compute_environment], config
        )
    resources["DetectionJobDefinition"] = _job_definition(
        names.detection_job, DETECTION_JOB_ROLE, config, queues
    )
    resources["GroupingJobDefinition"] = _job_definition(
        names.grouping_job, GROUPING_JOB_ROLE, config, queues
    )
    return resources
