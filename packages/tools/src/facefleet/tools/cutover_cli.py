"""`facefleet cutover status|move-ecs-queue` (registered with the other cutover actions in
`flows_cli`): where the gradual cutover stands, and the ECS service's queue move.

    facefleet cutover status [--json] [--ecs-cluster C --ecs-service S]
        stage, weight, time in stage, every gate with its value and thresholds, users and
        images on each side in the stage (images from the gallery database when
        GALLERY_IMAGES_MONGO_URI is set), routed messages per side, and whether the ECS
        service reads its own queue
    facefleet cutover move-ecs-queue --ecs-cluster C --ecs-service S [--back | --back-to URL]
                                     [--task-role-granted]
        the cutover's first step (`facefleet.control.cutover.ecs_move`): the ECS service on the
        stack's ECS queue (task definition, task role grant, scaling alarms), then the router's
        event source enabled; with --back (or --back-to URL) all of it undone. A task role this
        account may not change (another account's): the command prints the policy to add; once
        its owner has, `--task-role-granted` records that and enables the router

Uses the usual AWS environment (AWS_ENDPOINT_URL for the local stack) and FACEFLEET_PREFIX.
"""

from __future__ import annotations

import argparse
import json
import os

from facefleet.common.aws import AwsTarget
from facefleet.common.names import Names


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
        if status.ecs_move is not None and status.ecs_move.role_how:
            print(f"  task role access judged by: {status.ecs_move.role_how}")
    return 0


def move(args: argparse.Namespace, names: Names) -> int:
    from facefleet.control.cutover import ecs_move

    if not (args.ecs_cluster and args.ecs_service):
        print("error: move-ecs-queue needs --ecs-cluster and --ecs-service")
        return 2
    aws = AwsTarget.from_env(region=args.region)
    back = bool(args.back or args.back_to)
    report = ecs_move.move_ecs_queue(
        names,
        args.ecs_cluster,
        args.ecs_service,
        aws,
        queue_url=args.back_to,
        back=back,
        role_granted=bool(getattr(args, "task_role_granted", False)),
    )
    print(f"{args.ecs_service} reads {report.queue_url} (was {report.previous_url or 'unset'})")
    print(f"task definition: {report.task_definition}")
    print(f"task role: {report.role_policy}")
    print(f"scaling alarms repointed: {', '.join(report.alarms) or 'none'}")
    print(f"router event source: {report.mapping}")
    if back:
        return 0
    check = ecs_move.check(names, args.ecs_cluster, args.ecs_service, aws, report.queue_url)
    print(f"task role access: {check.role_how}")
    if not check.moved:
        print("error: the move is not complete (see above); the router stays disabled")
        return 1
    print("undo: facefleet cutover move-ecs-queue --ecs-cluster ... --ecs-service ... --back")
    return 0
