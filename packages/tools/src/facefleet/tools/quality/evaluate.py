"""`facefleet evaluate PATH`: grouping quality on a folder in the LFW layout, three conditions.

For every photo of `PATH/Person/Person_0001.jpg` (or a seeded subset: --max-people, --min-photos,
--distractors, --max-photos) the harness builds, with a fixed seed:

- clean: the photos as they are. A detector may find several faces in an LFW photo (people in the
  background); the labelled face is the one nearest the centre among the large ones.
- degraded: each photo shrunk so the face is 20-48 px wide, placed at a random spot of a larger
  grey canvas, some blurred, some grayscale, JPEG quality 25-60.
- composite: photos of 2-6 distinct people tiled into one image (faces 24-64 px, degraded as
  above): one photo id for all of them, so the same-photo rule matters.

In the degraded and composite conditions the labelled face is the detection nearest where the
photo's face was placed; unlabelled extra faces are dropped and undetected ones counted. All
faces go through the project's detection code (`FaceAnalyzer`: SCRFD, alignment, quality,
ArcFace). Embeddings are cached per condition (--cache), so a rerun costs only the grouping.

FaceFleet runs with one fixed parameter set (`ClusterParams()`) in a seeded arrival order, in
message-sized batches (incremental), then its state is consolidated (`consolidate`). Baselines on
the same embeddings: Immich's rule at its defaults (detection minScore 0.7: faces under it stay
unassigned); rule (a), DBSCAN and Chinese whispers each tuned on the truth separately for BCubed
F1, pairwise F1 and ARI (the oracle ceiling), and each tuned once on the developers' split
(`--dev-seed`, none of the evaluated people) and run unchanged here; the all-singletons floor.
Agreement: incremental vs a full batch re-cluster and two arrival orders, before and after
consolidation; the ten largest people are named (one face pinned each) and consolidated to count
named people renamed or lost. The last line is `RESULT ...` with the headline figures
(FaceFleet's after consolidation; the best truth-tuned baseline per metric).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from facefleet.tools.quality.baselines import NeighbourGraph, dev_settings
from facefleet.tools.quality.conditions import CONDITIONS, Photo, select_photos
from facefleet.tools.quality.embeddings_cache import load_condition
from facefleet.tools.quality.experiment import ConditionResult, arrival_order, evaluate_condition
from facefleet.tools.quality.report import format_table, result_line
from facefleet.worker.grouping.state import ClusterParams

DEFAULT_PATH = Path("../shared/faces/lfw")
DEFAULT_PACK = Path("../shared/models/facefleet-dev")


def _selection(args: argparse.Namespace, seed: int, exclude: frozenset[str]) -> list[Photo]:
    return select_photos(
        Path(args.path),
        min_photos=args.min_photos,
        max_people=args.max_people,
        distractors=args.distractors,
        max_photos=args.max_photos,
        seed=seed,
        exclude=exclude,
    )


def dev_baseline_settings(
    args: argparse.Namespace, photos: Sequence[Photo], cache: Path | None
) -> dict[str, dict[str, Any]]:
    """The developers' split: the same selection rule with `--dev-seed`, none of the evaluated
    people; each baseline is tuned once there and then runs unchanged on the folder evaluated."""
    dev_photos = _selection(args, args.dev_seed, frozenset(p.identity for p in photos))
    print(f"developers' split: {len(dev_photos)} photos (seed {args.dev_seed}), for baselines")
    splits = []
    for name in args.conditions:
        data = load_condition(name, dev_photos, Path(args.pack), args.dev_seed, cache)
        if len(data.truth) >= 2:
            graph = NeighbourGraph.build(data.embeddings)
            splits.append((graph, arrival_order(data, args.dev_seed), list(data.truth)))
    return dev_settings(splits)


def evaluate(args: argparse.Namespace) -> int:
    photos = _selection(args, args.seed, frozenset())
    cache = None if args.no_cache else Path(args.cache).expanduser()
    if args.on_dev:
        # The developers' split itself (where FaceFleet's settings were chosen); its
        # dev-tuned baselines would be tuned on what they are scored on, so there are none.
        photos = _selection(args, args.dev_seed, frozenset(p.identity for p in photos))
        args.seed, args.no_dev = args.dev_seed, True
        print(f"developers' split (seed {args.dev_seed}):", end=" ")
    print(f"{len(photos)} photos of {len({p.identity for p in photos})} people from {args.path}")
    dev = None if args.no_dev else dev_baseline_settings(args, photos, cache)
    params = ClusterParams()
    results: dict[str, ConditionResult] = {}
    for name in args.conditions:
        data = load_condition(name, photos, Path(args.pack), args.seed, cache)
        if len(data.truth) < 2:
            print(f"== {name}: fewer than two faces detected, skipped")
            continue
        results[name] = evaluate_condition(name, data, args.seed, params, dev, args.batch_method)
        print(format_table(results[name]), flush=True)
    if not results:
        print("no condition had faces to group", file=sys.stderr)
        return 1
    print(result_line(results))
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "path",
        nargs="?",
        default=str(DEFAULT_PATH),
        help="folder in the LFW layout Person/Person_0001.jpg",
    )
    parser.add_argument("--pack", default=str(DEFAULT_PACK), help="model pack folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--min-photos",
        type=int,
        default=1,
        help="people with at least this many photos (one-photo people are added as distractors)",
    )
    parser.add_argument(
        "--max-people",
        type=int,
        default=None,
        help="a seeded sample of this many multi-photo people",
    )
    parser.add_argument(
        "--distractors",
        type=int,
        default=None,
        help="one-photo people to add (default: all, or --max-people)",
    )
    parser.add_argument("--max-photos", type=int, default=None, help="photos per person cap")
    parser.add_argument("--conditions", nargs="+", choices=CONDITIONS, default=list(CONDITIONS))
    parser.add_argument(
        "--cache", default="~/.cache/facefleet/evaluate", help="embedding cache folder"
    )
    parser.add_argument("--no-cache", action="store_true")
    parser.add_argument(
        "--dev-seed", type=int, default=1, help="seed of the developers' split (baseline tuning)"
    )
    parser.add_argument(
        "--no-dev", action="store_true", help="skip the dev-tuned baselines (no second split)"
    )
    parser.add_argument(
        "--on-dev",
        action="store_true",
        help="evaluate the developers' split itself (--dev-seed, none of the --seed people)",
    )
    parser.add_argument(
        "--batch-method",
        default=None,
        choices=("infomap", "leiden", "hdbscan", "average", "finch"),
        help="lab: the batch partition consolidation uses (default: the shipped one, Infomap)",
    )


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="grouping quality on an LFW-layout folder",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(parser)
    parser.set_defaults(func=evaluate)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="facefleet-evaluate", description=__doc__)
    add_arguments(parser)
    return evaluate(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
