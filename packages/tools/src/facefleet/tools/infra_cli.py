"""`facefleet infra render|plan|apply|destroy`: the stack from the command line.

    facefleet infra render --out template.json
    facefleet infra plan  --vpc-id vpc-0abc --subnet-ids subnet-1,subnet-2
    facefleet infra apply --vpc-id vpc-0abc --subnet-ids subnet-1,subnet-2 --out outputs.json
    facefleet infra apply --local      # the embedded moto stack (AWS_ENDPOINT_URL)
    facefleet infra destroy
    facefleet infra doctor --vpc-id vpc-0abc --subnet-ids subnet-1,subnet-2 \
        --indexing-queue https://sqs.../ve-inhouse-indexing   # read-only preflight

MongoDB URIs are read from GALLERY_IMAGES_MONGO_URI / HUEMN_MONGO_URI (never flags: they hold
credentials and flags end up in shell history); on an existing stack, leave them unset to keep
the secrets' current values.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from facefleet.common.aws import AwsTarget
from facefleet.common.names import NAMES, Names
from facefleet.infra import deploy, template
from facefleet.infra.stack_config import StackConfig, StackConfigError, worker_environment


def _aws(args: argparse.Namespace) -> AwsTarget:
    return AwsTarget.from_env(region=args.region, endpoint_url=args.endpoint_url)


def _csv(value: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in value.split(",") if item.strip())


def _names(args: argparse.Namespace) -> Names:
    names = Names.for_prefix(args.prefix)
    if args.stack_name:
        names = replace(names, stack_name=args.stack_name)
    return names


def build_config(args: argparse.Namespace) -> StackConfig:
    """The StackConfig the flags describe (local defaults with --local)."""
    values: dict[str, Any] = {}
    for flag in (
        "vpc_id",
        "indexing_queue",
        "group_face_queue",
        "gallery_bucket",
        "face_group_bucket",
        "model_bucket",
        "image_tag",
        "image_uri",
        "max_receive_count",
        "alert_email",
        "artifact_bucket",
        "dispatch_schedule",
        "gallery_mongo_secret_arn",
        "huemn_mongo_secret_arn",
        "ingress_queue",
        "flows_image_tag",
        "prefect_api_url",
        "prefect_api_key_secret_arn",
        "ecs_service_arn",
    ):
        value = getattr(args, flag)
        if value is not None:
            values[flag] = value
    if args.subnet_ids:
        values["subnet_ids"] = _csv(args.subnet_ids)
    if args.security_group_ids:
        values["security_group_ids"] = _csv(args.security_group_ids)
    if args.fallback_dispatcher:
        values["fallback_dispatcher"] = True
    return StackConfig.from_env(_names(args), _aws(args), local=args.local, overrides=values)


def _write(path: str | None, text: str) -> None:
    if path:
        Path(path).write_text(text + "\n")
        print(f"wrote {path}", file=sys.stderr)
    else:
        print(text)


def _render(args: argparse.Namespace) -> int:
    body = template.to_json(template.render(build_config(args)))
    errors, warnings = deploy.lint(body, _aws(args).region)
    for line in errors + warnings:
        print(f"cfn-lint: {line}", file=sys.stderr)
    _write(args.out, body)
    return 1 if errors else 0


def _plan(args: argparse.Namespace) -> int:
    config = build_config(args)
    result = deploy.plan(config, _aws(args))
    print(result.summary())
    if args.out:
        Path(args.out).write_text(result.template_body + "\n")
        print(f"wrote {args.out}", file=sys.stderr)
    return 0


def _apply(args: argparse.Namespace) -> int:
    config = build_config(args)
    result = deploy.plan(config, _aws(args))
    print(result.summary())
    outputs = deploy.apply(config, _aws(args), plan=result)
    text = json.dumps(
        {"outputs": outputs, "worker_environment": worker_environment(outputs)},
        indent=2,
        sort_keys=True,
    )
    _write(args.out, text)
    return 0


def _doctor(args: argparse.Namespace) -> int:
    from facefleet.infra import doctor

    config = build_config(args)
    config.validate()
    checks = doctor.run(config, _aws(args))
    todo = [c for c in checks if not c.ok]
    print(f"{len(checks) - len(todo)} ok, {len(todo)} to do")
    return 1 if todo else 0


def _destroy(args: argparse.Namespace) -> int:
    config = StackConfig(names=_names(args))
    deleted = deploy.destroy(config, _aws(args))
    print(f"stack {config.names.stack_name}: {'deleted' if deleted else 'not found'}")
    return 0


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--region", help="default: AWS_DEFAULT_REGION, else us-east-1")
    parser.add_argument(
        "--endpoint-url",
        help="AWS endpoint override (default: AWS_ENDPOINT_URL; the moto server)",
    )
    parser.add_argument("--prefix", help=f"resource-name prefix (default {NAMES.prefix})")
    parser.add_argument("--stack-name", help=f"stack name (default {NAMES.stack_name})")
    parser.add_argument("--out", help="write the template (render/plan) or outputs (apply) here")


def _config_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--local",
        action="store_true",
        help="embedded moto stack: default VPC/subnets, local buckets",
    )
    parser.add_argument("--vpc-id")
    parser.add_argument("--subnet-ids", help="comma-separated subnet ids")
    parser.add_argument("--security-group-ids", help="extra security groups, comma-separated")
    parser.add_argument("--indexing-queue", help="existing indexing queue URL or ARN")
    parser.add_argument("--group-face-queue", help="existing GroupFace queue URL or ARN")
    parser.add_argument("--gallery-bucket")
    parser.add_argument("--face-group-bucket")
    parser.add_argument("--model-bucket")
    parser.add_argument("--image-tag")
    parser.add_argument("--image-uri")
    parser.add_argument("--max-receive-count", type=int)
    parser.add_argument("--alert-email")
    parser.add_argument("--gallery-mongo-secret-arn")
    parser.add_argument("--huemn-mongo-secret-arn")
    parser.add_argument(
        "--ingress-queue",
        help="the queue producers write to (the existing service's), URL or ARN: the router's",
    )
    parser.add_argument("--flows-image-tag", help="tag of the flows image (default latest)")
    parser.add_argument("--prefect-api-url", help="run the Prefect ECS worker against this API")
    parser.add_argument("--prefect-api-key-secret-arn", help="Secrets Manager ARN of the API key")
    parser.add_argument("--ecs-service-arn", help="the existing ECS service (final scale-down)")
    parser.add_argument(
        "--fallback-dispatcher",
        action="store_true",
        help="create the dispatch Lambda and its schedule",
    )
    parser.add_argument("--dispatch-schedule", help="e.g. 'rate(1 minute)'")
    parser.add_argument("--artifact-bucket", help="bucket for the Lambda zip")


def _reported(name: str, handler: Callable[[argparse.Namespace], int]) -> Any:
    """`handler`, with bad input or an AWS refusal ending as one error line (exit 2), never a
    traceback: the line names the problem (StackConfigError names each bad field)."""

    def run(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        except (StackConfigError, deploy.DeployError, ClientError, BotoCoreError) as error:
            print(f"facefleet infra {name}: error: {error}", file=sys.stderr)
            return 2

    return run


def register(subparsers: Any) -> None:
    infra = subparsers.add_parser(
        "infra",
        help="render/plan/apply/destroy the AWS stack",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = infra.add_subparsers(dest="infra_command", required=True)
    for name, handler, helptext in (
        ("render", _render, "print (or --out) the template JSON, cfn-linted"),
        ("plan", _plan, "render, validate and show the change set"),
        ("apply", _apply, "plan and execute; print the stack outputs"),
        ("destroy", _destroy, "delete the stack"),
        ("doctor", _doctor, "read-only preflight: quota, network, secrets, queues, image"),
    ):
        parser = actions.add_parser(name, help=helptext)
        _common(parser)
        if name != "destroy":
            _config_flags(parser)
        parser.set_defaults(func=_reported(name, handler))
