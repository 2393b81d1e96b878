"""`facefleet people ...`: inspect and correct a user's people, re-cluster, change model.

    facefleet people list USER                 people, names, face counts, covers
    facefleet people name USER PERSON NAME     (--clear to remove the name)
    facefleet people merge USER KEEP ABSORB    ABSORB is the same person as KEEP
    facefleet people move USER FACE PERSON     PERSON may be `new`
    facefleet people reject USER FACE PERSON   "not this person"
    facefleet people recluster USER [--apply]  full re-cluster, compared with the incremental one
    facefleet people consolidate USER          the consolidation pass now (batch, ids kept)
    facefleet people suggest USER              questions whose answers fix the library most
    facefleet people answer USER QUESTION (same|different|skip)
    facefleet people migrate USER (--model-dir DIR | --model-id ID)
    facefleet people erase --user USER         erase every face of USER; prints the receipt
    facefleet people recognition --user USER (on|off)   the opt-out (`off` also erases)
    facefleet people reindex --user USER [--dry-run]    index photos skipped before the opt-in
    facefleet people purge-inactive [--days N] [--dry-run]   erase users inactive N days
    facefleet people purge-tombstones [--days N] [--dry-run] drop tombstones older than N days

Reads GALLERY_IMAGES_MONGO_URI, HUEMN_MONGO_URI and FACE_GROUP_BUCKET_NAME like the worker.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from facefleet.common.config import ConfigError, Settings
from facefleet.common.repository import LeaseHeld

if TYPE_CHECKING:  # imported when a command runs: `facefleet --help` stays free of FAISS
    from facefleet.worker.grouping.corrections import Corrections, Embedder


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("people", help="inspect and correct grouped people")
    commands = parser.add_subparsers(dest="people_command", required=True)
    for name, handler, arguments in _COMMANDS:
        sub = commands.add_parser(name, help=handler.__doc__)
        if name in USER_OPTION:  # privacy commands name the user explicitly
            sub.add_argument("--user", dest="user_id", required=True)
        elif name not in ALL_USERS:
            sub.add_argument("user_id")
        for flags, options in arguments:
            sub.add_argument(*flags, **options)
        sub.set_defaults(func=_run(handler))


def _run(handler: Any) -> Any:
    def run(args: argparse.Namespace) -> int:
        from facefleet.worker.grouping.corrections import NoGroupingState

        try:
            settings = Settings.from_env()
            needed = ["gallery_images_mongo_uri", "huemn_mongo_uri"]
            if handler not in READ_ONLY:  # covers are rewritten in the crop bucket
                needed.append("face_group_bucket_name")
            settings.require(*needed)
            print(handler(_corrections(settings), args))
        except (ConfigError, NoGroupingState, KeyError, ValueError, LeaseHeld) as error:
            print(f"error: {error}")
            return 2
        return 0

    return run


def _corrections(settings: Settings) -> Corrections:
    from facefleet.common.repository import GALLERY_DEFAULT_DB, HUEMN_DEFAULT_DB, connect
    from facefleet.worker.grouping.corrections import Corrections
    from facefleet.worker.grouping.service import cluster_params
    from facefleet.worker.grouping.store import GroupingStore

    assert settings.gallery_images_mongo_uri and settings.huemn_mongo_uri
    store = GroupingStore(
        connect(settings.gallery_images_mongo_uri, GALLERY_DEFAULT_DB),
        connect(settings.huemn_mongo_uri, HUEMN_DEFAULT_DB),
    )
    return Corrections(
        store,
        s3=settings.aws.client("s3"),
        bucket=settings.face_group_bucket_name or "",  # read-only commands write no cover
        params=cluster_params(settings),
    )


def list_people(corrections: Corrections, args: argparse.Namespace) -> str:
    """List a user's people."""
    people = corrections.store.people.people_of_user(args.user_id)
    if args.json:
        return json.dumps(
            [
                {
                    "person_id": p.person_id,
                    "name": p.name,
                    "faces": p.face_count,
                    "model_id": p.model_id,
                    "cover_key": p.cover_key,
                    **({"members": p.member_face_ids} if args.faces else {}),
                }
                for p in people
            ],
            indent=2,
        )
    lines = [f"{'person':>8}  {'faces':>5}  {'name':<24} cover"]
    for p in people:
        lines.append(f"{p.person_id:>8}  {p.face_count:>5}  {p.name or '-':<24} {p.cover_key}")
        if args.faces:
            lines.extend(f"{'':>17}{face_id}" for face_id in p.member_face_ids)
    return "\n".join(lines)


def name(corrections: Corrections, args: argparse.Namespace) -> str:
    """Name a person (or --clear its name)."""
    label = None if args.clear else " ".join(args.name).strip()
    if label == "":
        raise ValueError("give a name, or --clear")
    person = corrections.name(args.user_id, args.person_id, label)
    return f"person {person}: {label or '(no name)'}"


def merge(corrections: Corrections, args: argparse.Namespace) -> str:
    """Merge ABSORB into KEEP (the same person)."""
    kept = corrections.merge(args.user_id, args.keep, args.absorb)
    return f"person {args.absorb} merged into person {kept}"


