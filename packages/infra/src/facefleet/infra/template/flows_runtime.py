"""Where the Prefect flows run in production: the flows image repository, the flow runs'
least-privilege task role and execution role, and (with `StackConfig.prefect_api_url`) a Prefect
ECS worker as a Fargate service that starts each flow run as a Fargate task, plus the dispatch
service: a long-lived Fargate task with the flow task role that serves `dispatch/production`
(`python -m facefleet.flows.deployments serve-production`), so the minutely tick runs in that
process instead of starting a Fargate task (an image pull and a minute of start-up) each minute.
It is a service of its own, not a second container of the worker's task, because a task has one
task role: the worker's may run tasks and pass roles, the dispatcher's may submit Batch jobs.

The flow task role (`FlowsTaskRole`) may do what the dispatch, cutover and savings flows do and
nothing more: submit to the stack's job queues and definitions, read queue depths, move waiting
messages from the Batch queue to the ECS queue (rollback), read and write the cutover and
dispatch parameters, read CloudWatch statistics, put metrics in the FaceFleet namespace, publish
to the alerts topic, and (only when `ecs_service_arn` is given) scale that one ECS service after
the final soak (and check, at the cutover's start, that it reads the ECS queue). Dispatch takes
the lease first (PutItem / DeleteItem on the lease table), and every flow reads the stack's
outputs (production flow runs get no QUEUE_URL): `cloudformation:DescribeStacks` on this stack
only, nothing else of CloudFormation: provisioning runs from a person's shell or CI
(`facefleet infra apply`), never from the flow runtime.

The Prefect worker service has a deployment circuit breaker with rollback: a task that cannot
start (a bad image) fails the deployment back to the previous task definition in minutes, instead
of keeping the stack IN_PROGRESS for hours (ECS developer guide, "Deployment circuit breaker").
"""

from __future__ import annotations

from typing import Any

from facefleet.infra.stack_config import StackConfig
from facefleet.infra.template.base import (
    GROUP_FACE_QUEUE,
    INDEXING_QUEUE,
    Json,
    arn,
    assume_role,
    get_att,
    policy_document,
    ref,
    statement,
    sub,
    tag_list,
)
from facefleet.infra.template.dispatcher import LEASE_TABLE
from facefleet.infra.template.iam import metrics_statement, savings_statements
from facefleet.infra.template.queues import Queues
from facefleet.infra.template.router import ECS_QUEUE, INGRESS_QUEUE, RouterQueues

FLOWS_TASK_ROLE = "FlowsTaskRole"
FLOWS_EXECUTION_ROLE = "FlowsExecutionRole"
PREFECT_WORKER_ROLE = "PrefectWorkerRole"
DISPATCH_SERVICE = "DispatchService"
# What the dispatch service runs (facefleet.flows.production.serve_production_command: infra
# does not import flows; tests/test_router_runtime.py checks the two agree).
SERVE_PRODUCTION = ["python", "-m", "facefleet.flows.deployments", "serve-production"]
FLOWS_REPOSITORY = "FlowsImageRepository"
# Every ECS service of the stack: a failed deployment rolls back instead of retrying for hours.
CIRCUIT_BREAKER: Json = {"DeploymentCircuitBreaker": {"Enable": True, "Rollback": True}}


def flows_image(config: StackConfig) -> Any:
    return sub(f"${{{FLOWS_REPOSITORY}.RepositoryUri}}:{config.flows_image_tag}")


