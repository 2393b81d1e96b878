"""`facefleet cutover ...`: where the gradual cutover stands, and the ECS service's queue move.

    facefleet cutover status [--json] [--ecs-cluster C --ecs-service S]
        stage, weight, time in stage, every gate with its value and thresholds, users and
        images on each side in the stage (images from the gallery database when
        GALLERY_IMAGES_MONGO_URI is set), routed messages per side, and whether the ECS
        service reads its own queue
    facefleet cutover move-ecs-queue --ecs-cluster C --ecs-service S [--back-to URL]
        the cutover's first step: point the ECS service's QUEUE_URL at the ECS queue (or,
        with --back-to, at the queue it read before: the step undone)

Uses the usual AWS environment (AWS_ENDPOINT_URL for the local stack) and FACEFLEET_PREFIX.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from facefleet.common.aws import AwsTarget
from facefleet.common.config import Names


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("cutover", help="the ECS -> Batch cutover: status, queue move")
    commands = parser.add_subparsers(dest="cutover_command", required=True)
    status = commands.add_parser("status", help="stage, weight, gates, users and images per side")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    move = commands.add_parser("move-ecs-queue", help="point the ECS service at its own queue")
    move.add_argument("--back-to", help="undo: the queue URL the service read before")
    for sub in (status, move):
        sub.add_argument("--prefix", default=os.environ.get("FACEFLEET_PREFIX", Names().prefix))
        sub.add_argument("--ecs-cluster", required=sub is move)
        sub.add_argument("--ecs-service", required=sub is move)
    status.set_defaults(func=_status)
    move.set_defaults(func=_move)


def _names(args: argparse.Namespace) -> Names:
    return Names(prefix=args.prefix)


def stage_uploads(names: Names, entered_at_s: float) -> list[tuple[str, str]]:
    """(user, image) of the images the gallery database has seen since the stage began."""
    uri = os.environ.get("GALLERY_IMAGES_MONGO_URI")
    if not uri:
        return []
    from facefleet.common.repository import GALLERY_DEFAULT_DB, connect

    database = connect(uri, GALLERY_DEFAULT_DB, 3000)
    try:
        since = int(entered_at_s * 1000)
        found = database["images"].find(
            {"updated_at": {"$gte": since}}, {"user_id": 1, "image_id": 1}
        )
        return [(d["user_id"], d["image_id"]) for d in found]
    finally:
        database.client.close()


def _status(args: argparse.Namespace) -> int:
    from facefleet.control.cutover import effects
    from facefleet.control.cutover import status as cutover_status

    names, aws = _names(args), AwsTarget.from_env()
    state = effects.load_state(names, aws)
    status = cutover_status.read_status(
        names,
        aws,
        uploads=stage_uploads(names, state.entered_at_s),
        ecs_cluster=args.ecs_cluster,
        ecs_service=args.ecs_service,
    )
    if args.json:
        print(json.dumps(cutover_status.as_dict(status), indent=1, default=str))
    else:
        print(cutover_status.render(status))
    return 0


def _move(args: argparse.Namespace) -> int:
    from facefleet.control.cutover import effects

    names, aws = _names(args), AwsTarget.from_env()
    target = (
        args.back_to
        or aws.client("sqs").get_queue_url(QueueName=names.ecs_indexing_queue)["QueueUrl"]
    )
    previous = effects.move_ecs_queue(args.ecs_cluster, args.ecs_service, target, aws)
    print(f"{args.ecs_service} reads {target} (was {previous or 'unset'})")
    if not args.back_to and previous and previous != target:
        print(f"undo: facefleet cutover move-ecs-queue ... --back-to {previous}")
    return 0