def move(corrections: Corrections, args: argparse.Namespace) -> str:
    """Move a face into a person (`new`: a person of its own)."""
    target = None if args.person == "new" else int(args.person)
    person = corrections.move(args.user_id, args.face_id, target)
    return f"face {args.face_id} is now in person {person}"


def reject(corrections: Corrections, args: argparse.Namespace) -> str:
    """Say a face is not a person."""
    corrections.reject(args.user_id, args.face_id, args.person_id)
    return f"face {args.face_id} is not person {args.person_id}"


def recluster_user(corrections: Corrections, args: argparse.Namespace) -> str:
    """Full re-cluster, compared with the incremental result (--apply to keep it)."""
    report = corrections.recluster(args.user_id, apply=args.apply)
    return "\n".join(f"{key}: {value}" for key, value in asdict(report).items())


def consolidate(corrections: Corrections, args: argparse.Namespace) -> str:
    """Consolidate now: re-cluster in batch, keep person ids, names and corrections."""
    report = corrections.consolidate(args.user_id)
    return "\n".join(f"{key}: {value}" for key, value in asdict(report).items())


def suggest(corrections: Corrections, args: argparse.Namespace) -> str:
    """List the questions whose answers would change the library most."""
    questions = corrections.suggest(args.user_id)
    if args.json:
        return json.dumps([{**q.to_doc(), "text": q.text()} for q in questions], indent=2)
    if not questions:
        return "no questions: nothing the library is unsure of"
    lines = [f"{'question':<12} {'value':>7}  asks"]
    lines.extend(f"{q.question_id:<12} {q.value:7.2f}  {q.text()}" for q in questions)
    return "\n".join(lines)


def answer(corrections: Corrections, args: argparse.Namespace) -> str:
    """Answer a question: same, different or skip."""
    update = corrections.answer(args.user_id, args.question_id, args.answer)
    moved = len(update.assignments)
    return f"{args.question_id}: {args.answer} recorded ({moved} faces moved)"


def migrate(corrections: Corrections, args: argparse.Namespace) -> str:
    """Move a user to a new model: re-embed, re-cluster, carry named people."""
    embedder: Embedder | None = None
    model_id = args.model_id
    if args.model_dir:
        from facefleet.worker.detection.analyzer import FaceAnalyzer  # loads ONNX Runtime

        analyzer = FaceAnalyzer.from_pack(Path(args.model_dir))
        embedder, model_id = analyzer.embed, analyzer.model_id
    if not model_id:
        raise ValueError("give --model-dir (re-embed) or --model-id (faces already detected)")
    report = corrections.migrate(args.user_id, model_id, embedder)
    return "\n".join(f"{key}: {value}" for key, value in asdict(report).items())


def erase(corrections: Corrections, args: argparse.Namespace) -> str:
    """Erase every face of a user (all stores); prints the erasure receipt."""
    from facefleet.worker.privacy.erasure import erase_user

    receipt = erase_user(
        corrections.store,
        corrections.s3,
        corrections.bucket,
        args.user_id,
        owner=corrections.owner,
        lease_ttl=corrections.lease_ttl,
        lease_wait_seconds=corrections.lease_wait_seconds,
    )
    return json.dumps(asdict(receipt), indent=2, sort_keys=True)


def recognition(corrections: Corrections, args: argparse.Namespace) -> str:
    """Turn face recognition on or off for a user (off erases the user's faces)."""
    from facefleet.common.privacy import PrivacyRepository
    from facefleet.worker.privacy.erasure import erase_user

    enabled = args.state == "on"
    PrivacyRepository(corrections.store.gallery.faces.database).set_recognition(
        args.user_id, enabled
    )
    if enabled:
        return f"face recognition on for {args.user_id}"
    receipt = erase_user(
        corrections.store,
        corrections.s3,
        corrections.bucket,
        args.user_id,
        owner=corrections.owner,
        reason="opt_out",
        lease_ttl=corrections.lease_ttl,
        lease_wait_seconds=corrections.lease_wait_seconds,
    )
    return json.dumps(asdict(receipt), indent=2, sort_keys=True)


def reindex(corrections: Corrections, args: argparse.Namespace) -> str:
    """Send the photos left unindexed for consent to QUEUE_URL (after the user opted in)."""
    from facefleet.common.messages import DetectionRequest
    from facefleet.common.privacy import PrivacyRepository
    from facefleet.worker.privacy.consent import Recognition, not_indexed, recognition_of

    settings = Settings.from_env()
    settings.require("queue_url")
    privacy = PrivacyRepository(corrections.store.gallery.faces.database)
    mode = settings.face_recognition_consent
    state = recognition_of(privacy, mode, [args.user_id])[args.user_id]
    if state is not Recognition.ON:
        raise ValueError(f"face recognition is {state} for {args.user_id} ({mode}): nothing sent")
    photos = not_indexed(corrections.store.gallery, args.user_id)
    if not args.dry_run:
        assert settings.queue_url is not None
        bodies = [
            DetectionRequest(p.user_id, p.image_id, p.bucket, p.key).to_body() for p in photos
        ]
        _send_all(settings.aws.client("sqs"), settings.queue_url, bodies)
    verb = "would be sent" if args.dry_run else "sent"
    return f"{len(photos)} photos of {args.user_id} {verb} for indexing"


