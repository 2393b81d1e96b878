"""Job definitions on the emulator: what moto's CloudFormation leaves out.

On AWS, changing an `AWS::Batch::JobDefinition` in the stack registers a new revision (the
resource is replaced). moto's CloudFormation reports the update complete and keeps the old
revision, so a re-provisioned embedded stack would go on running the old environment. After each
local deploy, `apply_job_definitions` registers a new revision of every job definition whose
latest revision differs from the template in the fields a stack change can move (image,
command, environment, resources, retries, timeout), as CloudFormation would have. (moto's
CloudFormation also drops the attempt timeout when it creates one, so the first local deploy
registers one revision more that carries it.)

Template values that are intrinsics (`Ref`, `Fn::GetAtt`, `Fn::Sub`) are resolved through the
stack outputs that carry the same expression (the queue URLs, the region, the image URI); the
fields no output resolves (roles, log configuration, secrets) keep the registered revision's.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from mypy_boto3_batch import BatchClient

Json = dict[str, Any]

# CloudFormation property -> Batch API field, for the fields a stack change moves.
_CONTAINER_FIELDS = {
    "Image": "image",
    "Command": "command",
    "Environment": "environment",
    "ResourceRequirements": "resourceRequirements",
}
_TOP_FIELDS = {"RetryStrategy": "retryStrategy", "Timeout": "timeout"}


class Unresolved(ValueError):
    """A template value whose intrinsic no stack output carries."""


def _camel(value: Any) -> Any:
    """CloudFormation's PascalCase property names to the Batch API's camelCase."""
    if isinstance(value, dict):
        return {k[:1].lower() + k[1:]: _camel(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_camel(v) for v in value]
    return value


def _expression(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def resolver(template_outputs: Mapping[str, Json], outputs: Mapping[str, str]) -> dict[str, str]:
    """Intrinsic expression (as JSON) -> its deployed value, from the outputs that carry it."""
    return {
        _expression(output["Value"]): outputs[key]
        for key, output in template_outputs.items()
        if key in outputs and isinstance(output.get("Value"), dict)
    }


def resolve(value: Any, known: Mapping[str, str]) -> Any:
    if isinstance(value, dict):
        if _expression(value) in known:
            return known[_expression(value)]
        if len(value) == 1 and next(iter(value)).startswith(("Ref", "Fn::")):
            raise Unresolved(_expression(value))
        return {k: resolve(v, known) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve(v, known) for v in value]
    return value


def _normal(container_or_top: Json) -> Json:
    """Comparable form: environment in name order, retry actions in Batch's lower case (the
    API takes either), everything as JSON would send it."""
    data = json.loads(json.dumps(container_or_top, sort_keys=True))
    if "environment" in data:
        data["environment"] = sorted(data["environment"], key=lambda e: e["name"])
    for rule in (data.get("retryStrategy") or {}).get("evaluateOnExit", []):
        rule["action"] = str(rule.get("action", "")).lower()
    return data


def desired(properties: Json, known: Mapping[str, str]) -> tuple[Json, Json]:
    """(container fields, top-level fields) the template asks for, in Batch API form."""
    container = properties.get("ContainerProperties", {})
    wanted_container = {
        api: _camel(resolve(container[cfn], known))
        for cfn, api in _CONTAINER_FIELDS.items()
        if cfn in container
    }
    wanted_top = {
        api: _camel(resolve(properties[cfn], known))
        for cfn, api in _TOP_FIELDS.items()
        if cfn in properties
    }
    return wanted_container, wanted_top


def apply_job_definitions(
    batch: BatchClient, template: Json, outputs: Mapping[str, str]
) -> list[str]:
    """Register a revision of each job definition the emulator left behind the template;
    return their names (empty when every latest revision already matches)."""
    known = resolver(template.get("Outputs", {}), outputs)
    registered: list[str] = []
    for resource in template["Resources"].values():
        if resource["Type"] != "AWS::Batch::JobDefinition":
            continue
        properties = resource["Properties"]
        name = properties["JobDefinitionName"]
        found = batch.describe_job_definitions(jobDefinitionName=name, status="ACTIVE")
        revisions = found.get("jobDefinitions", [])
        if not revisions:
            continue  # not created yet: CloudFormation's own job
        latest: Any = max(revisions, key=lambda d: d["revision"])
        container_wanted, top_wanted = desired(properties, known)
        # moto keeps what its CloudFormation passed through in CloudFormation's casing.
        container = _camel(dict(latest.get("containerProperties", {})))
        # moto drops a secret's `valueFrom` when it is a Ref; the local executor injects the
        # MongoDB URIs from stack.env anyway, so such entries are left out of the new revision.
        container["secrets"] = [s for s in container.get("secrets", []) if s.get("valueFrom")]
        current_container = {k: container.get(k) for k in container_wanted}
        current_top = {k: _camel(latest.get(k)) for k in top_wanted}
        if _normal(current_container) == _normal(container_wanted) and _normal(
            current_top
        ) == _normal(top_wanted):
            continue
        container.update(container_wanted)
        extra: Any = {k: latest[k] for k in ("tags", "platformCapabilities") if latest.get(k)}
        batch.register_job_definition(
            jobDefinitionName=name,
            type=latest.get("type", "container"),
            containerProperties=container,
            **top_wanted,
            **extra,
        )
        registered.append(name)
    return registered
