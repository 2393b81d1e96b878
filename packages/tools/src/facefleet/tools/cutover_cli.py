"""`facefleet cutover status|move-ecs-queue` (registered with the other cutover actions in
`flows_cli`): where the gradual cutover stands, and the ECS service's queue move.

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

from facefleet.common.aws import AwsTarget
from facefleet.common.config import Names


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


def status(args: argparse.Namespace, names: Names) -> int:
    from facefleet.control.cutover import effects
    from facefleet.control.cutover import status as cutover_status

    aws = AwsTarget.from_env(region=args.region)
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


def move(args: argparse.Namespace, names: Names) -> int:
    from facefleet.control.cutover import effects

    if not (args.ecs_cluster and args.ecs_service):
        print("error: move-ecs-queue needs --ecs-cluster and --ecs-service")
        return 2
    aws = AwsTarget.from_env(region=args.region)
    target = (
        args.back_to
        or aws.client("sqs").get_queue_url(QueueName=names.ecs_indexing_queue)["QueueUrl"]
    )
    previous = effects.move_ecs_queue(args.ecs_cluster, args.ecs_service, target, aws)
    print(f"{args.ecs_service} reads {target} (was {previous or 'unset'})")
    if not args.back_to and previous and previous != target:
        print(f"undo: facefleet cutover move-ecs-queue ... --back-to {previous}")
    return 0