def flow_task_statements(config: StackConfig, queues: Queues) -> list[Json]:
    names = config.names
    job_queues = [ref("PrimaryJobQueue"), ref("SecondaryJobQueue")]
    job_definitions = [
        arn("batch", f"job-definition/{spec.name}") for spec in names.job_definitions
    ] + [arn("batch", f"job-definition/{spec.name}:*") for spec in names.job_definitions]
    depth = [queues.arn(INDEXING_QUEUE), queues.arn(GROUP_FACE_QUEUE)]
    if queues.created(INDEXING_QUEUE):
        depth.append(get_att(f"{INDEXING_QUEUE}DeadLetter", "Arn"))
    statements = [
        statement(["batch:SubmitJob"], job_queues + job_definitions),
        # ListJobs, DescribeJobs and GetMetricStatistics take no resource-level permissions.
        statement(
            ["batch:DescribeJobs", "batch:ListJobs", "cloudwatch:GetMetricStatistics"], ["*"]
        ),
        *savings_statements(),
    ]
    if config.router:
        routed = RouterQueues(config)
        depth += [routed.arn(ECS_QUEUE), routed.arn(INGRESS_QUEUE)]
        # Rollback: waiting Batch messages are received, sent to the ECS queue, then deleted.
        statements += [
            statement(
                ["sqs:ChangeMessageVisibility", "sqs:DeleteMessage", "sqs:ReceiveMessage"],
                [queues.arn(INDEXING_QUEUE)],
            ),
            statement(["sqs:SendMessage"], [routed.arn(ECS_QUEUE)]),
        ]
    statements += [
        statement(["sqs:GetQueueAttributes", "sqs:GetQueueUrl"], depth),
        # One dispatch tick at a time (control/lease.py): a conditional put, then a delete.
        statement(["dynamodb:DeleteItem", "dynamodb:PutItem"], [get_att(LEASE_TABLE, "Arn")]),
        # observe, the cutover flow, its effects and health find the queues in the outputs.
        statement(
            ["cloudformation:DescribeStacks"],
            [arn("cloudformation", f"stack/{names.stack_name}/*")],
        ),
        statement(
            ["ssm:GetParameter", "ssm:PutParameter"],
            [
                arn("ssm", f"parameter{names.cutover_parameter_prefix}/*"),
                arn("ssm", f"parameter{names.dispatch_parameter_prefix}/state"),
            ],
        ),
        statement(["sns:Publish"], [ref("AlertsTopic")]),
        statement(
            ["logs:CreateLogStream", "logs:PutLogEvents"],
            [arn("logs", f"log-group:{names.flows_log_group}:*")],
        ),
        metrics_statement(names.metrics_namespace),
    ]
    if config.ecs_service_arn:
        # The cutover's start checks the service reads the ECS queue; the final step scales it.
        statements += [
            statement(["ecs:DescribeServices", "ecs:UpdateService"], [config.ecs_service_arn]),
            statement(["ecs:DescribeTaskDefinition"], ["*"]),
        ]
    return statements


def _role(
    service: str, config: StackConfig, name: str, statements: list[Json], **extra: Any
) -> Json:
    return {
        "Type": "AWS::IAM::Role",
        "Properties": {
            "AssumeRolePolicyDocument": assume_role(service),
            "Policies": [{"PolicyName": name, "PolicyDocument": policy_document(statements)}],
            "Tags": tag_list(config),
            **extra,
        },
    }


