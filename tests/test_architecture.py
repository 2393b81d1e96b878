"""The package boundaries, checked: import-linter contracts, and what each slim install pulls in."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ML_AND_EMULATORS = {
    "insightface",
    "onnxruntime",
    "onnxruntime-gpu",
    "faiss-cpu",
    "faiss-gpu-cu12",
    "opencv-python-headless",
    "scikit-learn",
    "moto",
    "nx-27017",
}


def _uv() -> str:
    found = shutil.which("uv") or str(Path.home() / ".local/bin/uv")
    if not Path(found).exists():
        pytest.skip("uv is not installed (make venv installs it)")
    return found


def _exported(package: str) -> set[str]:
    """Distribution names a `--no-dev` install of `package` resolves to, from the lock file."""
    out = subprocess.run(
        [_uv(), "export", "--package", package, "--no-dev", "--frozen", "--no-hashes"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    names = set()
    for line in out.splitlines():
        match = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?==", line)
        if match:
            names.add(match.group(1).lower().replace("_", "-"))
        elif line.startswith("-e ./"):  # a workspace member, by its folder
            names.add("facefleet-" + line.rstrip("/").rsplit("/", 1)[-1])
    return names


def test_import_contracts_hold() -> None:
    lint_imports = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run(
        [str(lint_imports), "--no-cache"], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    "package", ["facefleet-flows", "facefleet-control", "facefleet-infra", "facefleet-dashboards"]
)
def test_slim_packages_install_without_the_ml_stack_or_emulators(package: str) -> None:
    names = _exported(package)
    assert "boto3" in names  # the export did resolve something
    assert not names & ML_AND_EMULATORS, sorted(names & ML_AND_EMULATORS)


def test_flows_install_carries_prefect_but_not_the_worker() -> None:
    names = _exported("facefleet-flows")
    assert {"prefect", "prefect-aws"} <= names
    assert {"facefleet-control", "facefleet-infra", "facefleet-dashboards"} <= names
    assert not names & {"facefleet-worker", "facefleet-embedded", "facefleet-tools"}


def test_dashboards_and_flows_installs_draw_nothing() -> None:
    """The PNG renderer is a tool (`facefleet.tools.dashboard_render`): the flows image, which
    applies dashboards, carries no plotting library."""
    for package in ("facefleet-flows", "facefleet-dashboards"):
        names = _exported(package)
        assert "boto3" in names  # the export did resolve something
        assert "matplotlib" not in names, package
    assert "matplotlib" in _exported("facefleet-tools")


def test_control_core_is_common_and_boto3_only() -> None:
    names = _exported("facefleet-control")
    assert "prefect" not in names
    assert names <= {
        "facefleet-common",
        "facefleet-control",
        "boto3",
        "botocore",
        "jmespath",
        "s3transfer",
        "python-dateutil",
        "six",
        "urllib3",
        "pymongo",
        "dnspython",
        "numpy",
    }, sorted(names)


MEMBERS = {
    "common": ROOT / "packages/common",
    "control": ROOT / "packages/control",
    "worker": ROOT / "packages/worker",
    "infra": ROOT / "packages/infra",
    "embedded": ROOT / "packages/embedded",
    "flows": ROOT / "packages/flows",
    "tools": ROOT / "packages/tools",
    "dashboards": ROOT / "dashboards",
}


def _declared(member: str) -> set[str]:
    """The facefleet packages `member`'s pyproject depends on, extras included."""
    import tomllib

    project = tomllib.loads((MEMBERS[member] / "pyproject.toml").read_text())["project"]
    requirements = list(project.get("dependencies", []))
    for extra in project.get("optional-dependencies", {}).values():
        requirements += extra
    names = {re.split(r"[\s\[<>=;]", r, maxsplit=1)[0] for r in requirements}
    return {n.removeprefix("facefleet-") for n in names if n.startswith("facefleet-")}


def _imported(member: str) -> set[str]:
    import ast

    found: set[str] = set()
    for path in (MEMBERS[member] / "src").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                modules = [node.module]
            else:
                continue
            found |= {m.split(".")[1] for m in modules if m.startswith("facefleet.")}
    return found - {member}


@pytest.mark.parametrize("member", sorted(MEMBERS))
def test_every_facefleet_import_is_a_declared_dependency(member: str) -> None:
    assert _imported(member) <= _declared(member), sorted(_imported(member) - _declared(member))


def test_cli_subcommand_modules_come_from_declared_packages() -> None:
    from facefleet.tools.cli import COMMAND_MODULES

    packages = {m.split(".")[1] for m in COMMAND_MODULES}
    assert packages <= _declared("tools") | {"tools"}, sorted(packages)


def test_lambda_handler_is_a_real_import_of_a_declared_package() -> None:
    from facefleet.control import lambda_dispatch
    from facefleet.infra import lambda_package

    assert lambda_dispatch.__name__ == lambda_package.HANDLER_MODULE
    assert "control" in _declared("infra")
