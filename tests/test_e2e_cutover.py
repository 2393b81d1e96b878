"""End to end, the cutover through the router on the local stack: several users upload at 10 %,
50 % and 100 %; the router process forwards each upload to the ECS queue or the Batch queue by
user. The "ECS side" is a plain detection worker reading the ECS queue (started here), the Batch
side the dispatch flow's local jobs. Each user's images all land on one side, the Batch side's
share of users tracks the weight, raising it never sends a user back. A gate breach (injected
failed Batch jobs) rolls back to 0 %: the waiting Batch messages return to the ECS queue, nothing
is processed by both sides, nothing is lost (every image's documents counted); resume starts
again at 10 %.

Prints one FIGURES line (users, images, per-side counts per stage, rollback counts)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from facefleet.common.documents import ImageStatus
from facefleet.control.cutover import machine as cut
from facefleet.control.router import BATCH, ECS, read_weight, users_by_side
from facefleet.flows import cutover as cutover_flows
from facefleet.infra.stack_config import worker_environment
from facefleet.tools.demo.gallery import Photo, lfw_bulk, requests, send, upload
from tests.e2e_support import (
    FAST_WORKER_ENV,
    ROOT,
    E2EStack,
    provision_stack,
    queue_counts,
    start_router,
    stop_process,
    wait_until,
)
from tests.flows_support import prefect_harness

USERS = [f"cut{n:02d}" for n in range(12)]
NO_COOLDOWN = {"cooldown_s": 0}
ROUNDS = 5  # uploads per user: at 10 %, 50 %, 100 %, waiting at the breach, 10 % after resume


@pytest.fixture(scope="module", autouse=True)
def harness() -> None:
    prefect_harness()


@pytest.fixture
def stack(env, tmp_path: Path, models_dir: Path, monkeypatch) -> Iterator[E2EStack]:
    monkeypatch.setenv("FACEFLEET_WORKDIR", str(ROOT))
    provisioned = provision_stack(env, tmp_path / "batch")
    provisioned.localize_jobs(models_dir)
    try:
        yield provisioned
    finally:
        provisioned.close()


def _processed(log: Path) -> list[tuple[str, str]]:
    """The (user, image) pairs a detection worker's JSON log says it processed."""
    ids: list[tuple[str, str]] = []
    if not log.exists():
        return ids
    for line in log.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("message") == "image processed":
            ids.append((str(record["user_id"]), str(record["image_id"])))
    return ids


class Sides:
    """The two consumers: the ECS stand-in's log, and the local Batch jobs' logs."""

    def __init__(self, stack: E2EStack, ecs_log: Path) -> None:
        self.stack, self.ecs_log = stack, ecs_log

    def ecs(self) -> list[tuple[str, str]]:
        return _processed(self.ecs_log)

    def batch(self) -> list[tuple[str, str]]:
        ids: list[tuple[str, str]] = []
        for child in self.stack.executor.children():
            if child.kind == "detection":
                ids += _processed(Path(child.log))
        return ids


def _params(stack: E2EStack) -> dict[str, Any]:
    names = stack.names
    return {
        "names": {"prefix": names.prefix, "grouping_prefix": names.grouping_prefix},
        "region": stack.env.region,
        "endpoint_url": stack.env.endpoint_url,
    }


def _jobs_finished(stack: E2EStack, count: float, failed: float = 0.0) -> None:
    """Evidence for the gates: the dispatch metric of finished jobs, and failed-job events."""
    cloudwatch = stack.env.aws.client("cloudwatch")
    cloudwatch.put_metric_data(
        Namespace=stack.names.metrics_namespace,
        MetricData=[
            {
                "MetricName": "JobsSubmitted",
                "Dimensions": [{"Name": "Service", "Value": "dispatch"}],
                "Value": count,
            }
        ],
    )
    if failed:
        cloudwatch.put_metric_data(
            Namespace="AWS/Events",
            MetricData=[
                {
                    "MetricName": "TriggeredRules",
                    "Dimensions": [{"Name": "RuleName", "Value": stack.names.job_failed_rule}],
                    "Value": failed,
                }
            ],
        )


