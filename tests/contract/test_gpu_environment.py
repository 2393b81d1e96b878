"""The GPU environment: the locked `gpu` extra holds onnxruntime-gpu and faiss-gpu and never the
CPU onnxruntime (both would write one `onnxruntime/` folder), and the image build fails unless
the CUDA execution provider is available inside it.

Proven here: the lock's resolution (`uv export`), that the Dockerfile runs the check, and that
the check fails on a CPU runtime (this machine's). Only a real build on a GPU host proves the
check passes there (and `CUDAExecutionProvider` loading needs the instance's driver).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "packages" / "infra" / "docker" / "Dockerfile"
CHECK = ROOT / "packages" / "infra" / "docker" / "check_gpu_runtime.py"


def _uv() -> str:
    found = shutil.which("uv") or str(Path.home() / ".local" / "bin" / "uv")
    if not Path(found).exists():
        pytest.fail("uv is needed to export the lock (make venv installs it)")
    return found


def _exported(extra: str) -> set[str]:
    """Distribution names the image's install (`--package facefleet-worker --extra X`) gets."""
    result = subprocess.run(
        [
            _uv(),
            "export",
            "--frozen",
            "--no-dev",
            "--no-hashes",
            "--no-emit-workspace",
            "--package",
            "facefleet-worker",
            "--extra",
            extra,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
        env={**os.environ, "UV_NO_SYNC": "1"},
    )
    names = set()
    for line in result.stdout.splitlines():
        match = re.match(r"^([A-Za-z0-9_.-]+)==", line)
        if match:
            names.add(match.group(1).lower().replace("_", "-"))
    return names


def test_gpu_extra_locks_the_gpu_runtime_only() -> None:
    gpu = _exported("gpu")
    assert {"onnxruntime-gpu", "faiss-gpu-cu12", "insightface"} <= gpu
    assert "onnxruntime" not in gpu, "insightface's onnxruntime would overwrite onnxruntime-gpu"
    assert "faiss-cpu" not in gpu


def test_cpu_extra_locks_the_cpu_runtime_only() -> None:
    cpu = _exported("cpu")
    assert {"onnxruntime", "faiss-cpu", "insightface"} <= cpu
    assert not {"onnxruntime-gpu", "faiss-gpu-cu12"} & cpu


def test_dockerfile_fails_the_build_without_the_cuda_provider() -> None:
    text = DOCKERFILE.read_text()
    runtime = text[text.index("AS runtime") :]
    venv_copied = runtime.index("/opt/facefleet/.venv /opt/facefleet/.venv")
    check = runtime.index("RUN python3 /tmp/check_gpu_runtime.py")
    assert venv_copied < check < runtime.index("USER facefleet")
    # The venv's python3 is on PATH when the check runs.
    assert runtime.index("ENV PATH=/opt/facefleet/.venv/bin") < check


def test_the_check_fails_on_a_cpu_runtime() -> None:
    """This machine has the CPU extra: the check must refuse it, naming the provider."""
    result = subprocess.run(
        [sys.executable, str(CHECK)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 1
    assert "CUDAExecutionProvider" in result.stderr
