"""End to end, a bulk upload: N LFW photos for one user through the dispatch loop in local mode.

Every photo is processed exactly once (image done, each face stored once, crops in S3), nothing
is left on the queues or their dead-letter queues, the loop scales out (an array job on the
secondary queue while the backlog is large) and back to zero (a tick on empty queues submits
nothing, no local job left). Each tick's submissions are what `policy.decide` makes of the
inputs that tick observed.

CI runs 50 photos with the policy scaled down 100x (as in test_flows_dispatch), so 50 waiting
messages are a "large" backlog; the full-size run (`slow`; FACEFLEET_E2E_BULK photos, 2,000 by
default) uses the production policy with a 10 s cool-down. Both print the throughput.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from facefleet.control.policy import ActiveJob, DispatchInputs, PolicyParams, QueueDepth, decide
from facefleet.tools.demo.gallery import lfw_bulk
from tests.e2e_support import E2EStack, localized_stack

USER = "e2e-bulk"
CI_COUNT = 50
FULL_COUNT = int(os.environ.get("FACEFLEET_E2E_BULK", "2000"))
SCALED = {
    "images_per_job_minute": 1.0,
    "job_minutes": 10.0,
    "small_backlog": 10,
    "array_divisor": 10,
    "max_array_size": 10,
    "cooldown_s": 0,
}
PRODUCTION = {"cooldown_s": 10}


@pytest.fixture
def stack(env, tmp_path: Path, models_dir: Path, monkeypatch) -> Iterator[E2EStack]:
    # Several workers share two cores here: one inference thread each, not one per core each.
    yield from localized_stack(
        env, tmp_path, models_dir, monkeypatch, FACEFLEET_ORT_THREADS="1", BATCH_SIZE="10"
    )


def inputs_of(tick: dict[str, Any]) -> DispatchInputs:
    """The DispatchInputs a tick observed, back from its plain-data record."""
    seen = tick["inputs"]
    return DispatchInputs(
        indexing=QueueDepth(**seen["indexing"]),
        group_face=QueueDepth(**seen["group_face"]),
        active=tuple(ActiveJob(**job) for job in seen["active"]),
        now_s=seen["now_s"],
        last_submission_s=seen["last_submission_s"],
    )


@pytest.mark.parametrize(
    "count",
    [
        CI_COUNT,
        pytest.param(FULL_COUNT, marks=[pytest.mark.slow, pytest.mark.timeout(3600)], id="full"),
    ],
)
def test_bulk_upload_processed_exactly_once(stack: E2EStack, faces_dir: Path, count: int) -> None:
    policy = SCALED if count <= CI_COUNT else PRODUCTION
    photos = lfw_bulk(faces_dir, count, USER)
    assert len(photos) == count and len({p.image_id for p in photos}) == count
    assert stack.send_photos(photos) == count

    timeout = 240 if count <= CI_COUNT else max(600, count * 1.5)
    seconds = stack.run_until_drained(policy, timeout=timeout)

    totals = stack.assert_processed_once(photos)
    assignments, people = stack.assert_grouped(USER)
    assert assignments == totals["faces"]
    stack.assert_queues_empty()

    # Scaled out: the policy, given what each tick saw, made exactly that tick's submissions.
    params = PolicyParams(**policy)
    for tick in stack.ticks:
        decision = decide(inputs_of(tick), params, stack.names)
        assert [s["array_size"] for s in tick["submissions"]] == [
            s.array_size for s in decision.submissions
        ]
        assert [s["kind"] for s in tick["submissions"]] == [s.kind for s in decision.submissions]
    submissions = [s for tick in stack.ticks for s in tick["submissions"]]
    arrays = [s for s in submissions if s["array_size"]]
    assert arrays and all(s["job_queue"] == stack.names.secondary_queue.name for s in arrays)
    assert any(s["kind"] == "grouping" for s in submissions)
    children = stack.executor.children()
    failed = [c for c in children if c.status != "SUCCEEDED"]
    assert not failed, stack.report()

    # And back to zero.
    stack.assert_scaled_to_zero(policy)
    print(
        f"bulk: {count} photos, {totals['faces']} faces, {people} people; "
        f"{len(submissions)} submissions ({sum(s['array_size'] or 1 for s in submissions)} jobs, "
        f"largest array {max(s['array_size'] for s in arrays)}); "
        f"drained in {seconds:.1f} s = {count / seconds:.2f} images/s"
    )
