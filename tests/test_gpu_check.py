"""benchmarks/gpu_check.sh on a host without a GPU: valid bash, and a dry run that names every
step (offline install from the carried wheels, the GPU check, every benchmark) and runs none."""

from __future__ import annotations

import subprocess
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.sh"


def test_gpu_check_parses_and_dry_runs(tmp_path: Path) -> None:
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)
    done = subprocess.run(
        [str(SCRIPT), "--dry-run"],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "VENV": str(tmp_path / "venv"), "HOME": str(tmp_path)},
    )
    assert done.returncode == 0, done.stderr
    steps = [line for line in done.stdout.splitlines() if line.startswith("would run:")]
    assert any("--no-index" in s and "gpu-requirements.txt" in s for s in steps)
    assert any("--no-deps" in s and "insightface" in s for s in steps)
    assert any("bench_detect.py" in s for s in steps)
    assert any("bench_phone.py" in s for s in steps)
    assert any("bench_group.py" in s for s in steps)
    assert not (tmp_path / "venv").exists()  # nothing was installed
    wrong = subprocess.run([str(SCRIPT), "--bogus"], capture_output=True, text=True, timeout=60)
    assert wrong.returncode == 2
