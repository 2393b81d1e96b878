"""`facefleet flows serve`, `facefleet dispatch --once`, `facefleet cutover ...`,
`facefleet provision` and `facefleet jobs`: the flows from the command line.

Every command reads the AWS endpoint and credentials from the environment (on the embedded stack:
`source .facefleet/local/stack.env`). `--prefix` selects the stack's `Names`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from facefleet.common.names import Names


def _names(args: argparse.Namespace) -> dict[str, Any] | None:
    if args.prefix is None:
        return None
    names = Names.for_prefix(args.prefix, args.grouping_prefix)
    return {"prefix": names.prefix, "grouping_prefix": names.grouping_prefix}


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--prefix", default=None, help="Names prefix (default face-recognition)")
    parser.add_argument("--grouping-prefix", default=None)
    parser.add_argument("--region", default=None)


def _print(result: Any) -> None:
    print(json.dumps(result, indent=2, default=str))


def register(subparsers: Any) -> None:
    flows = subparsers.add_parser("flows", help="serve the Prefect deployments")
    flows.add_argument("action", choices=("serve", "list", "yaml", "deploy"))
    flows.add_argument(
        "--production",
        action="store_true",
        help="deploy: the production deployments (ECS work pool, flows image, flow task role); "
        "serve: serve dispatch/production in this process (what the stack's dispatch service "
        "runs)",
    )
    flows.add_argument(
        "--outputs",
        default=None,
        help="deploy: the stack outputs JSON (`facefleet infra apply --out`); else read the stack",
    )
    flows.add_argument("--subnet-ids", default="", help="deploy: subnets of the flow run tasks")
    flows.add_argument("--image", default=None, help="deploy: override FlowsImageUri")
    flows.add_argument("--out", default=None, help="yaml: write prefect.yaml here (else stdout)")
    flows.add_argument("--mode", choices=("local", "aws"), default="local")
    flows.add_argument("--dispatch-interval", type=int, default=60, help="seconds")
    flows.add_argument("--cutover-interval", type=int, default=10, help="minutes")
    flows.add_argument(
        "--no-cutover-schedule",
        action="store_true",
        help="register the cutover deployment without its schedule",
    )
    flows.add_argument("--local-batch-dir", default=None)
    _common(flows)
    flows.set_defaults(func=run_flows)

    dispatch = subparsers.add_parser("dispatch", help="run one dispatch tick")
    dispatch.add_argument("--once", action="store_true", help="one tick (the default)")
    dispatch.add_argument("--mode", choices=("local", "aws"), default="local")
    dispatch.add_argument(
        "--lambda",
        dest="use_lambda",
        action="store_true",
        help="run the fallback Lambda handler in-process instead of the flow",
    )
    dispatch.add_argument("--local-batch-dir", default=None)
    _common(dispatch)
    dispatch.set_defaults(func=run_dispatch)

    cutover = subparsers.add_parser("cutover", help="gradual ECS -> Batch cutover")
    cutover.add_argument(
        "action", choices=("status", "step", "rollback", "pause", "resume", "move-ecs-queue")
    )
    cutover.add_argument("--reason", default=None)
    cutover.add_argument("--json", action="store_true", help="status: machine-readable")
    cutover.add_argument("--ecs-cluster", default=None, help="the existing ECS service's cluster")
    cutover.add_argument("--ecs-service", default=None, help="the existing ECS service")
    cutover.add_argument(
        "--back", action="store_true", help="move-ecs-queue: undo, to the queue read before"
    )
    cutover.add_argument("--back-to", default=None, help="move-ecs-queue: undo, to this URL")
    cutover.add_argument(
        "--task-role-granted",
        action="store_true",
        help="move-ecs-queue: the task role's owner has added the printed policy (a role this "
        "account may not change); the router is then enabled",
    )
    _common(cutover)
    cutover.set_defaults(func=run_cutover)

    provision = subparsers.add_parser("provision", help="deploy the stack and its dashboards")
    provision.add_argument(
        "--production",
        action="store_true",
        help="not the embedded stack: --config gives the StackConfig fields",
    )
    provision.add_argument("--config", default=None, help="JSON file of StackConfig fields")
    provision.add_argument("--no-dashboards", action="store_true")
    _common(provision)
    provision.set_defaults(func=run_provision)

    jobs = subparsers.add_parser("jobs", help="local executor jobs (embedded stack)")
    jobs.add_argument("action", choices=("list", "stop"), nargs="?", default="list")
    jobs.add_argument("--local-batch-dir", default=None)
    jobs.set_defaults(func=run_jobs)


def run_flows(args: argparse.Namespace) -> int:
    from facefleet.flows.deployments import build, prefect_yaml, serve_all

    if args.action == "yaml":
        text = prefect_yaml()
        if args.out:
            Path(args.out).write_text(text)
            print(f"wrote {args.out}")
        else:
            print(text, end="")
        return 0
    if args.action == "deploy":
        return deploy_flows(args)
    if args.action == "serve" and args.production:
        from facefleet.flows.production import serve_production

        serve_production(_names(args), dispatch_interval_s=args.dispatch_interval)
        return 0
    deployments = build(
        _names(args),
        mode=args.mode,
        dispatch_interval_s=args.dispatch_interval,
        cutover_interval_min=args.cutover_interval,
        local_batch_dir=args.local_batch_dir,
        cutover_schedule=not args.no_cutover_schedule,
    )
    if args.action == "list":
        for deployment in deployments:
            print(f"{deployment.flow_name}/{deployment.name}")
        return 0
    serve_all(deployments)
    return 0


def deploy_flows(args: argparse.Namespace) -> int:
    """Register the production deployments (the local ones are `serve`d or `prefect deploy`ed
    from prefect.yaml)."""
    from dataclasses import replace

    from facefleet.flows.production import ProductionRuntime, deploy_production

    if not args.production:
        print("error: `flows deploy` registers the production deployments: add --production")
        return 2
    if args.outputs:
        outputs = json.loads(Path(args.outputs).read_text())
        outputs = outputs.get("outputs", outputs)
    else:
        from facefleet.common.aws import AwsTarget

        names = Names.from_params(_names(args))
        stacks = (
            AwsTarget.from_env(region=args.region)
            .client("cloudformation")
            .describe_stacks(StackName=names.stack_name)["Stacks"]
        )
        outputs = {o["OutputKey"]: o["OutputValue"] for o in stacks[0].get("Outputs", [])}
    runtime = ProductionRuntime.from_outputs(
        outputs, subnets=tuple(s for s in args.subnet_ids.split(",") if s)
    )
    if args.image:
        runtime = replace(runtime, image=args.image)
    _print(deploy_production(runtime, _names(args)))
    print("dispatch/production: served by the stack's dispatch service", file=sys.stderr)
    return 0


def run_dispatch(args: argparse.Namespace) -> int:
    if args.use_lambda:
        from facefleet.control.lambda_dispatch import handler

        if args.prefix:
            os.environ["FACEFLEET_PREFIX"] = args.prefix
        _print(handler({"names": _names(args)} if args.prefix else {}, None))
        return 0
    from facefleet.flows.dispatch import dispatch

    _print(
        dispatch(
            names=_names(args),
            mode=args.mode,
            region=args.region,
            local_batch_dir=args.local_batch_dir,
        )
    )
    return 0


def run_cutover(args: argparse.Namespace) -> int:
    from facefleet.flows import cutover

    names = _names(args)
    if args.action in ("status", "move-ecs-queue"):
        from facefleet.tools import cutover_cli

        the_names = Names.from_params(names)
        if args.action == "status":
            return cutover_cli.status(args, the_names)
        return cutover_cli.move(args, the_names)
    common = {"names": names, "region": args.region}
    if args.action == "step":
        _print(
            cutover.cutover(ecs_cluster=args.ecs_cluster, ecs_service=args.ecs_service, **common)
        )
    elif args.action == "rollback":
        _print(cutover.rollback_flow(reason=args.reason or "manual rollback", **common))
    elif args.action == "pause":
        _print(cutover.pause_flow(reason=args.reason or "paused by operator", **common))
    else:
        _print(cutover.resume_flow(**common))
    return 0


def run_provision(args: argparse.Namespace) -> int:
    from facefleet.flows.provisioning import provision

    config = None
    if args.config:
        with open(args.config) as handle:
            config = json.load(handle)
    _print(
        provision(
            names=_names(args),
            local=not args.production,
            config=config,
            with_dashboards=not args.no_dashboards,
            region=args.region,
        )
    )
    return 0


def run_jobs(args: argparse.Namespace) -> int:
    from facefleet.embedded.batch import LocalExecutor

    executor = LocalExecutor(args.local_batch_dir)
    if args.action == "stop":
        executor.terminate()
    for child in executor.children():
        index = "" if child.index is None else f"[{child.index}]"
        print(
            f"{child.job_id}{index:6} {child.kind:9} {child.status:9} attempt {child.attempt}"
            f"  exit {list(child.exit_codes)}  log {child.log}"
        )
    return 0
