"""Every subnet has a way out: a default route to a gateway, or every VPC endpoint a container
instance needs."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from botocore.exceptions import ClientError

from facefleet.common.aws import AwsTarget
from facefleet.infra.doctor.check import Check, _error
from facefleet.infra.stack_config import StackConfig

# What a container instance and its jobs reach when a subnet has no default route out (Amazon
# ECS developer guide, "Amazon ECS interface VPC endpoints": ecs, ecs-agent, ecs-telemetry for
# the agent; ECR API and Docker endpoints plus the S3 gateway for image layers; logs for the
# awslogs driver; secretsmanager for injected secrets) and what the workers call (sqs, and
# monitoring for their metrics). Without them an instance never joins: jobs sit RUNNABLE.
INTERFACE_ENDPOINTS = (
    "ecs",
    "ecs-agent",
    "ecs-telemetry",
    "ecr.api",
    "ecr.dkr",
    "logs",
    "secretsmanager",
    "sqs",
    "monitoring",
)
GATEWAY_ENDPOINTS = ("s3",)


def subnets_route_out(config: StackConfig, aws: AwsTarget) -> list[Check]:
    if not config.subnet_ids:
        return [Check("subnets", False, "no subnets given: pass --subnet-ids")]
    ec2 = aws.client("ec2")
    checks = []
    try:
        subnets = {
            s["SubnetId"]: s
            for s in ec2.describe_subnets(SubnetIds=list(config.subnet_ids))["Subnets"]
        }
    except ClientError as error:
        return [Check("subnets", False, f"cannot describe {config.subnet_ids}: {_error(error)}")]
    for subnet_id in config.subnet_ids:
        name = f"subnet {subnet_id} route out"
        subnet = subnets.get(subnet_id)
        if subnet is None:
            checks.append(Check(name, False, "not found in this region"))
            continue
        vpc_id = subnet["VpcId"]
        tables = ec2.describe_route_tables(
            Filters=[{"Name": "association.subnet-id", "Values": [subnet_id]}]
        )["RouteTables"] or [
            t
            for t in ec2.describe_route_tables(Filters=[{"Name": "vpc-id", "Values": [vpc_id]}])[
                "RouteTables"
            ]
            if any(a.get("Main") for a in t.get("Associations", []))
        ]
        routes = [r for t in tables for r in t.get("Routes", [])]
        default = [
            r
            for r in routes
            if r.get("DestinationCidrBlock") == "0.0.0.0/0"
            and r.get("State", "active") == "active"
            and (
                r.get("GatewayId", "").startswith("igw-")
                or r.get("NatGatewayId")
                or r.get("TransitGatewayId")
                or r.get("NetworkInterfaceId")
            )
        ]
        if default:
            via = default[0].get("NatGatewayId") or default[0].get("GatewayId") or "a gateway"
            checks.append(Check(name, True, f"default route via {via}"))
            continue
        endpoints = ec2.describe_vpc_endpoints(Filters=[{"Name": "vpc-id", "Values": [vpc_id]}])[
            "VpcEndpoints"
        ]
        missing = missing_endpoints(
            endpoints, aws.region, {t["RouteTableId"] for t in tables if "RouteTableId" in t}
        )
        if missing:
            checks.append(
                Check(
                    name,
                    False,
                    "no default route to an internet or NAT gateway, and no VPC endpoint for "
                    f"{', '.join(missing)}: add a NAT gateway route or those endpoints "
                    "(container instances never join the cluster without them: jobs sit "
                    "RUNNABLE; MongoDB needs a path too)",
                )
            )
        else:
            every = INTERFACE_ENDPOINTS + GATEWAY_ENDPOINTS
            checks.append(Check(name, True, "VPC endpoints for " + ", ".join(every)))
    return checks


def missing_endpoints(
    endpoints: Iterable[Mapping[str, Any]], region: str, route_tables: set[str]
) -> list[str]:
    """The services of INTERFACE_ENDPOINTS / GATEWAY_ENDPOINTS with no usable endpoint: an
    interface endpoint that is not failed, or a gateway endpoint on one of `route_tables`."""
    have: set[str] = set()
    for endpoint in endpoints:
        if endpoint.get("State", "available").lower() in ("failed", "deleted", "rejected"):
            continue
        service = endpoint["ServiceName"].split(f"{region}.", 1)[-1]
        if endpoint.get("VpcEndpointType", "Interface") == "Gateway":
            if route_tables & set(endpoint.get("RouteTableIds", [])):
                have.add(f"gateway:{service}")
        else:
            have.add(service)
    missing = [s for s in INTERFACE_ENDPOINTS if s not in have]
    missing += [f"{s} (gateway)" for s in GATEWAY_ENDPOINTS if f"gateway:{s}" not in have]
    return missing
