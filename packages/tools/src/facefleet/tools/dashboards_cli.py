"""`facefleet dashboards apply|remove|render|export|runbook|savings`."""

from __future__ import annotations

import argparse
import dataclasses
import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from facefleet.common.aws import AwsTarget
from facefleet.common.config import Settings
from facefleet.common.names import Names

DEFAULT_PNG = Path(".facefleet/dashboard.png")
DEFAULT_EXPORT = Path(".facefleet/cloudwatch")


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "dashboards", help="CloudWatch dashboard, alarms and the Spot savings job"
    )
    parser.add_argument(
        "action", choices=("apply", "remove", "render", "export", "runbook", "savings")
    )
    parser.add_argument("--prefix", default=Names.prefix, help="resource name prefix")
    parser.add_argument(
        "--namespace",
        default=Names.metrics_namespace,
        help="CloudWatch namespace of FaceFleet metrics",
    )
    parser.add_argument("--region", help="default: AWS_DEFAULT_REGION")
    parser.add_argument("--endpoint-url", help="default: AWS_ENDPOINT_URL (the moto server)")
    parser.add_argument("--topic-arn", help="alerts topic (apply: looked up by name if omitted)")
    parser.add_argument("--account-id", help="export: builds the topic ARN without --topic-arn")
    parser.add_argument(
        "--out",
        type=Path,
        help=f"render: PNG path (default {DEFAULT_PNG}); export: folder "
        f"(default {DEFAULT_EXPORT}); runbook: markdown path (default stdout)",
    )
    parser.add_argument("--hours", type=float, default=3.0, help="render: time window")
    parser.add_argument("--hour", help="savings: ISO start of the hour (default: previous hour)")
    parser.add_argument("--no-publish", action="store_true", help="savings: print only")
    parser.set_defaults(func=run)


def _queues(names: Names, aws: AwsTarget, settings: Settings) -> Any:
    """The queues the alarms watch: QUEUE_URL / GROUP_FACE_QUEUE_URL, else the stack's outputs
    (with the dead-letter queues it owns); the stack-created names only when neither exists."""
    from facefleet.control import observe
    from facefleet.dashboards.alarms import AlarmQueues

    try:
        urls = observe.queue_urls(
            names, aws, indexing=settings.queue_url, group_face=settings.group_face_queue_url
        )
    except observe.QueueUrlsMissing:
        print(f"no queue URLs set and no stack {names.stack_name}: alarms on the stack's names")
        return None
    outputs: dict[str, str] = {}
    try:
        stack = aws.client("cloudformation").describe_stacks(StackName=names.stack_name)
        outputs = {o["OutputKey"]: o["OutputValue"] for o in stack["Stacks"][0].get("Outputs", [])}
    except Exception:  # no stack: no dead-letter queues of ours to watch
        outputs = {}
    return AlarmQueues.from_urls(
        urls.indexing,
        urls.group_face,
        outputs.get("IndexingQueueDeadLetterUrl"),
        outputs.get("GroupFaceQueueDeadLetterUrl"),
    )


def _names(args: argparse.Namespace) -> Names:
    return dataclasses.replace(Names.for_prefix(args.prefix), metrics_namespace=args.namespace)


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    settings = Settings.from_env()
    names = _names(args)
    aws = AwsTarget(
        args.region or settings.aws_region, args.endpoint_url or settings.aws_endpoint_url
    )
    region = aws.region
    if args.action == "apply":
        from facefleet.dashboards.apply import apply_dashboards

        queues = _queues(names, aws, settings)
        for name in apply_dashboards(names, aws, args.topic_arn, queues=queues):
            print(f"applied  {name}")
        return 0
    if args.action == "remove":
        from facefleet.dashboards.apply import remove_dashboards

        removed = remove_dashboards(names, aws, _queues(names, aws, settings))
        print("removed: " + (", ".join(removed) if removed else "nothing was there"))
        return 0
    if args.action == "export":
        from facefleet.dashboards.apply import export_cli, topic_arn_for

        if not args.topic_arn and not args.account_id:
            print("export needs --topic-arn or --account-id")
            return 2
        topic = args.topic_arn or topic_arn_for(names, region, args.account_id)
        for command in export_cli(names, region, args.out or DEFAULT_EXPORT, topic):
            print(command)
        return 0
    if args.action == "runbook":
        from facefleet.dashboards.alarms import runbook_markdown

        text = runbook_markdown(names)
        if args.out:
            args.out.write_text(text)
            print(f"wrote {args.out}")
        else:
            print(text)
        return 0
    if args.action == "render":
        from facefleet.dashboards.dashboard import build_dashboard
        from facefleet.tools.dashboard_render import render_dashboard

        end = datetime.now(UTC) + timedelta(minutes=1)
        result = render_dashboard(
            build_dashboard(names, region),
            args.out or DEFAULT_PNG,
            aws,
            start=end - timedelta(hours=args.hours),
            end=end,
        )
        print(f"wrote {result.path} ({result.panels} panels)")
        return 0
    from facefleet.dashboards.savings import run_savings_job

    hour = datetime.fromisoformat(args.hour).astimezone(UTC) if args.hour else None
    saving = run_savings_job(names, aws, hour, publish=not args.no_publish)
    print(
        f"hour {saving.hour_start:%Y-%m-%d %H:00} UTC: instance-hours "
        f"{dict(saving.instance_hours)}, Spot ${saving.spot_cost_usd:.4f}, on-demand "
        f"${saving.on_demand_cost_usd:.4f} ({saving.on_demand_source}), saving "
        f"${saving.savings_usd:.4f}, per 1000 images: {saving.cost_per_1000_images_usd}"
    )
    return 0
