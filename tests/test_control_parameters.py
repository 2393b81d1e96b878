"""State in SSM written one way, and the cutover weight stored once (moto server)."""

from __future__ import annotations

from facefleet.control import parameters
from facefleet.control.cutover import effects
from facefleet.control.cutover.machine import CutoverState
from facefleet.control.router import read_weight, write_weight


def test_the_cutover_weight_is_stored_once(env) -> None:
    names, aws = env.names, env.aws
    effects.save_state(names, CutoverState(weight=10, entered_at_s=5.0, reason="started"), aws)
    record = parameters.read_json(aws, effects.state_parameter(names))
    assert record is not None and "weight" not in record
    assert read_weight(names, aws) == 10
    # Whatever moved the router's weight (a rollback, an operator), the cutover reads it.
    write_weight(names, 0, 0, aws)
    loaded = effects.load_state(names, aws)
    assert (loaded.weight, loaded.entered_at_s, loaded.reason) == (0, 5.0, "started")


def test_a_parameter_not_written_reads_as_none(env) -> None:
    name = f"/facefleet/{env.names.prefix}/test/absent"
    assert parameters.read(env.aws, name) is None
    parameters.write_json(env.aws, name, {"a": 1})
    assert parameters.read_json(env.aws, name) == {"a": 1}
