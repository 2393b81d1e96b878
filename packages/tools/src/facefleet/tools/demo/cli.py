"""`facefleet demo`: index a demo gallery end to end on the embedded stack (see demo.run)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

STATE_DIR = Path(".facefleet/demo")
OUT_DIR = Path("out/demo")
SHARED = Path(os.environ.get("FACEFLEET_SHARED", "../shared"))
FACES_DIR = SHARED / "faces"
MODEL_PACK = SHARED / "models" / "facefleet-dev"


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("demo", help="index a demo gallery end to end, locally")
    parser.add_argument("--state-dir", type=Path, default=STATE_DIR)
    parser.add_argument("--out", type=Path, default=OUT_DIR, help="report folder")
    parser.add_argument("--faces", type=Path, default=FACES_DIR)
    parser.add_argument("--model-pack", type=Path, default=MODEL_PACK)
    parser.add_argument("--users", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds")
    parser.add_argument(
        "--keep-up", action="store_true", help="leave the local stack running afterwards"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # The flows' own INFO lines go to the Prefect UI and the serve log; here, live counts only.
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    from facefleet.tools.demo.run import DemoError, DemoOptions, run_demo

    options = DemoOptions(
        state_dir=args.state_dir,
        out_dir=args.out,
        faces_dir=args.faces,
        model_pack_dir=args.model_pack,
        users=args.users,
        timeout_s=args.timeout,
        keep_up=args.keep_up,
    )
    try:
        summary = run_demo(options)
    except DemoError as error:
        print(f"demo failed: {error}")
        return 1
    print(f"report: {summary.report}")
    print(f"RESULT {summary.line()}")
    return 0
