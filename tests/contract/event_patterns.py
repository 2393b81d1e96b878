"""EventBridge event-pattern matching as the EventBridge user guide ("Event patterns",
"Content filtering") documents it, for the rules moto cannot judge: moto stores a rule's pattern
but flattens no array of objects (a Batch event's `detail.attempts`) and does not implement
TestEventPattern.

Covered: exact values (strings, numbers), `prefix`, `$or`, nested objects, and arrays in the
event (a field inside an array, or inside an array of objects, matches when any element does).
Not covered: numeric ranges, `anything-but`, `exists`, wildcards (the stack uses none).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any


def _values(node: Any, path: list[str]) -> Iterator[Any]:
    """Every value at `path`, descending through arrays of objects and arrays of values."""
    if isinstance(node, list):
        for item in node:
            yield from _values(item, path)
        return
    if not path:
        yield node
        return
    if isinstance(node, Mapping) and path[0] in node:
        yield from _values(node[path[0]], path[1:])


def _leaf_matches(value: Any, wanted: Any) -> bool:
    if isinstance(wanted, Mapping):
        ((operator, argument),) = wanted.items()
        if operator == "prefix":
            return isinstance(value, str) and value.startswith(argument)
        raise NotImplementedError(f"filter {operator} is not modelled here")
    if isinstance(value, bool) or isinstance(wanted, bool):
        return value is wanted
    return bool(value == wanted)


def matches(pattern: Mapping[str, Any], event: Any, path: tuple[str, ...] = ()) -> bool:
    """Does `event` match `pattern`? (All fields must match; `$or` needs one branch.)"""
    for key, wanted in pattern.items():
        if key == "$or":
            if not any(matches(branch, event, path) for branch in wanted):
                return False
        elif isinstance(wanted, Mapping):
            if not matches(wanted, event, (*path, key)):
                return False
        else:
            found = list(_values(event, [*path, key]))
            if not any(_leaf_matches(v, w) for v in found for w in wanted):
                return False
    return True
