"""Retention against the moto server and nx-27017 (no model): the purge of inactive users (with
receipts, the active left alone, dry run, idempotence, the CLI), the tombstone window, the
automatic run at a grouping worker's start, and the settings' start-up errors."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from facefleet.common.config import ConfigError, Settings, load_service_settings
from facefleet.common.messages import DetectionRequest, EventOrder, now_ms
from facefleet.common.privacy import PrivacyRepository
from facefleet.common.s3keys import image_key
from facefleet.tools.cli import main as cli
from facefleet.worker.grouping.corrections import Corrections
from facefleet.worker.privacy import retention
from facefleet.worker.privacy.activity import ActivityRepository
from facefleet.worker.privacy.erasure import receipts_of
from facefleet.worker.privacy.retention import (
    DAY_MS,
    purge_inactive,
    purge_tombstones,
    run_if_due,
)
from tests.grouping_service_helpers import Setup, make_setup, people, store_for
from tests.test_privacy import _nothing_left, grouped_gallery


@pytest.fixture
def setup(env, monkeypatch) -> Setup:
    return make_setup(env, monkeypatch, max_receive_count=1)


def face_data(store: Any, user: str) -> tuple[int, int, int]:
    by_user = {"user_id": user}
    return (
        store.gallery.faces.count_documents(by_user),
        store.people.people.count_documents(by_user),
        store.assignments.count_documents(by_user),
    )


def snapshot(setup: Setup, users: list[str]) -> dict[str, Any]:
    store = store_for(setup.env)
    activity = ActivityRepository(store.gallery.faces.database)
    return {
        u: (face_data(store, u), people(setup.env, u), activity.last(u), len(receipts_of(store, u)))
        for u in users
    }


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = cli(["people", *argv])
    return code, capsys.readouterr().out


def test_purge_erases_inactive_users_only_with_receipts_and_once(
    setup: Setup, capsys: pytest.CaptureFixture[str]
) -> None:
    prefix = setup.env.names.prefix
    old, active, corrected, legacy = (f"{prefix}-{n}" for n in ("old", "active", "fixed", "legacy"))
    for user in (old, active, corrected, legacy):
        grouped_gallery(setup, user)
    store = store_for(setup.env)
    s3 = setup.env.aws.client("s3")
    activity = ActivityRepository(store.gallery.faces.database)
    current = now_ms()
    # Uploads: `old` and `corrected` last uploaded 800 days ago, `active` 10 days ago; `legacy`
    # has no record (indexed before it existed): its newest face and person are 900 days old.
    activity.touch({old: current - 800 * DAY_MS, corrected: current - 800 * DAY_MS})
    activity.touch({active: current - 10 * DAY_MS})
    stale = current - 900 * DAY_MS
    store.gallery.faces.update_many({"user_id": legacy}, {"$set": {"created_at": stale}})
    store.people.people.update_many({"user_id": legacy}, {"$set": {"updated_at": stale}})
    # `corrected` named a person today: a correction is an interaction.
    Corrections(store, s3=s3, bucket=setup.bucket).name(corrected, 1, "Cy")
    users = [old, active, corrected, legacy]
    before = snapshot(setup, users)

    # The dry run lists the two inactive users, oldest first, and writes nothing at all.
    code, out = run_cli(capsys, "purge-inactive", "--dry-run")
    assert code == 0, out
    report = json.loads(out)
    assert report["dry_run"] is True and report["purged"] == [legacy, old]
    assert report["receipts"] == [] and report["active"] == 1
    assert snapshot(setup, users) == before
    backfill = store.users.database["retention_runs"]
    assert backfill.find_one({"_id": "backfill"}) is None

    code, out = run_cli(capsys, "purge-inactive")
    assert code == 0, out
    report = json.loads(out)
    assert report["purged"] == [legacy, old] and len(report["receipts"]) == 2
    for user in (legacy, old):
        [receipt] = receipts_of(store, user)
        assert receipt["reason"] == "retention" and receipt["_id"] in report["receipts"]
        assert receipt["counts"]["gallery_faces"] == 12 == receipt["counts"]["huemn_assignments"]
        assert receipt["counts"]["huemn_people"] == 3
        assert _nothing_left(store, s3, setup.bucket, user)
        assert activity.last(user) is None
    for user in (active, corrected):
        assert snapshot(setup, [user])[user][:2] == before[user][:2]
        assert receipts_of(store, user) == []
    assert activity.last(active) == current - 10 * DAY_MS
    assert backfill.find_one({"_id": "backfill"}) is not None  # face data before the record: once
    assert activity.last(corrected) is not None and activity.last(corrected) >= current - DAY_MS

    # The erasure time is the last interaction: a redelivered old create stays blocked, a new
    # upload (the user is back) indexes normally.
    privacy = PrivacyRepository(store.gallery.faces.database)

    def create(at: int) -> DetectionRequest:
        return DetectionRequest(old, "late.jpg", "g", image_key(old, "late.jpg"), 1, at)

    assert privacy.blocked([create(current - 801 * DAY_MS)]) == ["user erased"]
    assert privacy.blocked([create(current)]) == [None]

    # Idempotent: the second run finds nobody and writes no receipt.
    after = snapshot(setup, users)
    code, out = run_cli(capsys, "purge-inactive")
    assert code == 0 and json.loads(out)["purged"] == [] and json.loads(out)["receipts"] == []
    assert snapshot(setup, users) == after


def test_purge_skips_a_user_whose_lease_a_worker_holds(setup: Setup) -> None:
    user = f"{setup.env.names.prefix}-busy"
    grouped_gallery(setup, user)
    store = store_for(setup.env)
    s3 = setup.env.aws.client("s3")
    ActivityRepository(store.gallery.faces.database).touch({user: now_ms() - 800 * DAY_MS})
    store.people.acquire_lease(user, "another-worker", timedelta(minutes=5))
    report = purge_inactive(store, s3, setup.bucket, days=730, owner="retention")
    assert report.held == [user] and report.purged == []
    assert face_data(store, user)[0] == 12
    store.people.release_lease(user, "another-worker")
    report = purge_inactive(store, s3, setup.bucket, days=730, owner="retention")
    assert report.purged == [user] and _nothing_left(store, s3, setup.bucket, user)


def test_a_tombstone_blocks_late_creates_until_its_window_ends(env) -> None:
    gallery = store_for(env).gallery.faces.database
    privacy = PrivacyRepository(gallery)
    user = f"{env.names.prefix}-tomb"
    deleted_at = now_ms()
    privacy.mark_deleted(user, "a.jpg", EventOrder(deleted_at))
    late = DetectionRequest(user, "a.jpg", "g", image_key(user, "a.jpg"), 1, deleted_at - 1)

    # 89 days on (inside the 90-day window, past the 56 days a message can live): kept, and a
    # late create of the deleted photo is still refused.
    assert purge_tombstones(gallery, days=90, now=deleted_at + 89 * DAY_MS) == 0
    assert privacy.blocked([late]) == ["photo deleted"]
    # Past the window: the dry run counts it, the run deletes it, the second run deletes nothing.
    past = deleted_at + 91 * DAY_MS
    assert purge_tombstones(gallery, days=90, now=past, dry_run=True) == 1
    assert privacy.tombstones.count_documents({"user_id": user}) == 1
    assert purge_tombstones(gallery, days=90, now=past) == 1
    assert privacy.tombstones.count_documents({"user_id": user}) == 0
    assert purge_tombstones(gallery, days=90, now=past) == 0


def test_the_grouping_worker_runs_the_purge_once_per_interval(setup: Setup, monkeypatch) -> None:
    user = f"{setup.env.names.prefix}-sched"
    grouped_gallery(setup, user)
    store = store_for(setup.env)
    s3 = setup.env.aws.client("s3")
    activity = ActivityRepository(store.gallery.faces.database)
    activity.touch({user: now_ms() - 800 * DAY_MS})
    PrivacyRepository(store.gallery.faces.database).mark_deleted(user, "x", EventOrder(1))
    store.gallery.faces.database["tombstones"].update_many({}, {"$set": {"written_at": 1}})

    monkeypatch.setenv("RETENTION_RUN_HOURS", "0")  # off: nothing happens
    assert run_if_due(store, s3, setup.bucket, Settings.from_env(), owner="w1") is None
    assert face_data(store, user)[0] == 12
    monkeypatch.setenv("RETENTION_RUN_HOURS", "24")
    # Out of time before the first user: nothing erased, and the run stays due for the next.
    monkeypatch.setattr(retention, "AUTO_RUN_SECONDS", 0.0)
    report = run_if_due(store, s3, setup.bucket, Settings.from_env(), owner="w0")
    assert report is not None and report.purged == [] and report.remaining == 1
    assert face_data(store, user)[0] == 12
    monkeypatch.setattr(retention, "AUTO_RUN_SECONDS", 120.0)
    report = run_if_due(store, s3, setup.bucket, Settings.from_env(), owner="w1")
    assert report is not None and report.purged == [user] and report.remaining == 0
    assert _nothing_left(store, s3, setup.bucket, user)
    assert store.gallery.faces.database["tombstones"].count_documents({"_id": f"{user}/x"}) == 0
    # Another worker starting within the interval does not run it again.
    activity.touch({f"{user}-2": 1})
    assert run_if_due(store, s3, setup.bucket, Settings.from_env(), owner="w2") is None
    assert activity.last(f"{user}-2") == 1


@pytest.mark.parametrize(
    ("variable", "value", "fragment"),
    [
        ("FACE_RECOGNITION_CONSENT", "maybe", "one of opt_out, opt_in"),
        ("RETENTION_INACTIVE_DAYS", "1200", "BIPA"),
        ("RETENTION_INACTIVE_DAYS", "0", "between 1 and 1095"),
        ("TOMBSTONE_RETENTION_DAYS", "30", "more than 56 days"),
        ("RETENTION_RUN_HOURS", "-1", "0 (no purge"),
    ],
)
def test_bad_privacy_settings_stop_the_worker_at_start_up(
    variable: str, value: str, fragment: str
) -> None:
    with pytest.raises(ConfigError, match=variable) as raised:
        load_service_settings("grouping", {variable: value})
    assert fragment in str(raised.value)


def test_defaults_and_the_cli_rejects_days_past_the_law(
    env, capsys: pytest.CaptureFixture[str], monkeypatch
) -> None:
    settings = Settings.from_env({})
    assert settings.face_recognition_consent == "opt_out"
    assert (settings.retention_inactive_days, settings.tombstone_retention_days) == (730, 90)
    assert Settings.from_env({"FACE_RECOGNITION_CONSENT": " OPT_IN "}).face_recognition_consent == (
        "opt_in"
    )
    monkeypatch.setenv("FACE_GROUP_BUCKET_NAME", "unused")
    code, out = run_cli(capsys, "purge-inactive", "--days", "2000", "--dry-run")
    assert code == 2 and out.startswith("error: --days 2000") and "BIPA" in out
    code, out = run_cli(capsys, "purge-tombstones", "--days", "10")
    assert code == 2 and "more than 56 days" in out


def test_the_grouping_process_refuses_to_start_past_the_law(env) -> None:
    root = Path(__file__).resolve().parents[1]
    environment = {**env.environment(), "RETENTION_INACTIVE_DAYS": "1500"}
    done = subprocess.run(
        [sys.executable, str(root / "run_grouping_service.py")],
        env={**environment, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode != 0
    assert "RETENTION_INACTIVE_DAYS='1500': must be between 1 and 1095 days (BIPA" in done.stderr
