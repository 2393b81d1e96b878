"""Put and delete the dashboard and alarms: boto3 for the provisioning flow, files for the awscli.

Both forms send the same documents (`put_metric_alarm_input`, `put_dashboard_input`), so the
awscli commands an operator runs by hand do exactly what the flow does. Applying is idempotent
(Put* replaces); removing deletes only what this module defines and tolerates what is missing.
"""

from __future__ import annotations

import json
import logging
import shlex
from pathlib import Path
from typing import Any

from facefleet.common.aws import AwsTarget, topic_arn_by_name
from facefleet.common.names import Names
from facefleet.dashboards.alarms import AlarmQueues, AlarmThresholds, build_alarms
from facefleet.dashboards.dashboard import build_dashboard, put_dashboard_input

log = logging.getLogger(__name__)

STACK_TAG = "facefleet:stack"


class DashboardsError(RuntimeError):
    """A resource the dashboards need is missing; the message names it."""


def _tags(names: Names) -> dict[str, str]:
    return {STACK_TAG: names.stack_name}


def find_topic_arn(names: Names, aws: AwsTarget) -> str:
    """The ARN of the alerts topic the infra stack created (`Names.alerts_topic`)."""
    topic_arn = topic_arn_by_name(aws, names.alerts_topic)
    if topic_arn is not None:
        return topic_arn
    raise DashboardsError(
        f"SNS topic {names.alerts_topic!r} not found in {aws.region}: deploy the infra stack first"
    )


def apply_dashboards(
    names: Names,
    aws: AwsTarget,
    topic_arn: str | None = None,
    thresholds: AlarmThresholds | None = None,
    queues: AlarmQueues | None = None,
) -> list[str]:
    """Create or update every alarm, then the dashboard; return their names (alarms first).

    `topic_arn` None: look the alerts topic up by name. `queues`: the queues the alarms watch
    (from the stack outputs' URLs; default: the queues the stack creates).
    """
    topic = topic_arn or find_topic_arn(names, aws)
    cloudwatch = aws.client("cloudwatch")
    alarms = build_alarms(names, thresholds, queues)
    for alarm in alarms:
        log.info("putting alarm %s (actions -> %s) in %s", alarm.name, topic, aws.region)
        cloudwatch.put_metric_alarm(**alarm.put_metric_alarm_input(topic, _tags(names)))
    described = cloudwatch.describe_alarms(AlarmNames=[a.name for a in alarms])["MetricAlarms"]
    arns = {a["AlarmName"]: a["AlarmArn"] for a in described}
    missing = [a.name for a in alarms if a.name not in arns]
    if missing:
        raise DashboardsError(f"alarms not found after PutMetricAlarm: {missing}")
    dashboard = build_dashboard(names, aws.region, thresholds, [arns[a.name] for a in alarms])
    log.info("putting dashboard %s in %s", dashboard.name, aws.region)
    response = cloudwatch.put_dashboard(**put_dashboard_input(dashboard))
    problems = response.get("DashboardValidationMessages") or []
    if problems:
        raise DashboardsError(f"dashboard {dashboard.name} rejected: {problems}")
    return [a.name for a in alarms] + [dashboard.name]


def remove_dashboards(names: Names, aws: AwsTarget, queues: AlarmQueues | None = None) -> list[str]:
    """Delete the alarms and the dashboard this module defines; return the names that existed."""
    cloudwatch = aws.client("cloudwatch")
    wanted = [a.name for a in build_alarms(names, queues=queues)]
    existing = {
        a["AlarmName"] for a in cloudwatch.describe_alarms(AlarmNames=wanted)["MetricAlarms"]
    }
    removed = [name for name in wanted if name in existing]
    if removed:
        log.info("deleting alarms %s in %s", removed, aws.region)
        cloudwatch.delete_alarms(AlarmNames=removed)
    dashboards = cloudwatch.list_dashboards(DashboardNamePrefix=names.dashboard)
    if any(d["DashboardName"] == names.dashboard for d in dashboards["DashboardEntries"]):
        log.info("deleting dashboard %s in %s", names.dashboard, aws.region)
        cloudwatch.delete_dashboards(DashboardNames=[names.dashboard])
        removed.append(names.dashboard)
    return removed


def topic_arn_for(names: Names, region: str, account_id: str) -> str:
    return f"arn:aws:sns:{region}:{account_id}:{names.alerts_topic}"


def export_cli(
    names: Names,
    region: str,
    out_dir: Path,
    topic_arn: str,
    thresholds: AlarmThresholds | None = None,
    queues: AlarmQueues | None = None,
) -> list[str]:
    """Write one `--cli-input-json` file per request into `out_dir`; return the aws commands
    that apply them (in order), then the commands that remove them (as comments)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    commands: list[str] = []
    alarms = build_alarms(names, thresholds, queues)

    def write(filename: str, document: dict[str, Any]) -> str:
        path = out_dir / filename
        path.write_text(json.dumps(document, indent=2) + "\n")
        return shlex.quote(f"file://{path.resolve()}")

    for alarm in alarms:
        source = write(
            f"alarm-{alarm.name}.json", alarm.put_metric_alarm_input(topic_arn, _tags(names))
        )
        commands.append(
            f"aws cloudwatch put-metric-alarm --region {region} --cli-input-json {source}"
        )
    # The alarm ARNs follow from the topic's account: the same alarm row as the boto3 form.
    account = topic_arn.split(":")[4]
    arns = [f"arn:aws:cloudwatch:{region}:{account}:alarm:{a.name}" for a in alarms]
    dashboard = build_dashboard(names, region, thresholds, arns)
    source = write("dashboard.json", dict(put_dashboard_input(dashboard)))
    commands.append(f"aws cloudwatch put-dashboard --region {region} --cli-input-json {source}")
    commands.append(
        f"# remove: aws cloudwatch delete-alarms --region {region} --alarm-names "
        + " ".join(a.name for a in alarms)
    )
    commands.append(
        f"# remove: aws cloudwatch delete-dashboards --region {region} "
        f"--dashboard-names {dashboard.name}"
    )
    (out_dir / "apply.sh").write_text("#!/bin/sh\nset -e\n" + "\n".join(commands) + "\n")
    return commands
