"""`facefleet simulate`: the cost and latency of Batch Spot against the current ECS service."""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from facefleet.common.config import Settings
from facefleet.common.instances import DEFAULT_MIX, parse_mix
from facefleet.common.names import NAMES
from facefleet.control.policy import PolicyParams
from facefleet.control.pricing import (
    NETWORKS,
    BillParams,
    PriceTable,
    SpotSeries,
    diversified_spot_per_h,
    spot_history,
)
from facefleet.tools.simulate import trace as traces
from facefleet.tools.simulate.compare import DEFAULT_ECS_TASKS, compare, format_comparison
from facefleet.tools.simulate.params import DEFAULT_IMAGES_PER_S, ModelParams, images_per_s_for
from facefleet.tools.simulate.sweep import (
    DEFAULT_GRID,
    DEFAULT_LATENCY_TARGET_S,
    DEFAULT_PERCENTILE,
    format_sweep,
    sweep,
)


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers: {text!r}") from error


def _range(text: str) -> tuple[float, float]:
    values = _floats(text)
    if len(values) == 1:
        return values[0], values[0]
    if len(values) != 2:
        raise argparse.ArgumentTypeError(f"expected LOW,HIGH seconds: {text!r}")
    return values[0], values[1]


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "simulate",
        help="replay an upload trace: Batch Spot vs the always-on ECS service",
        description=__doc__,
    )
    source = parser.add_argument_group("trace")
    source.add_argument("--trace", type=Path, help="CSV with timestamp,images rows")
    source.add_argument("--days", type=float, default=7.0, help="generated trace length (7)")
    source.add_argument("--seed", type=int, default=7, help="generator and model seed (7)")
    source.add_argument("--save-trace", type=Path, help="write the trace used as CSV")
    model = parser.add_argument_group("model")
    model.add_argument(
        "--mix",
        default=DEFAULT_MIX,
        help=f"upload format mix: iphone, android or heic=..,jpeg=..,png=..,webp=.. "
        f"({DEFAULT_MIX}); sets images/s per job and the policy's job capacity from the "
        "instance throughput table",
    )
    model.add_argument(
        "--images-per-s",
        type=float,
        help=f"images/s one job processes (default: the throughput table's for the mix, "
        f"{DEFAULT_IMAGES_PER_S:g} for {DEFAULT_MIX})",
    )
    model.add_argument(
        "--cold-start-s",
        type=_range,
        default=ModelParams().cold_start_s,
        help="cold start range LOW,HIGH seconds (180,360)",
    )
    model.add_argument(
        "--interruptions-per-hour",
        type=float,
        default=ModelParams().interruptions_per_hour,
        help="Spot interruptions per instance-hour (0.01)",
    )
    model.add_argument(
        "--idle-exit-s",
        type=float,
        default=ModelParams().idle_exit_s,
        help="a job exits after this long without messages (60)",
    )
    model.add_argument(
        "--scale-down-s",
        type=float,
        default=ModelParams().scale_down_s,
        help="Batch terminates an idle instance after this long (300)",
    )
    model.add_argument(
        "--ecs-tasks",
        type=int,
        default=DEFAULT_ECS_TASKS,
        help=f"always-on ECS tasks in the current setup ({DEFAULT_ECS_TASKS})",
    )
    prices = parser.add_argument_group("prices")
    prices.add_argument("--on-demand-per-h", type=float, help="on-demand $/h (table: 0.526)")
    prices.add_argument(
        "--spot-per-h",
        type=float,
        help="constant Spot $/h (default: the mean of the Batch instance types' table prices)",
    )
    prices.add_argument(
        "--spot-history-days",
        type=float,
        help="use real Spot prices through the EC2 API (AWS_DEFAULT_REGION, AWS_ENDPOINT_URL "
        "honoured): the trace's own period if EC2 still has it, else the last D days "
        "(the trace's start mapped to their start)",
    )
    prices.add_argument(
        "--network",
        choices=NETWORKS,
        default=BillParams().network,
        help="how the instances reach S3 and the AWS APIs, for the bill: a NAT gateway (per GB "
        "and per hour), the NAT with the S3 gateway endpoint, or the S3 gateway endpoint plus "
        "interface endpoints (nat)",
    )
    tuning = parser.add_argument_group("sweep")
    tuning.add_argument("--sweep", action="store_true", help="sweep the policy's thresholds")
    tuning.add_argument(
        "--latency-target-s",
        type=float,
        default=DEFAULT_LATENCY_TARGET_S,
        help=f"latency target for the sweep ({DEFAULT_LATENCY_TARGET_S:g})",
    )
    tuning.add_argument(
        "--percentile",
        type=float,
        choices=(50.0, 95.0, 99.0),
        default=DEFAULT_PERCENTILE,
        help="latency percentile the target is on (95)",
    )
    for key, values in DEFAULT_GRID.items():
        tuning.add_argument(
            f"--sweep-{key.replace('_', '-')}",
            type=_floats,
            default=values,
            metavar="V,V,...",
            help=f"values of {key} ({','.join(map(str, values))})",
        )
    parser.add_argument("--plot", type=Path, help="write a PNG of backlog, instances and cost")
    parser.set_defaults(func=run)


