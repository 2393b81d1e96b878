"""Alerts: the SNS topic and the EventBridge rules for failed jobs and the stack's own Spot
interruptions."""

from __future__ import annotations

from typing import Any

from facefleet.common.names import RETRYABLE_EXIT_CODE
from facefleet.infra.stack_config import StackConfig
from facefleet.infra.template.base import Json, arn, get_att, policy_document, ref, tag_list

# How Batch words an attempt whose instance went away (the retry strategy matches it too).
SPOT_HOST_REASON = "Host EC2"


def alert_resources(config: StackConfig) -> Json:
    names = config.names
    topic: Json = {
        "Type": "AWS::SNS::Topic",
        "Properties": {"TopicName": names.alerts_topic, "Tags": tag_list(config)},
    }
    if config.alert_email:
        topic["Properties"]["Subscription"] = [
            {"Protocol": "email", "Endpoint": config.alert_email}
        ]
    job_queues = [ref("PrimaryJobQueue"), ref("SecondaryJobQueue")]
    return {
        "AlertsTopic": topic,
        "AlertsTopicPolicy": {
            "Type": "AWS::SNS::TopicPolicy",
            "Properties": {
                "Topics": [ref("AlertsTopic")],
                "PolicyDocument": policy_document(
                    [
                        {
                            "Sid": "EventBridgeRules",
                            "Effect": "Allow",
                            "Principal": {"Service": "events.amazonaws.com"},
                            "Action": "sns:Publish",
                            "Resource": ref("AlertsTopic"),
                            "Condition": {
                                "ArnEquals": {
                                    "aws:SourceArn": [
                                        get_att("JobFailedRule", "Arn"),
                                        get_att("SpotInterruptionRule", "Arn"),
                                    ]
                                }
                            },
                        },
                        {
                            # The policy replaces the topic's default one: without this the
                            # alarms' notifications (dashboards, router) are refused.
                            "Sid": "CloudWatchAlarms",
                            "Effect": "Allow",
                            "Principal": {"Service": "cloudwatch.amazonaws.com"},
                            "Action": "sns:Publish",
                            "Resource": ref("AlertsTopic"),
                            "Condition": {
                                "ArnLike": {"aws:SourceArn": arn("cloudwatch", "alarm:*")},
                                "StringEquals": {"aws:SourceAccount": ref("AWS::AccountId")},
                            },
                        },
                    ]
                ),
            },
        },
        "JobFailedRule": {
            "Type": "AWS::Events::Rule",
            "Properties": {
                "Name": names.job_failed_rule,
                "Description": "FaceFleet Batch job reached FAILED",
                "State": "ENABLED",
                "EventPattern": {
                    "source": ["aws.batch"],
                    "detail-type": ["Batch Job State Change"],
                    "detail": {"status": ["FAILED"], "jobQueue": job_queues},
                },
                "Targets": [{"Id": "alerts", "Arn": ref("AlertsTopic")}],
            },
        },
        "SpotInterruptionRule": {
            "Type": "AWS::Events::Rule",
            "Properties": {
                "Name": names.spot_interruption_rule,
                "Description": "FaceFleet Batch job put back by a Spot interruption",
                "State": "ENABLED",
                "EventPattern": spot_interruption_pattern(job_queues),
                "Targets": [{"Id": "alerts", "Arn": ref("AlertsTopic")}],
            },
        },
    }


def spot_interruption_pattern(job_queues: list[Any]) -> Json:
    """The stack's own Spot interruptions: one of its jobs back to RUNNABLE (a retry) after an
    attempt the instance's loss ended, either Batch's "Host EC2 (instance ...) terminated"
    reason or the worker's own early-stop exit on the Spot notice.

    Not EC2's "Spot Instance Interruption Warning": that event is account-wide and carries no
    tags, so it would count (and email) every team's interruptions. Only the job queues'
    retries are counted, and only these reach a retry (the retry strategy in batch.py exits
    on any other reason). The cutover gate, the alarm and the dashboard read this rule's
    TriggeredRules metric, so they count the same thing. EventBridge matches a field inside an
    array of objects when any element matches (EventBridge user guide, "Event patterns",
    arrays); Batch puts the attempts in `detail.attempts` (AWS Batch user guide, "Job state
    change events")."""
    return {
        "source": ["aws.batch"],
        "detail-type": ["Batch Job State Change"],
        "detail": {
            "jobQueue": job_queues,
            "status": ["RUNNABLE"],
            "$or": [
                {"attempts": {"statusReason": [{"prefix": SPOT_HOST_REASON}]}},
                {"attempts": {"container": {"exitCode": [RETRYABLE_EXIT_CODE]}}},
            ],
        },
    }
