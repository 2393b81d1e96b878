"""What AWS Batch needs of the account: the G Spot vCPU quota and its service-linked role."""

from __future__ import annotations

from botocore.exceptions import BotoCoreError, ClientError

from facefleet.common.aws import AwsTarget
from facefleet.infra.doctor.check import Check, _error
from facefleet.infra.stack_config import StackConfig
from facefleet.infra.template.batch import BATCH_SERVICE_LINKED_ROLE

G_SPOT_QUOTA = ("ec2", "L-3819A6DF")  # All G and VT Spot Instance Requests (vCPUs)


def spot_quota(config: StackConfig, aws: AwsTarget) -> Check:
    wanted = sum(env.max_vcpus for env in config.names.compute_environments)
    smallest = max(spec.vcpus for spec in config.names.job_definitions)
    name = "Spot vCPU quota (G instances)"
    try:
        quota = aws.client("service-quotas").get_service_quota(
            ServiceCode=G_SPOT_QUOTA[0], QuotaCode=G_SPOT_QUOTA[1]
        )["Quota"]
        value = float(quota["Value"])
    except (ClientError, BotoCoreError, KeyError) as error:
        return Check(
            name,
            False,
            f"could not read quota {G_SPOT_QUOTA[1]} ({_error(error)}): check it in the Service "
            f"Quotas console for {aws.region}; the compute environments may use {wanted} vCPUs",
        )
    if value < smallest:
        return Check(
            name,
            False,
            f"{value:.0f} vCPUs: no job can start; request at least {wanted} "
            f"(Service Quotas, EC2, {G_SPOT_QUOTA[1]})",
        )
    if value < wanted:
        return Check(
            name,
            False,
            f"{value:.0f} vCPUs of the {wanted} the compute environments may use: request "
            f"{wanted} (EC2 {G_SPOT_QUOTA[1]}), or lower the environments' max vCPUs",
        )
    return Check(name, True, f"{value:.0f} vCPUs (the environments may use {wanted})")


def batch_service_linked_role(aws: AwsTarget) -> Check:
    name = "Batch service-linked role"
    try:
        aws.client("iam").get_role(RoleName=BATCH_SERVICE_LINKED_ROLE)
    except ClientError as error:
        if error.response.get("Error", {}).get("Code") != "NoSuchEntity":
            raise
        return Check(
            name,
            True,
            f"{BATCH_SERVICE_LINKED_ROLE} absent: apply creates it (the deploying identity needs "
            "iam:CreateServiceLinkedRole for batch.amazonaws.com)",
        )
    return Check(name, True, f"{BATCH_SERVICE_LINKED_ROLE} exists")