def _worker_resources(config: StackConfig) -> Json:
    """A Prefect ECS worker (`prefect worker start --type ecs`) as a one-task Fargate service."""
    names = config.names
    pool = names.work_pool
    worker_statements = [
        # The worker registers a task definition per deployment and runs flow runs from it;
        # RegisterTaskDefinition and the Describe calls take no resource-level permissions.
        statement(
            [
                "ecs:DescribeTaskDefinition",
                "ecs:RegisterTaskDefinition",
                "ec2:DescribeSecurityGroups",
                "ec2:DescribeSubnets",
                "ec2:DescribeVpcs",
            ],
            ["*"],
        ),
        statement(
            ["ecs:DescribeTasks", "ecs:RunTask", "ecs:StopTask", "ecs:TagResource"],
            [
                arn("ecs", "task-definition/prefect*"),
                arn("ecs", f"task/{names.flows_cluster}/*"),
            ],
            Condition={"ArnEqualsIfExists": {"ecs:cluster": get_att("FlowsCluster", "Arn")}},
        ),
        statement(
            ["iam:PassRole"],
            [get_att(FLOWS_TASK_ROLE, "Arn"), get_att(FLOWS_EXECUTION_ROLE, "Arn")],
            Condition={"StringEquals": {"iam:PassedToService": "ecs-tasks.amazonaws.com"}},
        ),
        statement(
            ["logs:CreateLogStream", "logs:GetLogEvents", "logs:PutLogEvents"],
            [arn("logs", f"log-group:{names.flows_log_group}:*")],
        ),
    ]
    environment: list[Json] = [
        {"Name": "PREFECT_API_URL", "Value": config.prefect_api_url},
        {"Name": "PREFECT_SERVER_ANALYTICS_ENABLED", "Value": "false"},
        {"Name": "DO_NOT_TRACK", "Value": "1"},
    ]
    secrets: list[Json] = []
    if config.prefect_api_key_secret_arn:
        secrets.append({"Name": "PREFECT_API_KEY", "ValueFrom": config.prefect_api_key_secret_arn})
    return {
        "FlowsCluster": {
            "Type": "AWS::ECS::Cluster",
            "Properties": {"ClusterName": names.flows_cluster, "Tags": tag_list(config)},
        },
        PREFECT_WORKER_ROLE: _role(
            "ecs-tasks.amazonaws.com", config, "facefleet-prefect-worker", worker_statements
        ),
        "PrefectWorkerTaskDefinition": {
            "Type": "AWS::ECS::TaskDefinition",
            "Properties": {
                "Family": f"{names.prefix}-prefect-worker",
                "RequiresCompatibilities": ["FARGATE"],
                "NetworkMode": "awsvpc",
                "Cpu": "512",
                "Memory": "1024",
                "TaskRoleArn": get_att(PREFECT_WORKER_ROLE, "Arn"),
                "ExecutionRoleArn": get_att(FLOWS_EXECUTION_ROLE, "Arn"),
                "ContainerDefinitions": [
                    {
                        "Name": "prefect-worker",
                        "Image": flows_image(config),
                        "Essential": True,
                        "Command": ["prefect", "worker", "start", "--pool", pool, "--type", "ecs"],
                        "Environment": environment,
                        "Secrets": secrets,
                        "LogConfiguration": {
                            "LogDriver": "awslogs",
                            "Options": {
                                "awslogs-group": names.flows_log_group,
                                "awslogs-region": ref("AWS::Region"),
                                "awslogs-stream-prefix": "worker",
                            },
                        },
                    }
                ],
                "Tags": tag_list(config),
            },
        },
        "PrefectWorkerService": _service(
            f"{names.prefix}-prefect-worker", ref("PrefectWorkerTaskDefinition")
        ),
        **_dispatch_service(config, environment, secrets),
    }


def _service(name: str, task_definition: Any) -> Json:
    """A one-task Fargate service in the flows cluster, on the stack's subnets."""
    return {
        "Type": "AWS::ECS::Service",
        "Properties": {
            "ServiceName": name,
            "Cluster": ref("FlowsCluster"),
            "LaunchType": "FARGATE",
            "DesiredCount": 1,
            "TaskDefinition": task_definition,
            "DeploymentConfiguration": CIRCUIT_BREAKER,
            "NetworkConfiguration": {
                "AwsvpcConfiguration": {
                    "Subnets": ref("SubnetIds"),
                    "SecurityGroups": [get_att("WorkerSecurityGroup", "GroupId")],
                    "AssignPublicIp": "DISABLED",
                }
            },
        },
    }


