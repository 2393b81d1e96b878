"""The worker network: VPC and subnet parameters and the worker security group."""

from __future__ import annotations

from typing import Any

from facefleet.infra.stack_config import StackConfig
from facefleet.infra.template.base import Json, get_att, ref, tag_list


def network_template(config: StackConfig) -> tuple[Json, Json]:
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


def security_groups(config: StackConfig) -> Any:
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