# EC2 keeps about 90 days of Spot price history.
SPOT_HISTORY_DAYS = 90


def history_window(trace: traces.Trace, days: float, now: datetime) -> tuple[datetime, datetime]:
    """The trace's own period when EC2 still has its Spot prices, else the last `days` days."""
    if trace.start_epoch_s > 0:
        start = datetime.fromtimestamp(trace.start_epoch_s, UTC)
        end = start + timedelta(seconds=trace.duration_s)
        if start >= now - timedelta(days=SPOT_HISTORY_DAYS) and end <= now:
            return start, end
    return now - timedelta(days=days), now


def _prices(args: argparse.Namespace, trace: traces.Trace) -> PriceTable:
    # On demand: the existing ECS service's instance type. Spot: the Batch side, across the
    # secondary environment's diversified list (the instance facts table's).
    batch_types = NAMES.secondary_environment.instance_types
    spot = args.spot_per_h if args.spot_per_h is not None else diversified_spot_per_h(batch_types)
    table = PriceTable.for_instance(NAMES.instance_type, spot)
    if args.on_demand_per_h is not None:
        table = replace(table, on_demand_per_h=args.on_demand_per_h)
    if args.spot_history_days:
        settings = Settings.from_env()
        start, end = history_window(trace, args.spot_history_days, datetime.now(UTC))
        ec2 = settings.aws.client("ec2")
        table = replace(table, spot=spot_history(ec2, batch_types, start, end))
    return table


def run(args: argparse.Namespace) -> int:
    if args.trace is not None:
        trace = traces.load_csv(args.trace)
    else:
        trace = traces.generate(args.days, args.seed)
    if args.save_trace is not None:
        traces.write_csv(trace, args.save_trace)
    prices = _prices(args, trace)
    if isinstance(prices.spot, SpotSeries) and len(prices.spot.prices) > 1:
        print(f"Spot price series: {len(prices.spot.prices)} steps")
    try:
        mix = parse_mix(args.mix)
    except ValueError as error:
        print(f"facefleet simulate: {error}", file=sys.stderr)
        return 2
    rate = args.images_per_s if args.images_per_s is not None else images_per_s_for(mix)
    model = ModelParams(
        images_per_s=rate,
        cold_start_s=args.cold_start_s,
        interruptions_per_hour=args.interruptions_per_hour,
        idle_exit_s=args.idle_exit_s,
        scale_down_s=args.scale_down_s,
        seed=args.seed,
        record_timeline=args.plot is not None,
    )
    policy = PolicyParams.for_mix(mix)
    print(
        f"mix {args.mix}: " + ", ".join(f"{f} {share:.0%}" for f, share in mix.items()),
    )
    print(
        f"trace: {trace.label}, {trace.images:,} images over {trace.duration_s / 86400:.2f} days; "
        f"{model.images_per_s:g} images/s per job, cold start {model.cold_start_s[0]:.0f}-"
        f"{model.cold_start_s[1]:.0f} s, {model.interruptions_per_hour:g} interruptions per "
        f"instance-hour, policy job capacity {policy.job_capacity}"
    )
    bill_params = replace(BillParams(), network=args.network)
    comparison = compare(trace, args.ecs_tasks, model, policy, prices, bill_params=bill_params)
    print(format_comparison(comparison))
    if args.plot is not None:
        from facefleet.tools.simulate.plot import plot

        print(f"plot: {plot(comparison, args.plot)}")
    if args.sweep:
        grid = {key: getattr(args, f"sweep_{key}") for key in DEFAULT_GRID}

        def progress(done: int, total: int) -> None:
            print(f"\rsweep {done}/{total}", end="", file=sys.stderr, flush=True)

        points = sweep(trace, model, policy, grid, prices, progress=progress)
        print(file=sys.stderr)
        print(format_sweep(points, args.latency_target_s, args.percentile, comparison.batch))
    return 0
