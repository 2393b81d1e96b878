"""The local executor: array jobs as N processes with distinct AWS_BATCH_JOB_ARRAY_INDEX, the
retry strategy on the retryable exit code, and running children reported as active jobs."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from facefleet.common.names import RETRYABLE_EXIT_CODE
from facefleet.embedded.batch import JobSpec, LocalExecutor, local_command, new_job_id

RECORD = (
    "import json, os, sys; "
    "keys = ('AWS_BATCH_JOB_ARRAY_INDEX', 'AWS_BATCH_JOB_ATTEMPT', 'AWS_BATCH_JOB_ID', 'COLOUR'); "
    "out = os.path.join(sys.argv[1], os.environ.get('AWS_BATCH_JOB_ARRAY_INDEX', 'x') + '.json'); "
    "json.dump({k: os.environ.get(k) for k in keys} | {'pid': os.getpid()}, open(out, 'w'))"
)


def spec(command: tuple[str, ...], array_size: int | None = None, attempts: int = 3) -> JobSpec:
    return JobSpec(
        job_id=new_job_id(),
        job_name="test",
        kind="detection",
        job_queue="q",
        command=command,
        environment={"COLOUR": "blue"},
        array_size=array_size,
        attempts=attempts,
    )


def test_array_job_runs_n_processes_with_distinct_indexes(tmp_path: Path) -> None:
    executor = LocalExecutor(tmp_path / "batch")
    job = spec(("python3", "-c", RECORD, str(tmp_path)), array_size=3)
    assert len(executor.start(job)) == 3
    children = executor.wait(job.job_id, timeout=60)
    assert sorted(c.index for c in children) == [0, 1, 2]
    assert all(c.status == "SUCCEEDED" and c.attempt == 1 for c in children)
    seen = [json.loads((tmp_path / f"{i}.json").read_text()) for i in range(3)]
    assert [s["AWS_BATCH_JOB_ARRAY_INDEX"] for s in seen] == ["0", "1", "2"]
    assert {s["AWS_BATCH_JOB_ID"] for s in seen} == {f"{job.job_id}:{i}" for i in range(3)}
    assert len({s["pid"] for s in seen}) == 3
    assert all(s["COLOUR"] == "blue" and s["AWS_BATCH_JOB_ATTEMPT"] == "1" for s in seen)
    assert executor.active_jobs() == ()


def test_retries_on_the_retryable_exit_code_only(tmp_path: Path) -> None:
    executor = LocalExecutor(tmp_path / "batch")
    flaky = spec(
        (
            sys.executable,
            "-c",
            "import os, sys; "
            f"sys.exit({RETRYABLE_EXIT_CODE} if os.environ['AWS_BATCH_JOB_ATTEMPT'] == '1' "
            "else 0)",
        )
    )
    broken = spec((sys.executable, "-c", "import sys; sys.exit(3)"))
    executor.start(flaky)
    executor.start(broken)
    (done,) = executor.wait(flaky.job_id, timeout=60)
    assert (done.status, done.attempt, done.exit_codes) == (
        "SUCCEEDED",
        2,
        (RETRYABLE_EXIT_CODE, 0),
    )
    (failed,) = executor.wait(broken.job_id, timeout=60)
    assert (failed.status, failed.exit_codes) == ("FAILED", (3,))


def test_running_jobs_are_active_until_terminated(tmp_path: Path) -> None:
    executor = LocalExecutor(tmp_path / "batch")
    job = spec((sys.executable, "-c", "import time; time.sleep(60)"), array_size=2)
    executor.start(job)
    # Another executor over the same folder (the next dispatch tick) sees them too.
    other = LocalExecutor(tmp_path / "batch")
    assert [(j.kind, j.size) for j in other.active_jobs()] == [("detection", 2)]
    executor.terminate(job.job_id, grace=5)
    children = executor.wait(job.job_id, timeout=30)
    assert all(c.status == "FAILED" for c in children)  # cancelled: not retried
    assert other.active_jobs() == ()


def test_python3_means_this_environment() -> None:
    assert local_command(("python3", "run_detection_service.py")) == [
        sys.executable,
        "run_detection_service.py",
    ]


def test_the_containers_model_root_is_mounted_from_the_local_models(
    tmp_path: Path, monkeypatch
) -> None:
    """A job definition's MODEL_DIR is the image's path; a local job finds the pack where
    FACEFLEET_LOCAL_MODELS (stack.env) points, so `facefleet provision` then `facefleet flows
    serve` loads models without any rewrite of the job definitions."""
    from facefleet.common.names import MODEL_ROOT
    from facefleet.embedded.batch import environment_here
    from facefleet.embedded.servers import LOCAL_MODELS_ENV

    monkeypatch.setenv(LOCAL_MODELS_ENV, str(tmp_path / "models"))
    mapped = environment_here({"MODEL_DIR": f"{MODEL_ROOT}/facefleet-dev", "COLOUR": "blue"})
    assert mapped == {"MODEL_DIR": str(tmp_path / "models" / "facefleet-dev"), "COLOUR": "blue"}
    assert environment_here({"MODEL_DIR": "/elsewhere/pack"}) == {"MODEL_DIR": "/elsewhere/pack"}
    monkeypatch.delenv(LOCAL_MODELS_ENV)
    assert environment_here({"MODEL_DIR": f"{MODEL_ROOT}/x"}) == {"MODEL_DIR": f"{MODEL_ROOT}/x"}
