"""The embedded default's Batch: submitted jobs run as local worker processes.

moto records Batch jobs but, without Docker, marks them SUCCEEDED at once and runs nothing. So in
local mode the dispatch flow submits to moto (for the record) and hands the same job to this
executor, which runs the job definition's command (`python3 run_detection_service.py`) with the
job's environment, the way a Batch container would:

- an array job of size N is N child jobs, each with AWS_BATCH_JOB_ARRAY_INDEX set;
- each child runs under a small supervisor process (`python -m facefleet.embedded.batch
  supervise ...`) that applies the retry strategy: up to `attempts` tries with
  AWS_BATCH_JOB_ATTEMPT set, retrying on the retryable exit code (a worker that drained on
  SIGTERM) and on death by a signal (the local analogue of Batch's "Host EC2* terminated"
  reason, which the job definitions also retry);
- supervisors start in their own session, so jobs outlive the flow run that started them, and
  record their state in `STATE_DIR/jobs/<job id>/child-<index>.json`, so the next dispatch tick
  (another process) sees them as active jobs and the policy does not submit them again.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from facefleet.common.names import MODEL_ROOT, RETRYABLE_EXIT_CODE
from facefleet.control.policy import ActiveJob
from facefleet.embedded.servers import LOCAL_MODELS_ENV

DEFAULT_STATE_DIR = ".facefleet/local/batch"
STATE_DIR_ENV = "FACEFLEET_LOCAL_BATCH_DIR"
WORKDIR_ENV = "FACEFLEET_WORKDIR"
ACTIVE = ("STARTING", "RUNNING")
FINAL = ("SUCCEEDED", "FAILED")
CANCEL_FILE = "cancelled"


@dataclass(frozen=True)
class JobSpec:
    """One submitted job as the executor runs it."""

    job_id: str
    job_name: str
    kind: str
    job_queue: str
    command: tuple[str, ...]
    environment: Mapping[str, str] = field(default_factory=dict)
    array_size: int | None = None
    attempts: int = 5
    workdir: str = "."


@dataclass(frozen=True)
class ChildStatus:
    job_id: str
    kind: str
    job_queue: str
    index: int | None
    status: str
    attempt: int
    pid: int | None
    supervisor_pid: int | None
    exit_codes: tuple[int, ...] = ()
    log: str = ""

    @property
    def active(self) -> bool:
        return self.status in ACTIVE


def default_state_dir() -> Path:
    return Path(os.environ.get(STATE_DIR_ENV, DEFAULT_STATE_DIR))


def local_command(command: Sequence[str]) -> list[str]:
    """The job definition's command for this machine: `python3` means this environment's
    interpreter (the container's python3 has the worker installed; the system one may not)."""
    if command and Path(command[0]).name in {"python", "python3"}:
        return [sys.executable, *command[1:]]
    return list(command)


def environment_here(environment: Mapping[str, str]) -> dict[str, str]:
    """A job definition's environment for a process on this machine. A container finds the
    model packs under the image's model root; here they are where FACEFLEET_LOCAL_MODELS
    points (written to stack.env by `facefleet local up`): the analogue of a volume mount."""
    env = dict(environment)
    models = os.environ.get(LOCAL_MODELS_ENV)
    model_dir = env.get("MODEL_DIR", "")
    if models and (model_dir == MODEL_ROOT or model_dir.startswith(MODEL_ROOT + "/")):
        env["MODEL_DIR"] = models + model_dir[len(MODEL_ROOT) :]
    return env


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    temporary = path.with_suffix(f".{os.getpid()}.tmp")
    temporary.write_text(json.dumps(data))
    temporary.replace(path)


def _pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    with contextlib.suppress(OSError):
        # A zombie (exited, not yet reaped by its parent) is not running.
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    return True


class LocalExecutor:
    """Runs jobs as local processes and reports the ones still running."""

    def __init__(self, state_dir: str | Path | None = None) -> None:
        self.state_dir = Path(state_dir or default_state_dir()).resolve()
        self.jobs_dir = self.state_dir / "jobs"
        self.jobs_dir.mkdir(parents=True, exist_ok=True)
        self._supervisors: list[subprocess.Popen[bytes]] = []

    def start(self, spec: JobSpec) -> list[int]:
        """Start the job's supervisors (one per array child); return their pids."""
        job_dir = self.jobs_dir / spec.job_id
        job_dir.mkdir(parents=True, exist_ok=True)
        spec_path = job_dir / "spec.json"
        environment = environment_here(spec.environment)
        _write_json(spec_path, {**asdict(spec), "environment": environment})
        indexes: list[int | None] = list(range(spec.array_size)) if spec.array_size else [None]
        pids = []
        for index in indexes:
            name = "child" if index is None else f"child-{index}"
            _write_json(
                job_dir / f"{name}.json",
                {
                    "status": "STARTING",
                    "attempt": 0,
                    "pid": None,
                    "supervisor_pid": None,
                    "exit_codes": [],
                },
            )
            args = [
                sys.executable,
                "-m",
                "facefleet.embedded.batch",
                "supervise",
                str(spec_path),
            ]
            if index is not None:
                args += ["--index", str(index)]
            with (job_dir / f"{name}.supervisor.log").open("ab") as out:
                process = subprocess.Popen(
                    args,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                    cwd=spec.workdir,
                )
            (job_dir / f"{name}.pid").write_text(str(process.pid))
            self._supervisors.append(process)
            pids.append(process.pid)
        return pids

    def _reap(self) -> None:
        self._supervisors = [p for p in self._supervisors if p.poll() is None]

    def children(self, job_id: str | None = None) -> list[ChildStatus]:
        """Every child's last recorded state (a dead supervisor's child counts as FAILED)."""
        self._reap()
        found: list[ChildStatus] = []
        job_dirs = [self.jobs_dir / job_id] if job_id else sorted(self.jobs_dir.iterdir())
        for job_dir in job_dirs:
            spec_path = job_dir / "spec.json"
            if not spec_path.exists():
                continue
            spec = json.loads(spec_path.read_text())
            for path in sorted(job_dir.glob("child*.json")):
                try:
                    data = json.loads(path.read_text())
                except (OSError, ValueError):
                    continue  # being replaced right now; seen on the next read
                index = path.stem.split("-", 1)[1] if "-" in path.stem else None
                status = data["status"]
                supervisor = data.get("supervisor_pid")
                if supervisor is None:
                    with contextlib.suppress(OSError, ValueError):
                        supervisor = int(path.with_suffix(".pid").read_text())
                if status in ACTIVE and supervisor and not _pid_alive(supervisor):
                    status = "FAILED"  # the supervisor died without recording an outcome
                found.append(
                    ChildStatus(
                        job_id=spec["job_id"],
                        kind=spec["kind"],
                        job_queue=spec["job_queue"],
                        index=int(index) if index is not None else None,
                        status=status,
                        attempt=int(data.get("attempt", 0)),
                        pid=data.get("pid"),
                        supervisor_pid=supervisor,
                        exit_codes=tuple(data.get("exit_codes", ())),
                        log=str(path.with_suffix(".log")),
                    )
                )
        return found

    def active_jobs(self) -> tuple[ActiveJob, ...]:
        """Running children as the policy counts them: one ActiveJob per job, size = children."""
        counts: dict[tuple[str, str, str], int] = {}
        for child in self.children():
            if child.active:
                key = (child.job_id, child.kind, child.job_queue)
                counts[key] = counts.get(key, 0) + 1
        return tuple(ActiveJob(kind, queue, n) for (_, kind, queue), n in counts.items())

    def wait(self, job_id: str, timeout: float = 60.0) -> list[ChildStatus]:
        """Block until every child of a job has finished; raise TimeoutError naming the job."""
        deadline = time.monotonic() + timeout
        while True:
            children = self.children(job_id)
            if children and all(c.status in FINAL for c in children):
                return children
            if time.monotonic() > deadline:
                raise TimeoutError(f"local job {job_id} still running after {timeout:.0f} s")
            time.sleep(0.1)

    def terminate(self, job_id: str | None = None, grace: float = 10.0) -> None:
        """Stop a job (all jobs when None) without retries: SIGTERM, then SIGKILL."""
        targets = self.children(job_id)
        for child in targets:
            (self.jobs_dir / child.job_id / CANCEL_FILE).touch()
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for child in targets:
                if child.supervisor_pid and _pid_alive(child.supervisor_pid):
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(child.supervisor_pid, sig)
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline and any(
                _pid_alive(c.supervisor_pid) for c in targets
            ):
                self._reap()
                time.sleep(0.1)
        self._reap()


def new_job_id() -> str:
    return str(uuid.uuid4())


def _retryable(code: int) -> bool:
    return code == RETRYABLE_EXIT_CODE or code < 0


def supervise(spec_path: Path, index: int | None) -> int:
    """Run one (child) job to completion with the retry strategy; record its state."""
    spec = json.loads(spec_path.read_text())
    job_dir = spec_path.parent
    name = "child" if index is None else f"child-{index}"
    status_path = job_dir / f"{name}.json"
    log_path = job_dir / f"{name}.log"
    job_id = spec["job_id"] if index is None else f"{spec['job_id']}:{index}"
    exit_codes: list[int] = []
    current: subprocess.Popen[bytes] | None = None

    def record(status: str, attempt: int, pid: int | None) -> None:
        _write_json(
            status_path,
            {
                "status": status,
                "attempt": attempt,
                "pid": pid,
                "supervisor_pid": os.getpid(),
                "exit_codes": exit_codes,
            },
        )

    def forward(signum: int, _frame: Any) -> None:
        (job_dir / CANCEL_FILE).touch()
        if current is not None and current.poll() is None:
            current.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    record("STARTING", 0, None)
    attempts = max(1, int(spec.get("attempts", 1)))
    for attempt in range(1, attempts + 1):
        env = {
            **os.environ,
            **spec["environment"],
            "AWS_BATCH_JOB_ID": job_id,
            "AWS_BATCH_JOB_ATTEMPT": str(attempt),
            "AWS_BATCH_JQ_NAME": spec["job_queue"],
        }
        if index is not None:
            env["AWS_BATCH_JOB_ARRAY_INDEX"] = str(index)
        with log_path.open("ab") as out:
            out.write(f"--- {job_id} attempt {attempt} ---\n".encode())
            out.flush()
            current = subprocess.Popen(
                local_command(spec["command"]),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=spec.get("workdir") or None,
            )
            record("RUNNING", attempt, current.pid)
            code = current.wait()
        exit_codes.append(code)
        if code == 0:
            record("SUCCEEDED", attempt, None)
            return 0
        if (job_dir / CANCEL_FILE).exists() or not _retryable(code) or attempt == attempts:
            break
    record("FAILED", len(exit_codes), None)
    return 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m facefleet.embedded.batch")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("supervise", help="run one local Batch (child) job with retries")
    run.add_argument("spec", type=Path)
    run.add_argument("--index", type=int, default=None)
    args = parser.parse_args(argv)
    return supervise(args.spec, args.index)


if __name__ == "__main__":
    sys.exit(main())
