"""`facefleet demo`: the main job end to end on the embedded stack.

Local stack up -> the `provision` flow deploys the stack -> a gallery from ../shared/faces is
uploaded and its indexing messages sent -> the served `dispatch/local` deployment starts Batch
jobs (local processes) that detect and group -> live counts until everything is indexed and the
jobs have scaled back to zero -> a summary, the people report and a dashboard PNG.

A rerun is idempotent: on a stack that is still up (`--keep-up`), photos already indexed are not
sent again; a stack the demo starts itself begins empty, because moto keeps no state across
restarts and MongoDB data without its S3 crops would be half a gallery.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from facefleet.common.aws import AwsTarget
from facefleet.common.documents import ImageStatus
from facefleet.common.names import Names
from facefleet.common.repository import (
    GALLERY_DEFAULT_DB,
    HUEMN_DEFAULT_DB,
    GalleryRepository,
    PeopleRepository,
    connect,
)
from facefleet.control.cutover.machine import STAGES
from facefleet.control.observe import QueueUrls
from facefleet.control.router import write_weight
from facefleet.embedded import servers as local
from facefleet.embedded.batch import LocalExecutor
from facefleet.tools.demo.gallery import Photo, demo_gallery, requests, send, upload
from facefleet.tools.demo.progress import Progress, publish_queue_depth, read_progress
from facefleet.tools.demo.report import collect, write_report

DISPATCH_DEPLOYMENT = "dispatch/local"
# Workers exit this long after their queue runs dry: the demo shows the scale to zero.
DEMO_IDLE_EXIT_S = 15


class DemoError(RuntimeError):
    """The demo cannot run or did not finish; the message says why and where the logs are."""


@dataclass(frozen=True)
class DemoOptions:
    state_dir: Path = Path(".facefleet/demo")
    out_dir: Path = Path("out/demo")
    faces_dir: Path = Path("../shared/faces")
    model_pack_dir: Path = Path("../shared/models/facefleet-dev")
    users: int = 3
    tick_s: float = 10.0  # how often a dispatch run is requested while work remains
    timeout_s: float = 1800.0
    keep_up: bool = False


@dataclass(frozen=True)
class DemoSummary:
    progress: Progress
    users: int
    seconds: float
    report: Path
    dashboard: Path
    images_sent: int
    log: list[str] = field(default_factory=list)

    @property
    def images_per_s(self) -> float:
        return self.images_sent / self.seconds if self.seconds > 0 else 0.0

    def line(self) -> str:
        p = self.progress
        return (
            f"images={p.images_finished} failed={p.images_failed} faces={p.faces} "
            f"people={p.people} users={self.users} time_s={self.seconds:.1f} "
            f"images_per_s={self.images_per_s:.2f}"
        )


@contextmanager
def _environment_restored() -> Iterator[None]:
    """The demo points this process at its stack (os.environ); a caller that goes on after it
    (a test session, a shell tool) gets its own environment back, not the stopped stack's."""
    saved = dict(os.environ)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def run_demo(options: DemoOptions, say: Callable[[str], None] = print) -> DemoSummary:
    _check_inputs(options)
    with _environment_restored(), _stack(options, say) as state:
        local.apply_environment(state.environment())
        aws = AwsTarget.from_env(endpoint_url=state.moto_url)
        worker_env = _provision(options, aws, say)
        photos = demo_gallery(options.faces_dir, users=options.users)
        gallery_db = connect(os.environ["GALLERY_IMAGES_MONGO_URI"], GALLERY_DEFAULT_DB)
        huemn_db = connect(os.environ["HUEMN_MONGO_URI"], HUEMN_DEFAULT_DB)
        gallery = GalleryRepository(gallery_db)
        users = sorted({p.user_id for p in photos})
        say(f"uploading {len(photos)} photos of {len(users)} users to {worker_env['BUCKET_NAME']}")
        upload(photos, worker_env["BUCKET_NAME"], aws)
        todo = _not_indexed(photos, gallery)
        urls = QueueUrls(worker_env["QUEUE_URL"], worker_env["GROUP_FACE_QUEUE_URL"])
        started = time.monotonic()
        started_at = datetime.now(UTC)
        # Uploads go where producers write, the ingress queue; the stack's router process
        # forwards them. The demo plays a finished cutover: every user on Batch (100 %).
        names = Names()
        write_weight(names, 100, STAGES.index(100), aws)
        ingress = aws.client("sqs").get_queue_url(QueueName=names.ingress_queue)["QueueUrl"]
        sent = send(requests(todo, worker_env["BUCKET_NAME"]), ingress, aws)
        say(f"sent {sent} indexing messages ({len(photos) - sent} photos already indexed)")
        executor = LocalExecutor(Path(state.state_dir) / "batch")

        def progress() -> Progress:
            jobs = sum(1 for child in executor.children() if child.active)
            current = read_progress(gallery_db, huemn_db, users, len(photos), urls, aws, jobs)
            publish_queue_depth(current, Names(), aws)
            return current

        with _served_flows(options, state, executor), _this_prefect(state):
            finished = _watch(progress, options, say)
            seconds = time.monotonic() - started
            finished = _wait_for_zero_jobs(progress, say) or finished
        dashboard = _dashboard_png(options.out_dir / "dashboard.png", started_at, aws, say)
        report = write_report(
            collect(gallery, PeopleRepository(huemn_db)),
            options.out_dir,
            worker_env["FACE_GROUP_BUCKET_NAME"],
            aws,
            summary=f"{finished.line()}; {seconds:.0f} s",
            dashboard_png=dashboard.name,
        )
        return DemoSummary(finished, len(users), seconds, report, dashboard, sent)