def _send_all(sqs: Any, queue_url: str, bodies: list[str]) -> None:
    for start in range(0, len(bodies), 10):  # SendMessageBatch takes at most 10
        chunk = bodies[start : start + 10]
        entries = [{"Id": str(n), "MessageBody": body} for n, body in enumerate(chunk)]
        failed = sqs.send_message_batch(QueueUrl=queue_url, Entries=entries).get("Failed", [])
        if failed:
            raise ValueError(f"{len(failed)} requests not sent: {failed[0].get('Message')}")


def purge_inactive(corrections: Corrections, args: argparse.Namespace) -> str:
    """Erase the faces of users inactive past the retention schedule (receipts: `retention`)."""
    from facefleet.worker.privacy.retention import purge_inactive as purge

    report = purge(
        corrections.store,
        corrections.s3,
        corrections.bucket,
        days=_days(args.days, "retention_inactive_days", "RETENTION_INACTIVE_DAYS"),
        owner=corrections.owner,
        dry_run=args.dry_run,
        lease_ttl=corrections.lease_ttl,
        lease_wait_seconds=corrections.lease_wait_seconds,
    )
    return json.dumps(asdict(report), indent=2, sort_keys=True)


def purge_tombstones(corrections: Corrections, args: argparse.Namespace) -> str:
    """Delete tombstones older than the window (late messages can no longer arrive)."""
    from facefleet.worker.privacy.retention import purge_tombstones as purge

    days = _days(args.days, "tombstone_retention_days", "TOMBSTONE_RETENTION_DAYS")
    count = purge(corrections.store.gallery.faces.database, days=days, dry_run=args.dry_run)
    verb = "would be deleted" if args.dry_run else "deleted"
    return f"{count} tombstones older than {days} days {verb}"


def _days(given: int | None, attribute: str, variable: str) -> int:
    """--days, checked by the same rule as its environment variable (a ConfigError names it)."""
    if given is None:
        return int(getattr(Settings.from_env(), attribute))
    try:
        return int(getattr(Settings.from_env({variable: str(given)}), attribute))
    except ConfigError as error:
        raise ValueError(f"--days {given}: {error}") from None


_COMMANDS: list[tuple[str, Any, list[tuple[tuple[str, ...], dict[str, Any]]]]] = [
    (
        "list",
        list_people,
        [
            (("--faces",), {"action": "store_true", "help": "member face ids"}),
            (("--json",), {"action": "store_true"}),
        ],
    ),
    (
        "name",
        name,
        [
            (("person_id",), {"type": int}),
            (("name",), {"nargs": "*"}),
            (("--clear",), {"action": "store_true"}),
        ],
    ),
    ("merge", merge, [(("keep",), {"type": int}), (("absorb",), {"type": int})]),
    ("move", move, [(("face_id",), {}), (("person",), {"help": "a person id, or `new`"})]),
    ("reject", reject, [(("face_id",), {}), (("person_id",), {"type": int})]),
    (
        "recluster",
        recluster_user,
        [(("--apply",), {"action": "store_true", "help": "replace the stored state"})],
    ),
    ("consolidate", consolidate, []),
    ("suggest", suggest, [(("--json",), {"action": "store_true"})]),
    (
        "answer",
        answer,
        [(("question_id",), {}), (("answer",), {"choices": ["same", "different", "skip"]})],
    ),
    (
        "migrate",
        migrate,
        [
            (("--model-dir",), {"help": "the new model pack: re-embed crops"}),
            (("--model-id",), {"help": "faces already detected with this model"}),
        ],
    ),
    ("erase", erase, []),
    ("recognition", recognition, [(("state",), {"choices": ["on", "off"]})]),
    (
        "reindex",
        reindex,
        [(("--dry-run",), {"action": "store_true", "help": "count, send nothing"})],
    ),
    (
        "purge-inactive",
        purge_inactive,
        [
            (("--days",), {"type": int, "help": "default RETENTION_INACTIVE_DAYS (730)"}),
            (("--dry-run",), {"action": "store_true", "help": "list the users, erase nothing"}),
        ],
    ),
    (
        "purge-tombstones",
        purge_tombstones,
        [
            (("--days",), {"type": int, "help": "default TOMBSTONE_RETENTION_DAYS (90)"}),
            (("--dry-run",), {"action": "store_true", "help": "count, delete nothing"}),
        ],
    ),
]

USER_OPTION = frozenset({"erase", "recognition", "reindex"})
ALL_USERS = frozenset({"purge-inactive", "purge-tombstones"})  # retention: no user argument

# Commands that only read: they need the two databases, not the crop bucket.
READ_ONLY = frozenset({list_people, suggest})
