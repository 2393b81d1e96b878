"""The cutover: the state machine promotes, holds and rolls back on injected health; the flow
reads injected CloudWatch metrics, applies the decision to SSM and rolls back (messages returned
to the ECS queue, alert sent); the router splits by weight, stably per user, splits multi-record
S3 events per record and sends what it cannot read to ECS; the router Lambda reports partial
batch failures."""

from __future__ import annotations

import json
import os
import uuid
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from facefleet.common.messages import DetectionRequest
from facefleet.common.s3keys import image_key
from facefleet.control import lambda_router
from facefleet.control.cutover import machine as cut
from facefleet.control.router import (
    BATCH,
    ECS,
    Router,
    bucket,
    goes_to_batch,
    read_weight,
    side_of,
    split,
    users_by_side,
    write_weight,
)
from facefleet.flows import cutover as cutover_flows
from tests.flows_support import create_queues, prefect_harness

GATES = cut.Gates(soak_s={w: 100.0 for w in cut.STAGES})
GOOD = cut.Health(finished_jobs=50, failed_jobs=0, p95_ms=900.0, baseline_p95_ms=1000.0)


def test_walks_every_stage_to_complete_only_after_each_soak() -> None:
    state, now, path = cut.CutoverState(), 0.0, []
    while state.status != cut.COMPLETE:
        decision = cut.evaluate(state, GOOD, now, GATES)
        assert not decision.release_ecs or decision.action == "complete"
        if decision.action == "hold":
            assert "soaking" in decision.reasons[0]
        state = decision.state
        path.append(state.weight)
        now += 60.0
    assert sorted(set(path)) == [10, 25, 50, 75, 100]
    # 100 % was reached, then held for its soak before ECS could go.
    assert path.count(100) >= 2
    assert cut.evaluate(state, GOOD, now, GATES).release_ecs


@pytest.mark.parametrize(
    ("health", "action"),
    [
        (GOOD, "promote"),
        (cut.Health(finished_jobs=100, failed_jobs=3, p95_ms=900, baseline_p95_ms=1000), "hold"),
        (cut.Health(finished_jobs=100, failed_jobs=6), "rollback"),
        (cut.Health(finished_jobs=10, p95_ms=1300, baseline_p95_ms=1000), "hold"),
        (cut.Health(finished_jobs=10, p95_ms=1600, baseline_p95_ms=1000), "rollback"),
        (cut.Health(finished_jobs=10, dead_letters=1), "rollback"),
        (cut.Health(finished_jobs=10, oldest_age_s=900), "hold"),
        (cut.Health(finished_jobs=10, oldest_age_s=3600), "rollback"),
        (cut.Health(finished_jobs=10, spot_interruptions=8), "hold"),
        (cut.Health(finished_jobs=10, spot_interruptions=30), "rollback"),
        (cut.Health(), "hold"),  # no evidence yet
    ],
)
def test_gates(health: cut.Health, action: str) -> None:
    state = cut.CutoverState(weight=25, entered_at_s=0.0)
    decision = cut.evaluate(state, health, 1000.0, GATES)
    assert decision.action == action
    if action == "promote":
        assert decision.state.weight == 50
    if action == "rollback":
        assert (decision.state.weight, decision.state.status, decision.alert) == (
            0,
            cut.ROLLED_BACK,
            True,
        )
    if action == "hold":
        assert decision.state == state


def test_breach_rolls_back_even_while_soaking_and_stays_back_until_resume() -> None:
    state = cut.CutoverState(weight=50, entered_at_s=990.0)
    bad = cut.Health(finished_jobs=10, failed_jobs=5)
    decision = cut.evaluate(state, bad, 1000.0, GATES)
    assert decision.action == "rollback"
    assert cut.evaluate(decision.state, GOOD, 5000.0, GATES).action == "hold"
    resumed = cut.resume(decision.state, 6000.0)
    assert cut.evaluate(resumed, GOOD, 6000.0, GATES).state.weight == 10
    paused = cut.pause(cut.CutoverState(weight=75))
    assert cut.evaluate(paused, GOOD, 1e9, GATES).state == paused


def test_router_split_matches_weight_and_is_stable() -> None:
    ids = [uuid.uuid4().hex for _ in range(20_000)]
    for weight in (10, 25, 50, 75):
        share = sum(goes_to_batch(i, weight) for i in ids) / len(ids)
        assert abs(share - weight / 100) < 0.015
    assert not any(goes_to_batch(i, 0) for i in ids)
    assert all(goes_to_batch(i, 100) for i in ids)
    # Same user, same answer; raising the weight only ever moves users to Batch.
    assert [bucket(i) for i in ids[:100]] == [bucket(i) for i in ids[:100]]
    for low, high in zip(cut.STAGES, cut.STAGES[1:], strict=False):
        assert all(goes_to_batch(i, high) for i in ids if goes_to_batch(i, low))


