"""The `facefleet` command: one entry point; each concept registers its own subcommand."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable, Sequence

# Modules that define `register(subparsers)`; each adds one subcommand with its handler as
# `func`. Imported lazily so `facefleet local status` does not pay for onnxruntime or Prefect.
COMMAND_MODULES: tuple[str, ...] = (
    "facefleet.tools.local_cli",
    "facefleet.tools.flows_cli",
    "facefleet.tools.demo.cli",
    "facefleet.tools.simulate.cli",
    "facefleet.tools.dashboards_cli",
    "facefleet.tools.people_cli",
    "facefleet.tools.quality.evaluate",
    "facefleet.tools.infra_cli",
)

Handler = Callable[[argparse.Namespace], int]


def build_parser(modules: Sequence[str] = COMMAND_MODULES) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="facefleet", description=__doc__)
    subparsers = parser.add_subparsers(dest="command", required=True)
    for module in modules:
        importlib.import_module(module).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    args = build_parser().parse_args(argv)
    handler: Handler = args.func
    return handler(args)


if __name__ == "__main__":
    sys.exit(main())