def _check_inputs(options: DemoOptions) -> None:
    if not (options.faces_dir / "lfw").is_dir():
        raise DemoError(f"no face photos at {options.faces_dir} (expected lfw/, gallery/, groups/)")
    if not any(options.model_pack_dir.glob("*.onnx")):
        raise DemoError(f"no ONNX model pack at {options.model_pack_dir}")
    if not Path("run_detection_service.py").exists():
        raise DemoError("run the demo from the repository root (jobs run run_*_service.py)")


@contextmanager
def _stack(options: DemoOptions, say: Callable[[str], None]) -> Iterator[local.StackState]:
    health = local.status(options.state_dir)
    if not (health and all(health.values())):
        # Restart all or nothing: a fresh moto server holds nothing, so MongoDB starts empty too
        # (see the module docstring).
        local.down(options.state_dir)
        shutil.rmtree(options.state_dir / "mongo", ignore_errors=True)
        say(f"starting the local stack in {options.state_dir} (moto, nx-27017, Prefect)")
    state = local.up(options.state_dir)
    try:
        yield state
    finally:
        if options.keep_up:
            say(
                f"stack left up: source {options.state_dir}/{local.ENV_FILE}; "
                f"`facefleet local down --state-dir {options.state_dir}` stops it"
            )
        else:
            local.down(options.state_dir)


def _provision(options: DemoOptions, aws: AwsTarget, say: Callable[[str], None]) -> dict[str, str]:
    from facefleet.flows.provisioning import provision
    from facefleet.infra.stack_config import worker_environment

    say("provisioning the stack (CloudFormation on moto) and its dashboards")
    worker_settings = {
        "MODEL_DIR": str(options.model_pack_dir.resolve()),
        "MODEL_PACK": options.model_pack_dir.name,
        "IDLE_EXIT_SECONDS": str(DEMO_IDLE_EXIT_S),
        "METRICS_TO_CLOUDWATCH": "true",  # moto's CloudWatch feeds the dashboard PNG
    }
    result = provision(
        local=True,
        config={"worker_settings": worker_settings},
        region=aws.region,
        endpoint_url=aws.endpoint_url,
    )
    return worker_environment(result["outputs"])


def _not_indexed(photos: list[Photo], gallery: GalleryRepository) -> list[Photo]:
    done = set()
    for doc in gallery.images.find(
        {"user_id": {"$in": sorted({p.user_id for p in photos})}, "status": str(ImageStatus.DONE)},
        {"user_id": 1, "image_id": 1},
    ):
        done.add((doc["user_id"], doc["image_id"]))
    return [p for p in photos if (p.user_id, p.image_id) not in done]


