"""Every entry point builds `Names` from a prefix by the one rule, `Names.for_prefix`."""

from __future__ import annotations

import argparse
from dataclasses import asdict

import pytest

from facefleet.common.instances import INSTANCES, PRIMARY_INSTANCE_TYPES
from facefleet.common.names import NAMES, Names
from facefleet.tools import dashboards_cli, flows_cli, infra_cli


@pytest.mark.parametrize("prefix", [NAMES.prefix, "acme"])
def test_every_entry_point_names_a_prefix_alike(prefix: str) -> None:
    expected = Names.for_prefix(prefix)
    infra = infra_cli._names(argparse.Namespace(prefix=prefix, stack_name=None))
    flows = Names.from_params(
        flows_cli._names(argparse.Namespace(prefix=prefix, grouping_prefix=None))
    )
    dashboards = dashboards_cli._names(
        argparse.Namespace(prefix=prefix, namespace=NAMES.metrics_namespace)
    )
    # What the templates give the Lambdas and the router process.
    deployed = Names.from_env(
        {"FACEFLEET_PREFIX": expected.prefix, "FACEFLEET_GROUPING_PREFIX": expected.grouping_prefix}
    )
    assert infra == flows == dashboards == deployed == expected
    assert Names.from_params(asdict(expected)) == expected


def test_own_prefix_owns_its_repository_and_grouping_prefix() -> None:
    assert Names.for_prefix(None) == Names.for_prefix(NAMES.prefix) == NAMES
    acme = Names.for_prefix("acme")
    assert (acme.grouping_prefix, acme.ecr_repository) == ("acme-grouping", "acme")
    assert acme.flows_repository == "acme-flows"
    assert Names.from_env({"FACEFLEET_PREFIX": "acme"}) == acme


def test_instance_facts_come_from_the_table() -> None:
    assert NAMES.instance_type == PRIMARY_INSTANCE_TYPES[0]
    assert NAMES.instance_vcpus == INSTANCES[NAMES.instance_type].vcpus
