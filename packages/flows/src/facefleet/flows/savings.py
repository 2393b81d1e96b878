"""The hourly Spot savings job as a Prefect flow (`spot-savings/hourly`, five past each hour):
the previous hour's Batch instance-hours priced at Spot against on-demand, published as the
metrics the dashboard's savings panels chart (see facefleet.dashboards.savings)."""

from __future__ import annotations

from dataclasses import asdict
from datetime import datetime
from typing import Any

from prefect import flow, get_run_logger

from facefleet.common.aws import AwsTarget
from facefleet.common.names import Names
from facefleet.dashboards.savings import run_savings_job

SAVINGS_CRON = "5 * * * *"  # after the hour's last metrics have landed


@flow(name="spot-savings", log_prints=True)
def spot_savings(
    names: dict[str, Any] | None = None,
    region: str | None = None,
    endpoint_url: str | None = None,
    hour: str | None = None,
) -> dict[str, Any]:
    """One hour's saving (`hour`: ISO start; default the previous full hour), published."""
    the_names = Names.from_params(names)
    aws = AwsTarget.from_env(region=region, endpoint_url=endpoint_url)
    start = datetime.fromisoformat(hour) if hour else None
    saving = run_savings_job(the_names, aws, start)
    get_run_logger().info(
        "hour %s: Spot $%.4f vs on-demand $%.4f, saving $%.4f",
        saving.hour_start.isoformat(),
        saving.spot_cost_usd,
        saving.on_demand_cost_usd,
        saving.savings_usd,
    )
    record = {k: v.isoformat() if isinstance(v, datetime) else v for k, v in asdict(saving).items()}
    return {
        **record,
        "savings_usd": saving.savings_usd,
        "cost_per_1000_images_usd": saving.cost_per_1000_images_usd,
    }
