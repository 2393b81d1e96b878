"""The production rendering (ap-south-1, existing queues in two other accounts) against what AWS
enforces at deploy time and moto does not check: cfn-lint's AWS resource specs for the region,
the launch template (IMDSv2, hop limit, root volume, ECS agent settings), the AL2023 NVIDIA image
type, compute environments that CloudFormation can replace, and a dispatcher that needs no
reserved concurrency.

Proven here: the template's content and cfn-lint's schema checks. Only a real account proves
that Batch accepts ECS_AL2023_NVIDIA in the region, that the instances join the cluster with this
user data, and the account's Spot quota (`facefleet infra doctor` checks the quota).
"""

from __future__ import annotations

import base64
from dataclasses import replace
from typing import Any

from facefleet.common.config import Settings
from facefleet.infra import deploy, lambda_package, template
from facefleet.infra.template.batch import compute_environment_name, ecs_agent_settings
from tests.contract.conftest import PRODUCTION, PRODUCTION_REGION


def _rendered(config: Any = PRODUCTION) -> dict[str, Any]:
    return template.render(config, lambda_package.build())


def _of_type(rendered: dict[str, Any], kind: str) -> dict[str, Any]:
    return {k: v["Properties"] for k, v in rendered["Resources"].items() if v["Type"] == kind}


def test_cfn_lint_accepts_the_production_rendering_for_ap_south_1() -> None:
    errors, _ = deploy.lint(template.to_json(_rendered()), PRODUCTION_REGION)
    assert errors == []


def test_launch_template_requires_imdsv2_with_room_for_the_container() -> None:
    (data,) = (
        p["LaunchTemplateData"] for p in _of_type(_rendered(), "AWS::EC2::LaunchTemplate").values()
    )
    metadata = data["MetadataOptions"]
    assert metadata["HttpTokens"] == "required"
    # The worker reads the Spot notice from a container: one hop more than the instance.
    assert metadata["HttpPutResponseHopLimit"] == 2
    (root,) = data["BlockDeviceMappings"]
    assert root["DeviceName"] == "/dev/xvda" and root["Ebs"]["VolumeSize"] >= 100
    assert root["Ebs"]["VolumeType"] == "gp3" and root["Ebs"]["Encrypted"]


def test_user_data_is_mime_multipart_with_the_ecs_agent_settings() -> None:
    (data,) = (
        p["LaunchTemplateData"] for p in _of_type(_rendered(), "AWS::EC2::LaunchTemplate").values()
    )
    text = data["UserData"]["Fn::Base64"]
    assert text.startswith("MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=")
    base64.b64encode(text.encode())  # plain ASCII, as Fn::Base64 needs
    settings = ecs_agent_settings(PRODUCTION)
    for key, value in settings.items():
        assert f"{key}={value}" in text
    stop_s = int(settings["ECS_CONTAINER_STOP_TIMEOUT"].rstrip("s"))
    # SIGTERM to SIGKILL covers the worker's drain and ends inside the two-minute notice.
    assert Settings().shutdown_deadline_seconds < stop_s < 120


def test_compute_environments_use_the_launch_template_and_al2023() -> None:
    for props in _of_type(_rendered(), "AWS::Batch::ComputeEnvironment").values():
        resources = props["ComputeResources"]
        assert resources["Ec2Configuration"] == [{"ImageType": "ECS_AL2023_NVIDIA"}]
        assert resources["LaunchTemplate"] == {
            "LaunchTemplateId": {"Ref": "WorkerLaunchTemplate"},
            "Version": {"Fn::GetAtt": ["WorkerLaunchTemplate", "LatestVersionNumber"]},
        }


def test_compute_environments_are_replaceable() -> None:
    """A change CloudFormation can only make by replacement (Tags) renames the environment, so
    the replacement is not refused; in-place changes keep the name."""
    before = _of_type(_rendered(), "AWS::Batch::ComputeEnvironment")
    retagged = _of_type(
        _rendered(replace(PRODUCTION, tags={"project": "facefleet", "team": "faces"})),
        "AWS::Batch::ComputeEnvironment",
    )
    resized = _of_type(
        _rendered(replace(PRODUCTION, names=replace(PRODUCTION.names, secondary_max_vcpus=512))),
        "AWS::Batch::ComputeEnvironment",
    )
    for logical_id, props in before.items():
        assert props["ReplaceComputeEnvironment"] is False
        assert props["UpdatePolicy"]["TerminateJobsOnUpdate"] is False
        assert retagged[logical_id]["ComputeEnvironmentName"] != props["ComputeEnvironmentName"]
        assert resized[logical_id]["ComputeEnvironmentName"] == props["ComputeEnvironmentName"]
    queues = _of_type(_rendered(), "AWS::Batch::JobQueue")
    for props in queues.values():
        for order in props["ComputeEnvironmentOrder"]:
            assert set(order["ComputeEnvironment"]) == {"Ref"}  # follows a replacement
    names = {compute_environment_name(s, PRODUCTION) for s in PRODUCTION.names.compute_environments}
    assert names == {p["ComputeEnvironmentName"] for p in before.values()}