def _dispatch_service(config: StackConfig, environment: list[Json], secrets: list[Json]) -> Json:
    """The process serving `dispatch/production`: its flow runs are its subprocesses, with the
    flow task role (the lease table, DescribeStacks, queue depths, Batch submit and list)."""
    names = config.names
    command = [*SERVE_PRODUCTION, "--prefix", names.prefix]
    command += ["--grouping-prefix", names.grouping_prefix]
    return {
        f"{DISPATCH_SERVICE}TaskDefinition": {
            "Type": "AWS::ECS::TaskDefinition",
            "Properties": {
                "Family": f"{names.prefix}-dispatch",
                "RequiresCompatibilities": ["FARGATE"],
                "NetworkMode": "awsvpc",
                # The serving process and one tick's subprocess (Prefect, boto3): ~0.5 GB.
                "Cpu": "512",
                "Memory": "1024",
                "TaskRoleArn": get_att(FLOWS_TASK_ROLE, "Arn"),
                "ExecutionRoleArn": get_att(FLOWS_EXECUTION_ROLE, "Arn"),
                "ContainerDefinitions": [
                    {
                        "Name": "dispatch",
                        "Image": flows_image(config),
                        "Essential": True,
                        "Command": command,
                        "Environment": [
                            *environment,
                            {"Name": "AWS_DEFAULT_REGION", "Value": ref("AWS::Region")},
                            {"Name": "ALERTS_TOPIC_ARN", "Value": ref("AlertsTopic")},
                        ],
                        "Secrets": secrets,
                        "LogConfiguration": {
                            "LogDriver": "awslogs",
                            "Options": {
                                "awslogs-group": names.flows_log_group,
                                "awslogs-region": ref("AWS::Region"),
                                "awslogs-stream-prefix": "dispatch",
                            },
                        },
                    }
                ],
                "Tags": tag_list(config),
            },
        },
        DISPATCH_SERVICE: _service(
            f"{names.prefix}-dispatch", ref(f"{DISPATCH_SERVICE}TaskDefinition")
        ),
    }


def flows_runtime_resources(config: StackConfig, queues: Queues) -> Json:
    names = config.names
    execution_statements = [
        statement(
            ["logs:CreateLogStream", "logs:PutLogEvents"],
            [arn("logs", f"log-group:{names.flows_log_group}:*")],
        ),
        statement(
            ["ecr:BatchCheckLayerAvailability", "ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer"],
            [get_att(FLOWS_REPOSITORY, "Arn")],
        ),
        # GetAuthorizationToken is account-wide: it has no resource-level permission.
        statement(["ecr:GetAuthorizationToken"], ["*"]),
    ]
    if config.prefect_api_key_secret_arn:
        execution_statements.append(
            statement(["secretsmanager:GetSecretValue"], [config.prefect_api_key_secret_arn])
        )
    resources: Json = {
        FLOWS_REPOSITORY: {
            "Type": "AWS::ECR::Repository",
            "Properties": {
                "RepositoryName": names.flows_repository,
                "EmptyOnDelete": True,  # rebuilt from source: its images never block destroy
                "ImageScanningConfiguration": {"ScanOnPush": True},
                "EncryptionConfiguration": {"EncryptionType": "AES256"},
                "Tags": tag_list(config),
            },
        },
        "FlowsLogGroup": {
            "Type": "AWS::Logs::LogGroup",
            "Properties": {
                "LogGroupName": names.flows_log_group,
                "RetentionInDays": config.log_retention_days,
            },
        },
        FLOWS_TASK_ROLE: _role(
            "ecs-tasks.amazonaws.com",
            config,
            "facefleet-flows",
            flow_task_statements(config, queues),
        ),
        FLOWS_EXECUTION_ROLE: _role(
            "ecs-tasks.amazonaws.com", config, "facefleet-flows-execution", execution_statements
        ),
    }
    if config.prefect_api_url:
        resources.update(_worker_resources(config))
    return resources


def flows_outputs(config: StackConfig) -> dict[str, tuple[Any, str]]:
    values: dict[str, tuple[Any, str]] = {
        "FlowsImageUri": (flows_image(config), "the flows image (Prefect, prefect-aws, flows)"),
        "FlowsRepositoryUri": (get_att(FLOWS_REPOSITORY, "RepositoryUri"), "flows ECR repository"),
        "FlowsTaskRoleArn": (get_att(FLOWS_TASK_ROLE, "Arn"), "flow runs' task role"),
        "FlowsExecutionRoleArn": (
            get_att(FLOWS_EXECUTION_ROLE, "Arn"),
            "flow runs' execution role",
        ),
        "FlowsLogGroupName": (names_log_group(config), "flow runs' log group"),
    }
    if config.prefect_api_url:
        values["FlowsClusterName"] = (ref("FlowsCluster"), "ECS cluster of the flow runs")
    return values


def names_log_group(config: StackConfig) -> Any:
    return ref("FlowsLogGroup")
