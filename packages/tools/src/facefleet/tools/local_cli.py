"""`facefleet local up|down|status`: the embedded stack from the command line."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from facefleet.embedded import servers as local

DEFAULT_STATE_DIR = ".facefleet/local"


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("local", help="run the embedded local stack")
    parser.add_argument("action", choices=("up", "down", "status"))
    parser.add_argument(
        "--state-dir",
        default=DEFAULT_STATE_DIR,
        type=Path,
        help=f"folder for ports, logs and data (default {DEFAULT_STATE_DIR})",
    )
    parser.add_argument(
        "--services",
        default=",".join(local.SERVICES),
        help="comma-separated subset of " + ",".join(local.SERVICES),
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.action == "up":
        state = local.up(args.state_dir, [s for s in args.services.split(",") if s])
        for name, service in state.services.items():
            print(f"{name:8} up   127.0.0.1:{service.port}  (log {service.log})")
        print(f"environment: source {Path(state.state_dir) / local.ENV_FILE}")
        return 0
    if args.action == "down":
        stopped = local.down(args.state_dir)
        print("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))
        return 0
    health = local.status(args.state_dir)
    for name, ok in health.items():
        print(f"{name:8} {'up' if ok else 'DOWN'}")
    if not health:
        print("no stack in " + str(args.state_dir))
    return 0 if health and all(health.values()) else 1