@settings(max_examples=200, deadline=None)
@given(
    users=st.lists(st.from_regex(r"[A-Za-z0-9_-]{1,24}", fullmatch=True), min_size=1, max_size=30),
    weights=st.lists(st.integers(0, 100), min_size=2, max_size=6),
)
def test_raising_the_weight_never_moves_a_user_back(users: list[str], weights: list[int]) -> None:
    ordered = sorted(weights)
    for user in users:
        sides = [goes_to_batch(user, w) for w in ordered]
        # False... then True...: at most one move, ECS -> Batch.
        assert sides == sorted(sides)


def s3_event(*keys: str) -> str:
    records = [
        {
            "eventSource": "aws:s3",
            "eventName": "ObjectCreated:Put",
            "s3": {"bucket": {"name": "gallery"}, "object": {"key": key, "size": 10}},
        }
        for key in keys
    ]
    return json.dumps({"Records": records})


def test_split_per_record_and_by_user() -> None:
    body = s3_event(image_key("alice", "a1.jpg"), image_key("bob", "b1.jpg"), "not/a/user/key")
    parts = split(body)
    assert [user for _, user in parts] == ["alice", "bob", None]
    assert all(len(json.loads(part)["Records"]) == 1 for part, _ in parts)
    assert split("not json") == [("not json", None)]
    single = message(1)
    assert split(single) == [(single, "u1")]


def test_weight_cache_is_at_most_a_minute_stale(env) -> None:
    names, aws = env.names, env.aws
    create_queues(names, aws)
    write_weight(names, 10, 1, aws)
    now = [0.0]
    router = Router(names, aws, cache_s=60, clock=lambda: now[0])
    assert router.weight() == 10
    write_weight(names, 50, 3, aws)
    now[0] = 59.0
    assert router.weight() == 10  # cached
    now[0] = 60.0
    assert router.weight() == 50
    with pytest.raises(ValueError, match="a minute"):
        Router(names, aws, cache_s=61)


def test_router_lambda_forwards_by_user_and_reports_partial_failures(env, monkeypatch) -> None:
    names, aws = env.names, env.aws
    urls = create_queues(names, aws)
    write_weight(names, 50, 3, aws)
    monkeypatch.setenv("FACEFLEET_PREFIX", names.prefix)
    monkeypatch.setenv("FACEFLEET_GROUPING_PREFIX", names.grouping_prefix)
    monkeypatch.setenv("WEIGHT_CACHE_S", "0")
    monkeypatch.setattr(lambda_router, "_router", None)
    users = [f"user{n}" for n in range(40)]
    records = [
        {
            "messageId": f"m{n}",
            "body": DetectionRequest(u, "img1", "bucket", image_key(u, "img1")).to_body(),
            "messageAttributes": {"trace": {"stringValue": f"t{n}", "dataType": "String"}},
        }
        for n, u in enumerate(users)
    ]
    records.append({"messageId": "bad", "body": "not json", "messageAttributes": {}})
    records.append(
        {
            "messageId": "s3",
            "body": s3_event(image_key("user1", "x.jpg"), image_key("user2", "y.jpg")),
        }
    )
    # One record whose send fails (an SQS outage for that call): reported, not lost.
    records.append({"messageId": "flaky", "body": message(7, "user-flaky")})
    router = lambda_router.router_from_env(os.environ)
    send = router._sqs.send_message

    def failing_send(**kwargs: Any) -> Any:
        if "user-flaky" in kwargs["MessageBody"]:
            raise ConnectionError("SQS unavailable")
        return send(**kwargs)

    monkeypatch.setattr(router._sqs, "send_message", failing_send)
    monkeypatch.setattr(lambda_router, "_router", router)
    result = lambda_router.handler({"Records": records}, None)
    assert result == {"batchItemFailures": [{"itemIdentifier": "flaky"}]}
    sqs = aws.client("sqs")

    def bodies(url: str) -> list[dict]:
        found = []
        while batch := sqs.receive_message(
            QueueUrl=url,
            MaxNumberOfMessages=10,
            VisibilityTimeout=60,
            MessageAttributeNames=["All"],
        ).get("Messages", []):
            found += batch
        return found

    on_batch = bodies(urls[names.indexing_queue])
    on_ecs = bodies(urls[names.ecs_indexing_queue])
    expected = users_by_side(users, 50)
    batch_users = {json.loads(m["Body"]).get("user_id") for m in on_batch} - {None}
    ecs_users = {json.loads(m["Body"]).get("user_id") for m in on_ecs if m["Body"] != "not json"}
    assert batch_users == set(expected[BATCH])
    assert ecs_users - {None} == set(expected[ECS])
    assert any(m["Body"] == "not json" for m in on_ecs)
    s3_parts = [m for m in on_batch + on_ecs if "Records" in m["Body"]]
    assert len(s3_parts) == 2
    assert all(
        m["MessageAttributes"]["trace"]["StringValue"].startswith("t")
        for m in on_batch
        if "user_id" in m["Body"]
    )