@contextmanager
def _served_flows(
    options: DemoOptions, state: local.StackState, executor: LocalExecutor
) -> Iterator[None]:
    """`facefleet flows serve` in the background: the deployments' runs execute there."""
    log_path = Path(state.state_dir) / "flows-serve.log"
    command = [
        sys.executable,
        "-m",
        "facefleet.tools.cli",
        "flows",
        "serve",
        "--no-cutover-schedule",
        "--local-batch-dir",
        str(executor.state_dir),
    ]
    env = {**os.environ, "FACEFLEET_WORKDIR": os.getcwd(), "PREFECT_LOGGING_LEVEL": "INFO"}
    with log_path.open("ab") as log:
        server = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    try:
        with _this_prefect(state):
            _wait_for_deployment(server, log_path)
        yield
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
        executor.terminate()


@contextmanager
def _this_prefect(state: local.StackState) -> Iterator[None]:
    """The stack's Prefect server for this process's own client calls too: an enclosing Prefect
    settings context (a test harness, a profile) would otherwise win over PREFECT_API_URL."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: state.prefect_api_url}):
        yield


def _wait_for_deployment(server: subprocess.Popen[bytes], log_path: Path) -> None:
    from prefect.client.orchestration import get_client

    # Registering seven deployments takes seconds on a quiet machine, minutes on a loaded one.
    deadline = time.monotonic() + 300
    last: Exception | None = None
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise DemoError(f"`facefleet flows serve` exited {server.returncode}; see {log_path}")
        try:
            with get_client(sync_client=True) as prefect:
                prefect.read_deployment_by_name(DISPATCH_DEPLOYMENT)
            return
        except Exception as error:  # not registered yet (or the server is slow to answer)
            last = error
            time.sleep(1.0)
    raise DemoError(
        f"the {DISPATCH_DEPLOYMENT} deployment never appeared (last answer: {last!r}); "
        f"see {log_path}"
    )


class _Ticker:
    """Requests a dispatch run (what `prefect deployment run dispatch/local` does) every tick,
    never while the previous one is still running."""

    def __init__(self, tick_s: float) -> None:
        self.tick_s = tick_s
        self.last: Any = None
        self.last_at = -float("inf")

    def maybe_run(self) -> None:
        from prefect.client.orchestration import get_client
        from prefect.deployments import run_deployment

        if time.monotonic() - self.last_at < self.tick_s:
            return
        if self.last is not None:
            with get_client(sync_client=True) as prefect:
                state = prefect.read_flow_run(self.last.id).state
            if state is not None and not state.is_final():
                return
        self.last = run_deployment(DISPATCH_DEPLOYMENT, timeout=0)
        self.last_at = time.monotonic()


def _watch(
    progress: Callable[[], Progress], options: DemoOptions, say: Callable[[str], None]
) -> Progress:
    ticker = _Ticker(options.tick_s)
    deadline = time.monotonic() + options.timeout_s
    shown = ""
    while True:
        current = progress()
        if current.line() != shown:
            shown = current.line()
            say(shown)
        if current.complete:
            return current
        if time.monotonic() > deadline:
            raise DemoError(f"not finished after {options.timeout_s:.0f} s: {shown}")
        ticker.maybe_run()
        time.sleep(2.0)


def _wait_for_zero_jobs(
    progress: Callable[[], Progress], say: Callable[[str], None], timeout_s: float = 120.0
) -> Progress | None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        current = progress()
        if current.jobs_active == 0:
            say("all jobs exited: scaled to zero")
            return current
        time.sleep(2.0)
    say("jobs still running after the work was done; stopping them")
    return None


def _dashboard_png(path: Path, since: datetime, aws: AwsTarget, say: Callable[[str], None]) -> Path:
    from facefleet.dashboards.dashboard import build_dashboard
    from facefleet.tools.dashboard_render import render_dashboard

    end = datetime.now(UTC) + timedelta(minutes=1)
    start = min(since - timedelta(minutes=2), end - timedelta(minutes=15))
    dashboard = build_dashboard(Names(), aws.region)
    result = render_dashboard(dashboard, path, aws, start=start, end=end)
    say(f"dashboard: {result.path} ({result.panels} panels)")
    return result.path
