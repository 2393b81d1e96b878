"""Every name and URL the workers and dispatch use comes from the stack outputs or Settings,
never rebuilt from the prefix: rendered with the existing service's queues (other names, other
accounts), the job definitions, the dispatcher's environment, the outputs and the alarms carry
those queues; on moto, one flow dispatch tick finds its backlog on a foreign-named queue whose
prefix-named twin does not exist. (The Lambda tick and the worker batches on foreign-named
queues run in test_least_privilege.py.)
"""

from __future__ import annotations

import json
from dataclasses import asdict

from facefleet.common.names import NAMES
from facefleet.control import observe
from facefleet.dashboards.alarms import AlarmQueues, build_alarms
from facefleet.flows.dispatch import dispatch
from facefleet.infra import lambda_package, template
from facefleet.infra.stack_config import worker_environment
from tests.contract.conftest import EXISTING_GROUP_FACE, EXISTING_INDEXING, PRODUCTION
from tests.flows_support import create_batch, prefect_harness


def _rendered() -> dict:
    return template.render(PRODUCTION, lambda_package.build())


def test_job_definitions_and_dispatcher_carry_the_existing_queue_urls() -> None:
    rendered = _rendered()
    for logical_id in ("DetectionJobDefinition", "GroupingJobDefinition"):
        container = rendered["Resources"][logical_id]["Properties"]["ContainerProperties"]
        env = {e["Name"]: e["Value"] for e in container["Environment"]}
        assert env["QUEUE_URL"] == EXISTING_INDEXING
        assert env["GROUP_FACE_QUEUE_URL"] == EXISTING_GROUP_FACE
    variables = rendered["Resources"]["DispatchFunction"]["Properties"]["Environment"]["Variables"]
    assert variables["QUEUE_URL"] == EXISTING_INDEXING
    assert variables["GROUP_FACE_QUEUE_URL"] == EXISTING_GROUP_FACE
    outputs = {k: v["Value"] for k, v in rendered["Outputs"].items()}
    assert worker_environment(outputs)["QUEUE_URL"] == EXISTING_INDEXING
    # The prefix's queue names appear nowhere in the production template.
    text = template.to_json(rendered)
    assert NAMES.indexing_queue not in text and NAMES.group_face_queue not in text


def test_the_dispatcher_has_no_reserved_concurrency() -> None:
    function = _rendered()["Resources"]["DispatchFunction"]["Properties"]
    assert "ReservedConcurrentExecutions" not in function


def test_alarms_watch_the_existing_queues() -> None:
    alarms = build_alarms(
        NAMES, queues=AlarmQueues.from_urls(EXISTING_INDEXING, EXISTING_GROUP_FACE)
    )
    dimensions = {
        value
        for alarm in alarms
        for series in alarm.metric_series()
        for name, value in series.dimensions
        if name == "QueueName"
    }
    assert dimensions == {"ve-inhouse-indexing", "GroupFace"}


def test_a_flow_tick_dispatches_from_foreign_named_queues(env, monkeypatch) -> None:
    prefect_harness()
    names = env.names
    create_batch(names, env.aws)
    sqs = env.aws.client("sqs")
    indexing = sqs.create_queue(QueueName=f"{names.prefix}-ve-inhouse-indexing")["QueueUrl"]
    group_face = sqs.create_queue(QueueName=f"{names.prefix}GroupFace")["QueueUrl"]
    for i in range(3):
        sqs.send_message(QueueUrl=indexing, MessageBody=json.dumps({"n": i}))
    monkeypatch.setenv("QUEUE_URL", indexing)
    monkeypatch.setenv("GROUP_FACE_QUEUE_URL", group_face)
    # No queue under the prefix's names exists, so nothing can have looked them up.
    assert names.indexing_queue not in str(sqs.list_queues(QueueNamePrefix=names.prefix))

    result = dispatch(
        names=asdict(names), mode="aws", region=env.region, endpoint_url=env.endpoint_url
    )

    assert result["jobs"] == 1 and result["job_ids"], result
    assert result["inputs"]["indexing"]["visible"] == 3


def test_without_urls_or_a_stack_dispatch_names_what_is_missing(env) -> None:
    try:
        observe.queue_urls(env.names, env.aws)
    except observe.QueueUrlsMissing as error:
        assert "QUEUE_URL" in str(error) and "GROUP_FACE_QUEUE_URL" in str(error)
    else:
        raise AssertionError("queue URLs were invented")


def test_the_cutover_finds_its_queues_from_the_stack_outputs(env) -> None:
    """Rollback returns waiting Batch messages to the ECS queue, and the dead-letter gate counts
    the Batch queue's DLQ (found from its RedrivePolicy), on queues whose names the prefix
    would never give."""
    from facefleet.control.cutover import effects, health

    names = env.names
    sqs = env.aws.client("sqs")
    dlq = sqs.create_queue(QueueName=f"{names.prefix}-elsewhere-dlq")["QueueUrl"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    redrive = json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": 5})
    batch = sqs.create_queue(
        QueueName=f"{names.prefix}-batch-elsewhere", Attributes={"RedrivePolicy": redrive}
    )["QueueUrl"]
    ecs = sqs.create_queue(QueueName=f"{names.prefix}-ecs-elsewhere")["QueueUrl"]
    body = {
        "Resources": {"Marker": {"Type": "AWS::SNS::Topic"}},
        "Outputs": {"IndexingQueueUrl": {"Value": batch}, "EcsIndexingQueueUrl": {"Value": ecs}},
    }
    env.aws.client("cloudformation").create_stack(
        StackName=names.stack_name, TemplateBody=json.dumps(body)
    )
    for i in range(3):
        sqs.send_message(QueueUrl=batch, MessageBody=json.dumps({"n": i}))
    sqs.send_message(QueueUrl=dlq, MessageBody="dead")
    assert names.indexing_queue not in str(sqs.list_queues(QueueNamePrefix=names.prefix))

    assert health.dead_letter_count(names, env.aws) == 1
    assert effects.return_to_ecs(names, env.aws) == 3
    assert observe.queue_depth(ecs, env.aws).visible == 3
    assert observe.queue_depth(batch, env.aws).visible == 0