@pytest.fixture(scope="module")
def harness() -> None:
    prefect_harness()


def message(n: int, user: str = "u1") -> str:
    image_id = f"img{n:05d}"
    return DetectionRequest(user, image_id, "bucket", image_key(user, image_id)).to_body()


def test_cutover_flow_on_injected_metrics(env, harness) -> None:
    names, aws = env.names, env.aws
    urls = create_queues(names, aws)
    topic = aws.client("sns").create_topic(Name=names.alerts_topic)["TopicArn"]
    sink = aws.client("sqs").create_queue(QueueName=f"{names.prefix}-alerts-sink")
    aws.client("sns").subscribe(
        TopicArn=topic,
        Protocol="sqs",
        Endpoint=f"arn:aws:sqs:{aws.region}:123456789012:{names.prefix}-alerts-sink",
    )
    params = {
        "names": {"prefix": names.prefix, "grouping_prefix": names.grouping_prefix},
        "region": aws.region,
        "endpoint_url": aws.endpoint_url,
        "gates": {"soak_s": {str(w): 0 for w in cut.STAGES}},
    }
    assert cutover_flows.cutover(**params)["weight"] == 10  # started
    assert read_weight(names, aws) == 10
    # No Batch job has run yet: no evidence, hold.
    assert cutover_flows.cutover(**params)["action"] == "hold"
    cloudwatch = aws.client("cloudwatch")
    cloudwatch.put_metric_data(
        Namespace=names.metrics_namespace,
        MetricData=[
            {
                "MetricName": "JobsSubmitted",
                "Dimensions": [{"Name": "Service", "Value": "dispatch"}],
                "Value": 20.0,
            }
        ],
    )
    promoted = cutover_flows.cutover(**params)
    assert (promoted["action"], promoted["weight"]) == ("promote", 25)

    # The router now sends about a quarter of the users to Batch.
    router = Router(names, aws, cache_s=0)
    routed = [router.forward(message(n, f"user{n}")).parts[0][1] for n in range(40)]
    on_batch = routed.count(urls[names.indexing_queue])
    assert 0 < on_batch < 40 and routed.count(urls[names.ecs_indexing_queue]) == 40 - on_batch
    ((_, unread),) = split("not json")  # what `forward` does with a body it cannot read
    assert router.url(side_of(unread, router.weight())) == urls[names.ecs_indexing_queue]

    # Injected job failures: 5 of 20 jobs failed -> rollback, messages back to ECS, alert.
    cloudwatch.put_metric_data(
        Namespace="AWS/Events",
        MetricData=[
            {
                "MetricName": "TriggeredRules",
                "Dimensions": [{"Name": "RuleName", "Value": names.job_failed_rule}],
                "Value": 5.0,
            }
        ],
    )
    rolled = cutover_flows.cutover(**params)
    assert (rolled["action"], rolled["weight"], rolled["returned_to_ecs"]) == (
        "rollback",
        0,
        on_batch,
    )
    assert read_weight(names, aws) == 0
    sqs = aws.client("sqs")
    depth = sqs.get_queue_attributes(
        QueueUrl=urls[names.ecs_indexing_queue], AttributeNames=["ApproximateNumberOfMessages"]
    )
    assert depth["Attributes"]["ApproximateNumberOfMessages"] == "40"
    alerts = sqs.receive_message(QueueUrl=sink["QueueUrl"], WaitTimeSeconds=1)["Messages"]
    assert "rolled back" in json.loads(alerts[0]["Body"])["Subject"]
    # Stays at 0 until resumed; pause holds the weight.
    assert cutover_flows.cutover(**params)["weight"] == 0
    common = {k: params[k] for k in ("names", "region", "endpoint_url")}
    assert cutover_flows.resume_flow(**common)["status"] == cut.RUNNING
    assert cutover_flows.pause_flow(**common)["status"] == cut.PAUSED
    assert cutover_flows.cutover(**params)["action"] == "hold"
    assert cutover_flows.rollback_flow(reason="drill", **common)["weight"] == 0
