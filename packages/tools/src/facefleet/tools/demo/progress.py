"""How far the indexing of a gallery has got: images, faces, people, queues and jobs, read from
the same stores the workers write, so the numbers cannot disagree with the report."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from pymongo.database import Database

from facefleet.common.aws import AwsTarget
from facefleet.common.documents import ImageStatus
from facefleet.common.names import Names
from facefleet.control.observe import QueueUrls, queue_depth


@dataclass(frozen=True)
class Progress:
    images_expected: int
    images_done: int
    images_failed: int
    faces: int
    faces_grouped: int
    people: int
    indexing_queued: int  # visible + in flight
    grouping_queued: int
    jobs_active: int

    @property
    def images_finished(self) -> int:
        return self.images_done + self.images_failed

    @property
    def complete(self) -> bool:
        """Every image finished, every face grouped (placed or waiting), both queues empty."""
        return (
            self.images_finished >= self.images_expected
            and self.faces_grouped >= self.faces
            and self.indexing_queued == 0
            and self.grouping_queued == 0
        )

    def line(self) -> str:
        return (
            f"images {self.images_finished}/{self.images_expected} "
            f"({self.images_failed} failed)  faces {self.faces} "
            f"(grouped {self.faces_grouped})  people {self.people}  "
            f"queued {self.indexing_queued}+{self.grouping_queued}  jobs {self.jobs_active}"
        )


def read_progress(
    gallery: Database[Any],
    huemn: Database[Any],
    users: Iterable[str],
    images_expected: int,
    urls: QueueUrls,
    aws: AwsTarget,
    jobs_active: int,
) -> Progress:
    scope = {"user_id": {"$in": sorted(set(users))}}

    def images(status: ImageStatus) -> int:
        return gallery["images"].count_documents({**scope, "status": str(status)})

    def queued(url: str) -> int:
        depth = queue_depth(url, aws)
        return depth.visible + depth.in_flight

    return Progress(
        images_expected=images_expected,
        images_done=images(ImageStatus.DONE),
        images_failed=images(ImageStatus.FAILED),
        faces=gallery["faces"].count_documents(scope),
        faces_grouped=huemn["assignments"].count_documents(scope),
        people=huemn["people"].count_documents(scope),
        indexing_queued=queued(urls.indexing),
        grouping_queued=queued(urls.group_face),
        jobs_active=jobs_active,
    )


def publish_queue_depth(progress: Progress, names: Names, aws: AwsTarget) -> None:
    """Stand in for the AWS/SQS metrics AWS publishes by itself and moto does not, so the
    dashboard's queue-depth panel has the demo's backlog to draw."""
    aws.client("cloudwatch").put_metric_data(
        Namespace="AWS/SQS",
        MetricData=[
            {
                "MetricName": "ApproximateNumberOfMessagesVisible",
                "Dimensions": [{"Name": "QueueName", "Value": queue}],
                "Value": float(depth),
                "Unit": "Count",
            }
            for queue, depth in (
                (names.indexing_queue, progress.indexing_queued),
                (names.group_face_queue, progress.grouping_queued),
            )
        ],
    )
