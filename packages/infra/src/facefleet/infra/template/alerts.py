"""Alerts: the SNS topic and the EventBridge rules for failed jobs and Spot interruptions."""

from __future__ import annotations

from facefleet.infra.stack_config import StackConfig
from facefleet.infra.template.base import Json, get_att, policy_document, ref, tag_list


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
                        }
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
                "Description": "EC2 Spot two-minute interruption warning",
                "State": "ENABLED",
                "EventPattern": {
                    "source": ["aws.ec2"],
                    "detail-type": ["EC2 Spot Instance Interruption Warning"],
                },
                "Targets": [{"Id": "alerts", "Arn": ref("AlertsTopic")}],
            },
        },
    }
