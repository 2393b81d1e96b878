"""The main job (`facefleet demo`) on a small gallery, and its people report in a real headless
Chromium: the page loads, shows each user's people, and no image on it is broken."""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from facefleet.embedded import servers as local
from facefleet.tools.demo.run import DemoOptions, DemoSummary, run_demo

ROOT = Path(__file__).resolve().parents[1]
PEOPLE = ("deepface_p01", "deepface_p02", "fr_obama")
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def small_faces(shared: Path, target: Path) -> Path:
    """Three people with three photos each and one group photo, linked from the shared set."""
    for person in PEOPLE:
        folder = target / "gallery" / person
        folder.mkdir(parents=True)
        for photo in sorted((shared / "gallery" / person).iterdir())[:3]:
            (folder / photo.name).symlink_to(photo)
    (target / "groups").mkdir()
    (target / "groups" / "two_people.jpg").symlink_to(shared / "groups" / "two_people.jpg")
    (target / "lfw").mkdir()
    return target


@pytest.fixture(scope="module")
def options(
    tmp_path_factory: pytest.TempPathFactory, faces_dir: Path, models_dir: Path
) -> Iterator[DemoOptions]:
    root = tmp_path_factory.mktemp("demo")
    yield DemoOptions(
        state_dir=root / "state",
        out_dir=root / "report",
        faces_dir=small_faces(faces_dir, root / "faces"),
        model_pack_dir=models_dir,
        users=1,
        tick_s=3.0,
        timeout_s=600.0,
        keep_up=True,  # the rerun test uses the same stack
    )
    local.down(root / "state")


def run_in_repo(options: DemoOptions) -> DemoSummary:
    lines: list[str] = []
    monkey = pytest.MonkeyPatch()
    monkey.chdir(ROOT)  # jobs run `python3 run_*_service.py` from the repository root
    try:
        summary = run_demo(options, say=lines.append)
    finally:
        monkey.undo()
    return dataclasses.replace(summary, log=lines)


@pytest.fixture(scope="module")
def demo(options: DemoOptions) -> DemoSummary:
    return run_in_repo(options)


def test_demo_indexes_every_photo_and_groups_every_face(demo: DemoSummary) -> None:
    progress = demo.progress
    assert progress.images_expected == 3 * len(PEOPLE) + 1
    assert progress.images_done == progress.images_expected and progress.images_failed == 0
    assert progress.faces >= progress.images_expected  # the group photo has two
    assert progress.faces_grouped == progress.faces
    assert 1 <= progress.people <= progress.faces
    assert progress.jobs_active == 0, "the jobs scale back to zero"
    assert any(line.startswith("images ") for line in demo.log), "live counts while it runs"
    assert demo.dashboard.stat().st_size > 10_000
    assert "images_per_s=" in demo.line()


def test_report_in_headless_chromium_shows_people_and_no_broken_image(demo: DemoSummary) -> None:
    playwright = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.fail("Debian's chromium is missing: `make browser` installs it")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page()
        page.goto(demo.report.resolve().as_uri())
        page.wait_for_load_state("load")
        people = page.locator("section.person")
        assert people.count() == demo.progress.people
        assert page.locator("article.user").count() == 1
        images = page.eval_on_selector_all(
            "img", "els => els.map(e => [e.getAttribute('src'), e.complete && e.naturalWidth])"
        )
        faces = page.eval_on_selector_all("img.face", "els => els.length")
        dashboard = page.eval_on_selector_all(
            "details.dashboard img", "els => els.map(e => e.naturalWidth)"
        )
        links = page.eval_on_selector_all("a.photo", "els => els.map(e => e.href)")
        browser.close()
    assert images, "the report shows face crops"
    broken = [src for src, width in images if not width]
    assert not broken, f"broken images: {broken}"
    assert faces - demo.progress.people == demo.progress.faces  # covers repeat one member each
    assert dashboard and dashboard[0] > 0, "the dashboard picture is on the report"
    assert links and all(Path(link.removeprefix("file://")).is_file() for link in links)


def test_a_rerun_sends_nothing_again_and_changes_nothing(
    options: DemoOptions, demo: DemoSummary
) -> None:
    again = run_in_repo(dataclasses.replace(options, keep_up=False))
    assert not any(line.startswith("starting the local stack") for line in again.log)
    assert again.images_sent == 0
    assert again.progress == demo.progress
