"""State in SSM Parameter Store, read and written one way: a String parameter per value, JSON
for a record. The dispatch cool-down, the cutover state, the router's weight and the ECS
baseline all live here; a parameter not written yet reads as None."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from facefleet.common.aws import AwsTarget


def read(aws: AwsTarget, name: str) -> str | None:
    ssm = aws.client("ssm")
    try:
        return ssm.get_parameter(Name=name)["Parameter"]["Value"]
    except ssm.exceptions.ParameterNotFound:
        return None


def write(aws: AwsTarget, name: str, value: str) -> None:
    aws.client("ssm").put_parameter(Name=name, Value=value, Type="String", Overwrite=True)


def read_json(aws: AwsTarget, name: str) -> dict[str, Any] | None:
    raw = read(aws, name)
    return None if raw is None else dict(json.loads(raw))


def write_json(aws: AwsTarget, name: str, value: Mapping[str, Any]) -> None:
    write(aws, name, json.dumps(dict(value)))
