"""Every job definition fits every instance type its job queues may launch: vCPU, GPU and memory
below what ECS registers (the instance facts table, `facefleet.common.instances`).

Proven here: the rendered requests against the table. Only a real instance proves the table's
registered-memory figure (`aws ecs describe-container-instances`, registeredResources).
"""

from __future__ import annotations

from typing import Any

import pytest

from facefleet.common.instances import GPU_INSTANCES, INSTANCES, SECONDARY_INSTANCE_TYPES, fits
from facefleet.common.names import NAMES
from facefleet.control import pricing
from facefleet.infra import template
from tests.contract.conftest import PRODUCTION


def _rendered() -> dict[str, Any]:
    return template.render(PRODUCTION)


def _of_type(rendered: dict[str, Any], kind: str) -> dict[str, Any]:
    return {k: v["Properties"] for k, v in rendered["Resources"].items() if v["Type"] == kind}


def _allowed_types(rendered: dict[str, Any]) -> set[str]:
    types: set[str] = set()
    for props in _of_type(rendered, "AWS::Batch::ComputeEnvironment").values():
        types |= set(props["ComputeResources"]["InstanceTypes"])
    return types


def test_every_allowed_type_is_in_the_facts_table() -> None:
    assert _allowed_types(_rendered()) <= set(INSTANCES)


@pytest.mark.parametrize("facts", GPU_INSTANCES, ids=lambda f: f.instance_type)
def test_job_definitions_fit(facts: Any) -> None:
    rendered = _rendered()
    assert facts.instance_type in _allowed_types(rendered)
    for name, props in _of_type(rendered, "AWS::Batch::JobDefinition").items():
        wanted = {
            r["Type"]: int(r["Value"]) for r in props["ContainerProperties"]["ResourceRequirements"]
        }
        problems = fits(
            facts, vcpus=wanted["VCPU"], memory_mib=wanted["MEMORY"], gpus=wanted["GPU"]
        )
        assert not problems, f"{name}: {problems}"


def test_the_old_full_memory_request_would_never_be_placed() -> None:
    """The plan's 16384 MiB on a 16 GiB g4dn.xlarge: more than ECS registers."""
    assert fits(INSTANCES["g4dn.xlarge"], vcpus=4, memory_mib=16384, gpus=1)


def test_secondary_environment_is_diversified_from_the_table() -> None:
    rendered = _rendered()
    environments = _of_type(rendered, "AWS::Batch::ComputeEnvironment")
    secondary = environments["SecondaryComputeEnvironment"]["ComputeResources"]
    assert secondary["AllocationStrategy"] == "SPOT_PRICE_CAPACITY_OPTIMIZED"
    assert secondary["InstanceTypes"] == list(SECONDARY_INSTANCE_TYPES)
    assert {"g4dn.xlarge", "g4dn.2xlarge", "g5.xlarge", "g6.xlarge"} <= set(
        secondary["InstanceTypes"]
    )
    assert NAMES.secondary_environment.instance_types == SECONDARY_INSTANCE_TYPES


def test_simulator_prices_read_the_same_list() -> None:
    assert set(pricing.SPOT_PER_H) == set(SECONDARY_INSTANCE_TYPES)
    mean = pricing.diversified_spot_per_h(NAMES.secondary_environment.instance_types)
    assert min(pricing.SPOT_PER_H.values()) <= mean <= max(pricing.SPOT_PER_H.values())
