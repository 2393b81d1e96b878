"""The FaceFleet CloudFormation template, rendered from a `StackConfig` as a plain dict.

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

from facefleet.common.config import (
    RETRYABLE_EXIT_CODE,
    ComputeEnvironmentSpec,
    JobDefinitionSpec,
    JobQueueSpec,
    Settings,
)
from facefleet.infra.lambda_package import HANDLER, LambdaPackage
from facefleet.infra.stack_config import QueueRef, StackConfig

Json = dict[str, Any]

TEMPLATE_VERSION = "2010-09-09"
LAMBDA_RUNTIME = "python3.12"
CONTAINER_WORKDIR = "/opt/facefleet"
MODEL_ROOT = f"{CONTAINER_WORKDIR}/models"

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


def _retain(resource: Json, config: StackConfig) -> Json:
    if config.retain_data:
        resource["DeletionPolicy"] = "Retain"
        resource["UpdateReplacePolicy"] = "Retain"
    else:
        resource["DeletionPolicy"] = "Delete"
        resource["UpdateReplacePolicy"] = "Delete"
    return resource


class _Queues:
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


def _queue_resources(config: StackConfig, queues: _Queues) -> Json:
    names = config.names
    resources: Json = {}
    for logical_id, queue_name in (
        (INDEXING_QUEUE, names.indexing_queue),
        (GROUP_FACE_QUEUE, names.group_face_queue),
    ):
        if not queues.created(logical_id):
            continue
        dlq_id = f"{logical_id}DeadLetter"
        resources[dlq_id] = {
            "Type": "AWS::SQS::Queue",
            "Properties": {
                "QueueName": names.dead_letter_queue(queue_name),
                "MessageRetentionPeriod": config.dlq_retention_s,
                "SqsManagedSseEnabled": True,
                "Tags": tag_list(config),
            },
        }
        resources[logical_id] = {
            "Type": "AWS::SQS::Queue",
            "Properties": {
                "QueueName": queue_name,
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
        }
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


def _model_bucket(config: StackConfig) -> Json:
    bucket = config.model_bucket_name
    resources: Json = {
        "ModelBucket": _retain(
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


def _repository(config: StackConfig) -> Json:
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
        "WorkerImageRepository": _retain(
            {
                "Type": "AWS::ECR::Repository",
                "Properties": {
                    "RepositoryName": config.names.ecr_repository,
                    "ImageScanningConfiguration": {"ScanOnPush": True},
                    "ImageTagMutability": "MUTABLE",
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


def _secret_arns(config: StackConfig) -> dict[str, Any]:
    """Environment variable -> secret ARN (a created secret's Ref is its ARN)."""
    return {
        "GALLERY_IMAGES_MONGO_URI": config.gallery_mongo_secret_arn or ref(GALLERY_SECRET),
        "HUEMN_MONGO_URI": config.huemn_mongo_secret_arn or ref(HUEMN_SECRET),
    }


def _secrets(config: StackConfig) -> tuple[Json, Json]:
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


def _logs_statement(log_group: str) -> Json:
    return statement(
        ["logs:CreateLogStream", "logs:PutLogEvents"],
        [arn("logs", f"log-group:{log_group}:*")],
    )


def _metrics_statement(namespace: str) -> Json:
    # PutMetricData has no resource-level permission; the namespace condition is the scope.
    return statement(
        ["cloudwatch:PutMetricData"],
        ["*"],
        Condition={"StringEquals": {"cloudwatch:namespace": namespace}},
    )


CONSUME = [
    "sqs:ReceiveMessage",
    "sqs:DeleteMessage",
    "sqs:ChangeMessageVisibility",
    "sqs:GetQueueAttributes",
    "sqs:GetQueueUrl",
]


def _job_policies(config: StackConfig, queues: _Queues) -> dict[str, list[Json]]:
    names = config.names
    face_groups = config.face_group_bucket
    models = config.model_bucket_name
    detection = [
        statement(CONSUME, [queues.arn(INDEXING_QUEUE)]),
        statement(["sqs:SendMessage", "sqs:GetQueueUrl"], [queues.arn(GROUP_FACE_QUEUE)]),
        statement(["s3:GetObject"], [s3_arn(config.gallery_bucket, "/*")]),
        statement(["s3:PutObject"], [s3_arn(face_groups, "/*")]),
        statement(["s3:ListBucket"], [s3_arn(models)]),
        statement(["s3:GetObject"], [s3_arn(models, "/*")]),
        _logs_statement(names.log_group),
        _metrics_statement(names.metrics_namespace),
    ]
    grouping = [
        statement(CONSUME, [queues.arn(GROUP_FACE_QUEUE)]),
        # Crops written by detection are read, and copied to their person's key.
        statement(["s3:GetObject", "s3:PutObject"], [s3_arn(face_groups, "/*")]),
        _logs_statement(names.log_group),
        _metrics_statement(names.metrics_namespace),
    ]
    return {DETECTION_JOB_ROLE: detection, GROUPING_JOB_ROLE: grouping}


def _iam(config: StackConfig, queues: _Queues) -> Json:
    managed = "arn:${AWS::Partition}:iam::aws:policy/service-role/"
    resources: Json = {
        "BatchServiceRole": {
            "Type": "AWS::IAM::Role",
            "Properties": {
                "AssumeRolePolicyDocument": assume_role("batch.amazonaws.com"),
                "ManagedPolicyArns": [sub(managed + "AWSBatchServiceRole")],
                "Tags": tag_list(config),
            },
        },
        "InstanceRole": {
            "Type": "AWS::IAM::Role",
            "Properties": {
                "AssumeRolePolicyDocument": assume_role("ec2.amazonaws.com"),
                # ECS agent, image pulls from ECR and the awslogs driver run with this role.
                "ManagedPolicyArns": [sub(managed + "AmazonEC2ContainerServiceforEC2Role")],
                "Tags": tag_list(config),
            },
        },
        "InstanceProfile": {
            "Type": "AWS::IAM::InstanceProfile",
            "Properties": {"Roles": [ref("InstanceRole")]},
        },
        EXECUTION_ROLE: {
            "Type": "AWS::IAM::Role",
            "Properties": {
                "AssumeRolePolicyDocument": assume_role("ecs-tasks.amazonaws.com"),
                "Policies": [
                    {
                        "PolicyName": "read-mongodb-secrets",
                        "PolicyDocument": policy_document(
                            [
                                statement(
                                    ["secretsmanager:GetSecretValue"],
                                    list(_secret_arns(config).values()),
                                ),
                                _logs_statement(config.names.log_group),
                            ]
                        ),
                    }
                ],
                "Tags": tag_list(config),
            },
        },
    }
    for role, statements in _job_policies(config, queues).items():
        resources[role] = {
            "Type": "AWS::IAM::Role",
            "Properties": {
                "AssumeRolePolicyDocument": assume_role("ecs-tasks.amazonaws.com"),
                "Policies": [
                    {
                        "PolicyName": "facefleet-worker",
                        "PolicyDocument": policy_document(statements),
                    }
                ],
                "Tags": tag_list(config),
            },
        }
    return resources


def _network(config: StackConfig) -> tuple[Json, Json]:
    parameters: Json = {
        "VpcId": {"Type": "AWS::EC2::VPC::Id", "Description": "VPC of the Batch instances"},
        "SubnetIds": {
            "Type": "List<AWS::EC2::Subnet::Id>",
            "Description": "Subnets of the Batch instances (a route to SQS, S3, ECR, MongoDB)",
        },
    }
    if config.security_group_ids:
        parameters["SecurityGroupIds"] = {
            "Type": "List<AWS::EC2::SecurityGroup::Id>",
            "Description": "Extra security groups for the instances (e.g. one MongoDB admits)",
        }
    resources: Json = {
        "WorkerSecurityGroup": {
            "Type": "AWS::EC2::SecurityGroup",
            "Properties": {
                "GroupDescription": "FaceFleet Batch workers: no inbound, outbound only",
                "VpcId": ref("VpcId"),
                "SecurityGroupEgress": [
                    {
                        "IpProtocol": "-1",
                        "CidrIp": "0.0.0.0/0",
                        "Description": "SQS, S3, ECR, CloudWatch and MongoDB",
                    }
                ],
                "Tags": tag_list(config),
            },
        }
    }
    return parameters, resources


def _security_groups(config: StackConfig) -> Any:
    own = get_att("WorkerSecurityGroup", "GroupId")
    if not config.security_group_ids:
        return [own]
    return {
        "Fn::Split": [
            ",",
            {
                "Fn::Join": [
                    ",",
                    [
                        own,
                        {"Fn::Join": [",", ref("SecurityGroupIds")]},
                    ],
                ]
            },
        ]
    }


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
                "SecurityGroupIds": _security_groups(config),
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


def job_environment(config: StackConfig, service_type: str, queues: _Queues) -> list[Json]:
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
    for secret in _secret_arns(config):
        env.pop(secret, None)
    return [{"Name": k, "Value": v} for k, v in sorted(env.items())]


def _image(config: StackConfig) -> Any:
    if config.image_uri:
        return config.image_uri
    return sub(f"${{WorkerImageRepository.RepositoryUri}}:{config.image_tag}")


def _job_definition(
    spec: JobDefinitionSpec, role: str, config: StackConfig, queues: _Queues
) -> Json:
    secrets = _secret_arns(config)
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
                "Image": _image(config),
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


def _batch(config: StackConfig, queues: _Queues) -> Json:
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


def _alerts(config: StackConfig) -> Json:
    names = config.names
    topic: Json = {
        "Type": "AWS::SNS::Topic",
        "Properties": {"TopicName": names.alerts_topic, "Tags": tag_list(config)},
    }
    if config.alert_email:
        topic["Properties"]["Subscription"] = [
            {"Protocol": "email", "Endpoint": config.alert_email}
        ]
    job_queues = [ref("PrimaryJobQueue"), ref("SecondaryJobQueue")]
    return {
        "AlertsTopic": topic,
        "AlertsTopicPolicy": {
            "Type": "AWS::SNS::TopicPolicy",
            "Properties": {
                "Topics": [ref("AlertsTopic")],
                "PolicyDocument": policy_document(
                    [
                        {
                            "Sid": "EventBridgeRules",
                            "Effect": "Allow",
                            "Principal": {"Service": "events.amazonaws.com"},
                            "Action": "sns:Publish",
                            "Resource": ref("AlertsTopic"),
                            "Condition": {
                                "ArnEquals": {
                                    "aws:SourceArn": [
                                        get_att("JobFailedRule", "Arn"),
                                        get_att("SpotInterruptionRule", "Arn"),
                                    ]
                                }
                            },
                        }
                    ]
                ),
            },
        },
        "JobFailedRule": {
            "Type": "AWS::Events::Rule",
            "Properties": {
                "Name": names.job_failed_rule,
                "Description": "FaceFleet Batch job reached FAILED",
                "State": "ENABLED",
                "EventPattern": {
                    "source": ["aws.batch"],
                    "detail-type": ["Batch Job State Change"],
                    "detail": {"status": ["FAILED"], "jobQueue": job_queues},
                },
                "Targets": [{"Id": "alerts", "Arn": ref("AlertsTopic")}],
            },
        },
        "SpotInterruptionRule": {
            "Type": "AWS::Events::Rule",
            "Properties": {
                "Name": names.spot_interruption_rule,
                "Description": "EC2 Spot two-minute interruption warning",
                "State": "ENABLED",
                "EventPattern": {
                    "source": ["aws.ec2"],
                    "detail-type": ["EC2 Spot Instance Interruption Warning"],
                },
                "Targets": [{"Id": "alerts", "Arn": ref("AlertsTopic")}],
            },
        },
    }


def artifact_bucket(config: StackConfig) -> Any:
    """The bucket holding the Lambda zip (deploy creates it; one per account and region)."""
    if config.artifact_bucket:
        return config.artifact_bucket
    return sub(f"{config.names.prefix}-artifacts-${{AWS::AccountId}}-${{AWS::Region}}")


def _dispatcher(config: StackConfig, queues: _Queues, package: LambdaPackage) -> Json:
    names = config.names
    function = names.dispatch_function
    job_queue_arns = [ref("PrimaryJobQueue"), ref("SecondaryJobQueue")]
    job_definition_arns = [
        arn("batch", f"job-definition/{spec.name}") for spec in names.job_definitions
    ] + [arn("batch", f"job-definition/{spec.name}:*") for spec in names.job_definitions]
    statements = [
        statement(
            ["sqs:GetQueueAttributes", "sqs:GetQueueUrl"],
            [queues.arn(INDEXING_QUEUE), queues.arn(GROUP_FACE_QUEUE)],
        ),
        statement(["batch:SubmitJob"], job_queue_arns + job_definition_arns),
        # ListJobs, DescribeJobs and GetMetricStatistics take no resource-level permissions.
        statement(
            ["batch:DescribeJobs", "batch:ListJobs", "cloudwatch:GetMetricStatistics"], ["*"]
        ),
        statement(
            ["ssm:GetParameter", "ssm:PutParameter"],
            [arn("ssm", f"parameter{names.dispatch_parameter_prefix}/state")],
        ),
        statement(
            ["logs:CreateLogStream", "logs:PutLogEvents"],
            [arn("logs", f"log-group:/aws/lambda/{function}:*")],
        ),
        _metrics_statement(names.metrics_namespace),
    ]
    return {
        "DispatchLogGroup": {
            "Type": "AWS::Logs::LogGroup",
            "Properties": {
                "LogGroupName": f"/aws/lambda/{function}",
                "RetentionInDays": config.log_retention_days,
            },
        },
        DISPATCH_ROLE: {
            "Type": "AWS::IAM::Role",
            "Properties": {
                "AssumeRolePolicyDocument": assume_role("lambda.amazonaws.com"),
                "Policies": [
                    {
                        "PolicyName": "facefleet-dispatch",
                        "PolicyDocument": policy_document(statements),
                    }
                ],
                "Tags": tag_list(config),
            },
        },
        "DispatchFunction": {
            "Type": "AWS::Lambda::Function",
            "DependsOn": ["DispatchLogGroup"],
            "Properties": {
                "FunctionName": function,
                "Description": "FaceFleet fallback dispatcher (same policy as the Prefect flow)",
                "Runtime": LAMBDA_RUNTIME,
                "Handler": HANDLER,
                "Code": {"S3Bucket": artifact_bucket(config), "S3Key": package.key},
                "Role": get_att(DISPATCH_ROLE, "Arn"),
                "Timeout": 60,
                "MemorySize": 256,
                # One tick at a time: two concurrent ticks would both see the same backlog.
                "ReservedConcurrentExecutions": 1,
                "Environment": {
                    "Variables": {
                        "FACEFLEET_PREFIX": names.prefix,
                        "FACEFLEET_GROUPING_PREFIX": names.grouping_prefix,
                        "QUEUE_URL": queues.url(INDEXING_QUEUE),
                        "GROUP_FACE_QUEUE_URL": queues.url(GROUP_FACE_QUEUE),
                        "METRICS_NAMESPACE": names.metrics_namespace,
                    }
                },
                "Tags": tag_list(config),
            },
        },
        "DispatchSchedule": {
            "Type": "AWS::Events::Rule",
            "Properties": {
                "Name": names.dispatch_schedule_rule,
                "Description": "FaceFleet fallback dispatcher tick",
                "ScheduleExpression": config.dispatch_schedule,
                "State": "ENABLED",
                "Targets": [{"Id": "dispatch", "Arn": get_att("DispatchFunction", "Arn")}],
            },
        },
        "DispatchPermission": {
            "Type": "AWS::Lambda::Permission",
            "Properties": {
                "FunctionName": ref("DispatchFunction"),
                "Action": "lambda:InvokeFunction",
                "Principal": "events.amazonaws.com",
                "SourceArn": get_att("DispatchSchedule", "Arn"),
            },
        },
    }


def _outputs(config: StackConfig, queues: _Queues) -> Json:
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
        "ImageUri": (_image(config), "worker image the job definitions run"),
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
    return {key: {"Description": what, "Value": value} for key, (value, what) in values.items()}


def render(config: StackConfig, package: LambdaPackage | None = None) -> Json:
    """The template for `config`. `package` is the dispatcher zip (built here when the fallback
    dispatcher is enabled and none is given; only its key is used)."""
    config.validate()
    queues = _Queues(config)
    network_parameters, network_resources = _network(config)
    secret_parameters, secret_resources = _secrets(config)
    resources: Json = {
        **network_resources,
        **_repository(config),
        "LogGroup": {
            "Type": "AWS::Logs::LogGroup",
            "Properties": {
                "LogGroupName": config.names.log_group,
                "RetentionInDays": config.log_retention_days,
            },
        },
        **_queue_resources(config, queues),
        **_model_bucket(config),
        **secret_resources,
        **_iam(config, queues),
        **_batch(config, queues),
        **_alerts(config),
    }
    if config.fallback_dispatcher:
        if package is None:
            from facefleet.infra import lambda_package

            package = lambda_package.build()
        resources.update(_dispatcher(config, queues, package))
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
