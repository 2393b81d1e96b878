"""AWS Batch: the launch template, the two compute environments, their job queues and the job
definitions.

Compute environments are replaceable. Some of their properties cannot change in place (Tags,
Type, ComputeResources.Type, the service role's kind and, with in-place infrastructure updates,
little else), and
CloudFormation refuses to replace a resource with a custom name. So each environment's name
carries a digest of exactly those properties: a change to them gives a new name, CloudFormation
creates the new environment, points the job queue at it (an in-place queue update) and deletes
the old one. Everything else (instance types, launch template version, subnets, vCPU caps) is an
in-place infrastructure update (`ReplaceComputeEnvironment: false`) that lets running jobs
finish (`UpdatePolicy`); AWS Batch allows those only to environments on its service-linked role
(`AWSServiceRoleForBatch`), so the environments use it rather than a role of the stack's.

The launch template carries what the instances need beyond Batch's defaults:
- the ECS agent settings (user data, MIME multi-part as Batch requires): a stop timeout long
  enough for the worker's drain, a memory reservation for the agent, Spot draining;
- a root volume for the CUDA image and the model pack;
- IMDSv2 required, hop limit 2: the worker container (one network hop beyond the instance in
  bridge mode) reads the Spot interruption notice from instance metadata itself
  (`facefleet.worker.runtime.spot`), because ECS stops only service tasks on a Spot notice, never a
  Batch job's standalone task.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from facefleet.common.config import Settings
from facefleet.common.instances import ECS_RESERVED_MEMORY_MIB
from facefleet.common.names import (
    RETRYABLE_EXIT_CODE,
    ComputeEnvironmentSpec,
    JobDefinitionSpec,
    JobQueueSpec,
    Names,
)
from facefleet.infra.stack_config import StackConfig
from facefleet.infra.template.alerts import SPOT_HOST_REASON
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
    tag_list,
)
from facefleet.infra.template.network import security_groups
from facefleet.infra.template.queues import Queues
from facefleet.infra.template.storage import secret_arns

LAUNCH_TEMPLATE = "WorkerLaunchTemplate"
# Containers reach instance metadata one hop beyond the instance (bridge networking).
IMDS_HOP_LIMIT = 2
# The AL2023 ECS GPU AMI's root device.
ROOT_DEVICE = "/dev/xvda"
MIME_BOUNDARY = "==FACEFLEET-USERDATA=="


def ecs_agent_settings(config: StackConfig) -> dict[str, str]:
    """The ECS agent settings the instances start with (/etc/ecs/ecs.config)."""
    return {
        # SIGTERM -> SIGKILL: the worker's drain fits (SHUTDOWN_DEADLINE_SECONDS < this).
        "ECS_CONTAINER_STOP_TIMEOUT": f"{config.container_stop_timeout_s}s",
        # Memory kept for the agent and Docker; the job memory in the instance facts allows it.
        "ECS_RESERVED_MEMORY": str(ECS_RESERVED_MEMORY_MIB),
        # No new tasks on an instance with a Spot notice (the worker itself drains its job).
        "ECS_ENABLE_SPOT_INSTANCE_DRAINING": "true",
        # The image is large: reuse the cached layers when the tag did not move.
        "ECS_IMAGE_PULL_BEHAVIOR": "prefer-cached",
    }


def user_data(config: StackConfig) -> str:
    """MIME multi-part user data (Batch merges its own part with it)."""
    settings = "\n".join(f"{k}={v}" for k, v in sorted(ecs_agent_settings(config).items()))
    return (
        "MIME-Version: 1.0\n"
        f'Content-Type: multipart/mixed; boundary="{MIME_BOUNDARY}"\n\n'
        f"--{MIME_BOUNDARY}\n"
        'Content-Type: text/x-shellscript; charset="us-ascii"\n\n'
        "#!/bin/bash\n"
        "mkdir -p /etc/ecs\n"
        "cat >> /etc/ecs/ecs.config <<'ECSCONFIG'\n"
        f"{settings}\n"
        "ECSCONFIG\n\n"
        f"--{MIME_BOUNDARY}--\n"
    )


def launch_template(config: StackConfig) -> Json:
    return {
        "Type": "AWS::EC2::LaunchTemplate",
        "Properties": {
            "LaunchTemplateData": {
                "UserData": {"Fn::Base64": user_data(config)},
                "BlockDeviceMappings": [
                    {
                        "DeviceName": ROOT_DEVICE,
                        "Ebs": {
                            "VolumeSize": config.root_volume_gib,
                            "VolumeType": "gp3",
                            "Encrypted": True,
                            "DeleteOnTermination": True,
                        },
                    }
                ],
                "MetadataOptions": {
                    "HttpEndpoint": "enabled",
                    "HttpTokens": "required",
                    "HttpPutResponseHopLimit": IMDS_HOP_LIMIT,
                },
                "TagSpecifications": [
                    {"ResourceType": "volume", "Tags": tag_list(config)},
                ],
            },
            "TagSpecifications": [
                {"ResourceType": "launch-template", "Tags": tag_list(config)},
            ],
        },
    }


# The AWS Batch service-linked role. In-place infrastructure updates (instance types, launch
# template version, subnets, security groups, AMI) need it, and an environment created with a
# regular service role can never be switched to it (AWS Batch user guide, "Perform
# infrastructure updates"; UpdateComputeEnvironment, serviceRole). `deploy` creates it in an
# account that has none yet.
BATCH_SERVICE = "batch.amazonaws.com"
BATCH_SERVICE_LINKED_ROLE = "AWSServiceRoleForBatch"
SERVICE_ROLE_KIND = "service-linked"


def batch_service_role_arn() -> Json:
    return sub(
        "arn:${AWS::Partition}:iam::${AWS::AccountId}:role/aws-service-role/"
        f"{BATCH_SERVICE}/{BATCH_SERVICE_LINKED_ROLE}"
    )


def _replacement_digest(spec: ComputeEnvironmentSpec, config: StackConfig) -> str:
    # Exactly the properties an in-place update cannot change (see the module docstring). The
    # service role's kind is one: moving off the regular role renames (replaces) each
    # environment once, as a blue/green update.
    fixed = {
        "type": "MANAGED",
        "resources": "SPOT",
        "tags": dict(sorted(config.tags.items())),
        "service_role": SERVICE_ROLE_KIND,
    }
    return hashlib.sha256(json.dumps(fixed, sort_keys=True).encode()).hexdigest()[:8]


def compute_environment_name(spec: ComputeEnvironmentSpec, config: StackConfig) -> str:
    """The deployed name: `spec.name` plus a digest of the replacement-only properties."""
    return f"{spec.name}-{_replacement_digest(spec, config)}"


def _compute_environment(spec: ComputeEnvironmentSpec, config: StackConfig) -> Json:
    return {
        "Type": "AWS::Batch::ComputeEnvironment",
        "Properties": {
            "ComputeEnvironmentName": compute_environment_name(spec, config),
            "Type": "MANAGED",
            "State": "ENABLED",
            "ServiceRole": batch_service_role_arn(),
            # Instance-level changes roll out in place; a running job may finish first.
            "ReplaceComputeEnvironment": False,
            "UpdatePolicy": {"TerminateJobsOnUpdate": False, "JobExecutionTimeoutMinutes": 30},
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
                "LaunchTemplate": {
                    "LaunchTemplateId": ref(LAUNCH_TEMPLATE),
                    "Version": get_att(LAUNCH_TEMPLATE, "LatestVersionNumber"),
                },
                "UpdateToLatestImageVersion": True,
                "Tags": dict(sorted(config.tags.items())),
            },
            "Tags": dict(sorted(config.tags.items())),
        },
    }


def _job_queue(spec: JobQueueSpec, environment_logical_ids: list[str], config: StackConfig) -> Json:
    return {
        "Type": "AWS::Batch::JobQueue",
        "Properties": {
            "JobQueueName": spec.name,
            "Priority": spec.priority,
            "State": "ENABLED",
            "ComputeEnvironmentOrder": [
                {"Order": order, "ComputeEnvironment": ref(logical_id)}
                for order, logical_id in enumerate(environment_logical_ids, start=1)
            ],
            "Tags": dict(sorted(config.tags.items())),
        },
    }


def queue_environments(names: Names) -> dict[str, list[str]]:
    """Job queue name -> its compute environments, in the order Batch tries them.

    A queue's priority only orders it against queues that share a compute environment (AWS
    Batch user guide, "Job queue parameters": priority). So the primary queue (100) tries its
    own environment first and the diversified secondary one next, where its jobs go ahead of
    the secondary queue's (50) bulk arrays: a single g4dn pool without Spot capacity does not
    hold up the latency-sensitive jobs. The secondary queue stays on its own environment, so
    the bulk never takes the primary's pool."""
    primary, secondary = names.primary_environment.name, names.secondary_environment.name
    return {names.primary_queue.name: [primary, secondary], names.secondary_queue.name: [secondary]}


def retry_strategy(spec: JobDefinitionSpec) -> Json:
    """Retry Spot reclaims and the worker's early-stop exit code; anything else is final."""
    return {
        "Attempts": spec.attempts,
        "EvaluateOnExit": [
            {"OnStatusReason": f"{SPOT_HOST_REASON}*", "Action": "RETRY"},
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
    resources: Json = {LAUNCH_TEMPLATE: launch_template(config)}
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
        order = [environment_ids[name] for name in queue_environments(names)[queue.name]]
        resources[logical_id] = _job_queue(queue, order, config)
    resources["DetectionJobDefinition"] = _job_definition(
        names.detection_job, DETECTION_JOB_ROLE, config, queues
    )
    resources["GroupingJobDefinition"] = _job_definition(
        names.grouping_job, GROUPING_JOB_ROLE, config, queues
    )
    return resources