def _promote_to(stack: E2EStack, weight: int, gates: dict[str, Any]) -> None:
    while read_weight(stack.names, stack.env.aws) < weight:
        _jobs_finished(stack, 10)
        result = cutover_flows.cutover(**_params(stack), gates=gates)
        assert result["action"] == "promote", result
    assert read_weight(stack.names, stack.env.aws) == weight


def test_cutover_by_user_through_the_router(
    stack: E2EStack, env, faces_dir: Path, models_dir: Path, tmp_path: Path
) -> None:
    names, aws, sqs = stack.names, env.aws, stack.sqs
    outputs = stack.outputs
    ingress, ecs_url, batch_url = (
        outputs["IngressQueueUrl"],
        outputs["EcsIndexingQueueUrl"],
        outputs["IndexingQueueUrl"],
    )
    gates = {"soak_s": {str(w): 0 for w in cut.STAGES}}

    # The router: a process of the local stack (the Lambda's stand-in), for this test's names.
    router = start_router(env.stack, names.prefix, tmp_path, WEIGHT_CACHE_S="0")
    # The ECS side: a plain detection worker on the ECS queue.
    ecs_log = tmp_path / "ecs-side.log"
    ecs_env = {
        **os.environ,
        **worker_environment(outputs),
        **FAST_WORKER_ENV,
        "QUEUE_URL": ecs_url,
        "AWS_ENDPOINT_URL": env.endpoint_url,
        "GALLERY_IMAGES_MONGO_URI": stack.gallery_uri,
        "HUEMN_MONGO_URI": stack.huemn_uri,
        "MODEL_DIR": str(models_dir),
        "IDLE_EXIT_SECONDS": "3600",
        "SERVICE_TYPE": "detection",
    }
    with ecs_log.open("ab") as out:
        ecs_side = subprocess.Popen(
            [sys.executable, "run_detection_service.py"],
            cwd=ROOT,
            env=ecs_env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    sides = Sides(stack, ecs_log)
    sides_ = (BATCH, ECS)
    # Distinct photos (and image ids) for every user: ROUNDS uploads each.
    bulk = lfw_bulk(faces_dir, ROUNDS * len(USERS), "pool")
    assert len(bulk) == ROUNDS * len(USERS), "not enough LFW photos"
    pool = {
        user: [
            Photo(user, p.image_id, p.path, p.identity) for p in bulk[n * ROUNDS : (n + 1) * ROUNDS]
        ]
        for n, user in enumerate(USERS)
    }
    used: dict[str, int] = dict.fromkeys(USERS, 0)
    figures: dict[str, Any] = {"users": len(USERS), "stages": []}
    all_photos: list[Photo] = []

    def upload_round() -> list[Photo]:
        photos = []
        for user in USERS:
            photos.append(pool[user][used[user]])
            used[user] += 1
        upload(photos, stack.bucket, aws)
        assert send(requests(photos, stack.bucket), ingress, aws) == len(photos)
        wait_until(lambda: queue_counts(sqs, ingress) == (0, 0), 60, "the router to forward")
        all_photos.extend(photos)
        return photos

    def done(photos: list[Photo]) -> bool:
        statuses = {}
        for user in {p.user_id for p in photos}:
            statuses.update(stack.image_statuses(user))
        return all(statuses.get(p.image_id, {}).get("status") == ImageStatus.DONE for p in photos)

    def process(photos: list[Photo]) -> None:
        stack.run_until_drained(NO_COOLDOWN, timeout=300)
        wait_until(
            lambda: queue_counts(sqs, ecs_url) == (0, 0) and done(photos),
            300,
            "the ECS side to finish",
            interval=1.0,
        )
        stack.run_until_drained(NO_COOLDOWN, timeout=300)  # grouping of the ECS side's faces

    def record(weight: int, photos: list[Photo], label: str, *, all_ecs: bool = False) -> None:
        """Check each photo was processed by exactly the side its user is on; add the figures."""
        ecs_ids, batch_ids = set(sides.ecs()), set(sides.batch())
        expected = users_by_side(USERS, 0 if all_ecs else weight)
        for photo in photos:
            pair = (photo.user_id, photo.image_id)
            side = BATCH if photo.user_id in expected[BATCH] else ECS
            assert (pair in batch_ids, pair in ecs_ids) == (side == BATCH, side == ECS), (
                label,
                pair,
                side,
            )
        users_on = {s: {p.user_id for p in photos if p.user_id in expected[s]} for s in sides_}
        figures["stages"].append(
            {
                "stage": label,
                "weight": weight,
                "images": len(photos),
                "users_batch": len(users_on[BATCH]),
                "users_ecs": len(users_on[ECS]),
                "images_batch": sum(p.user_id in expected[BATCH] for p in photos),
                "images_ecs": sum(p.user_id in expected[ECS] for p in photos),
            }
        )

    try:
        assert cutover_flows.cutover(**_params(stack), gates=gates)["action"] == "start"
        history: dict[int, set[str]] = {}
        for weight in (10, 50, 100):
            _promote_to(stack, weight, gates)
            photos = upload_round()
            # Where the router put them, before any consumer ran: one side per user.
            process(photos)
            record(weight, photos, f"{weight}%")
            batch_users = set(users_by_side(USERS, weight)[BATCH])
            history[weight] = batch_users
            share = len(batch_users) / len(USERS)
            assert abs(share - weight / 100) <= 0.25, (weight, share)
        # Raising the weight never sent a user back to ECS.
        assert history[10] <= history[50] <= history[100] == set(USERS)

        # A breach at 100 %: uploads wait on the Batch queue (no dispatch), then failed jobs.
        waiting = upload_round()
        assert queue_counts(sqs, batch_url)[0] == len(waiting)
        _jobs_finished(stack, 20, failed=10)
        rolled = cutover_flows.cutover(**_params(stack), gates=gates)
        assert (rolled["action"], rolled["weight"]) == ("rollback", 0), rolled
        assert rolled["returned_to_ecs"] == len(waiting)
        assert queue_counts(sqs, batch_url) == (0, 0)
        process(waiting)
        record(100, waiting, "100% rolled back", all_ecs=True)
        figures["rollback"] = {
            "waiting_on_batch": len(waiting),
            "returned_to_ecs": rolled["returned_to_ecs"],
            "processed_by_ecs": len(waiting),
        }

        # Resume: the cutover starts again at 10 %, with the same users as the first time.
        resumed = cutover_flows.resume_flow(**_params(stack))
        assert resumed["weight"] == 0
        restarted = cutover_flows.cutover(**_params(stack), gates=gates)
        assert (restarted["action"], restarted["weight"]) == ("start", 10), restarted
        photos = upload_round()
        process(photos)
        record(10, photos, "10% after resume")
        assert set(users_by_side(USERS, 10)[BATCH]) == history[10]

        # Nothing lost, nothing processed by both sides.
        totals = stack.assert_processed_once(all_photos)
        ecs_ids, batch_ids = set(sides.ecs()), set(sides.batch())
        assert not ecs_ids & batch_ids, f"processed by both sides: {sorted(ecs_ids & batch_ids)}"
        assert ecs_ids | batch_ids == {(p.user_id, p.image_id) for p in all_photos}
        figures["images"] = len(all_photos)
        figures["faces"] = totals["faces"]
        figures["processed_ecs"] = len(ecs_ids)
        figures["processed_batch"] = len(batch_ids)
        stack.assert_queues_empty()
        assert queue_counts(sqs, ecs_url) == (0, 0)
        print("FIGURES " + json.dumps(figures, sort_keys=True))
        (
            Path(os.environ.get("FACEFLEET_FIGURES_DIR", tmp_path)) / "cutover-figures.json"
        ).write_text(json.dumps(figures, indent=1, sort_keys=True))
    finally:
        stop_process(router)
        stop_process(ecs_side)
