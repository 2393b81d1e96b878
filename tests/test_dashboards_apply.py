"""Dashboard and alarms against the moto server: accepted, round-trip, apply twice, remove."""

from __future__ import annotations

import json

import pytest

from facefleet.dashboards.alarms import AlarmThresholds, build_alarms
from facefleet.dashboards.apply import (
    DashboardsError,
    apply_dashboards,
    export_cli,
    remove_dashboards,
)
from facefleet.dashboards.dashboard import build_dashboard, put_dashboard_input
from facefleet.tools.cli import main


@pytest.fixture
def topic_arn(env) -> str:
    # The infra stack creates the alerts topic; here the test plays that part.
    return env.aws.client("sns").create_topic(Name=env.names.alerts_topic)["TopicArn"]


def _alarms(env) -> dict[str, dict]:
    cloudwatch = env.aws.client("cloudwatch")
    wanted = [a.name for a in build_alarms(env.names)]
    return {
        a["AlarmName"]: a for a in cloudwatch.describe_alarms(AlarmNames=wanted)["MetricAlarms"]
    }


def _dashboards(env) -> list[str]:
    cloudwatch = env.aws.client("cloudwatch")
    entries = cloudwatch.list_dashboards(DashboardNamePrefix=env.names.prefix)
    return [d["DashboardName"] for d in entries["DashboardEntries"]]


def test_dashboard_json_is_accepted_and_round_trips(env):
    cloudwatch = env.aws.client("cloudwatch")
    request = put_dashboard_input(build_dashboard(env.names, env.region))
    response = cloudwatch.put_dashboard(**request)
    assert response.get("DashboardValidationMessages", []) == []
    stored = cloudwatch.get_dashboard(DashboardName=env.names.dashboard)
    assert json.loads(stored["DashboardBody"]) == json.loads(request["DashboardBody"])


def test_apply_creates_every_alarm_with_its_action_then_remove_deletes_them(env, topic_arn):
    applied = apply_dashboards(env.names, env.aws, topic_arn, AlarmThresholds(queue_depth=500))
    definitions = build_alarms(env.names)
    assert applied == [a.name for a in definitions] + [env.names.dashboard]
    alarms = _alarms(env)
    assert set(alarms) == {a.name for a in definitions}
    for alarm in alarms.values():
        assert alarm["AlarmActions"] == [topic_arn]
        assert alarm["OKActions"] == [topic_arn]
        assert "Runbook:" in alarm["AlarmDescription"]
    assert alarms[f"{env.names.indexing_queue}-queue-depth"]["Threshold"] == 500
    stuck = alarms[f"{env.names.indexing_queue}-stuck"]
    assert [m["Id"] for m in stuck["Metrics"]] == ["visible", "progress", "stuck"]
    body = json.loads(
        env.aws.client("cloudwatch").get_dashboard(DashboardName=env.names.dashboard)[
            "DashboardBody"
        ]
    )
    alarm_widget = next(w for w in body["widgets"] if w["type"] == "alarm")
    assert sorted(alarm_widget["properties"]["alarms"]) == sorted(
        a["AlarmArn"] for a in alarms.values()
    )

    removed = remove_dashboards(env.names, env.aws)
    assert sorted(removed) == sorted(applied)
    assert _alarms(env) == {}
    assert env.names.dashboard not in _dashboards(env)
    assert remove_dashboards(env.names, env.aws) == []


def test_apply_twice_is_idempotent(env, topic_arn):
    first = apply_dashboards(env.names, env.aws, topic_arn)
    before = {
        name: {k: v for k, v in a.items() if "Timestamp" not in k}
        for name, a in _alarms(env).items()
    }
    # Second apply finds the topic by name, as the provisioning flow may.
    second = apply_dashboards(env.names, env.aws)
    after = {
        name: {k: v for k, v in a.items() if "Timestamp" not in k}
        for name, a in _alarms(env).items()
    }
    assert first == second
    assert before == after
    assert _dashboards(env).count(env.names.dashboard) == 1


def test_apply_without_the_alerts_topic_names_it(env):
    with pytest.raises(DashboardsError, match=env.names.alerts_topic):
        apply_dashboards(env.names, env.aws)


def test_awscli_export_files_are_the_requests(env, topic_arn, tmp_path):
    commands = export_cli(env.names, env.region, tmp_path, topic_arn)
    puts = [c for c in commands if not c.startswith("#")]
    assert len(puts) == len(build_alarms(env.names)) + 1
    assert puts[-1].startswith(
        f"aws cloudwatch put-dashboard --region {env.region} --cli-input-json file://"
    )
    cloudwatch = env.aws.client("cloudwatch")
    # Send each file as the awscli would: the file's JSON is the request's parameters.
    for command in puts:
        document = json.loads((tmp_path / command.rsplit("/", 1)[-1].strip("'")).read_text())
        if "put-dashboard" in command:
            cloudwatch.put_dashboard(**document)
        else:
            cloudwatch.put_metric_alarm(**document)
    assert set(_alarms(env)) == {a.name for a in build_alarms(env.names)}
    assert (tmp_path / "apply.sh").read_text().count("aws cloudwatch put-") == len(puts)


def test_cli_apply_export_and_remove(env, topic_arn, tmp_path, capsys):
    args = ["--prefix", env.names.prefix, "--namespace", env.names.metrics_namespace]
    assert main(["dashboards", "apply", *args]) == 0
    assert f"applied  {env.names.dashboard}" in capsys.readouterr().out
    assert len(_alarms(env)) == len(build_alarms(env.names))
    assert (
        main(
            ["dashboards", "export", *args, "--account-id", "123456789012", "--out", str(tmp_path)]
        )
        == 0
    )
    assert "put-dashboard" in capsys.readouterr().out
    assert main(["dashboards", "remove", *args]) == 0
    assert _alarms(env) == {}
