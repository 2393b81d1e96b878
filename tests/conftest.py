"""Session-wide real servers (moto server, nx-27017) and a clean namespace per test.

The servers are started once per session by the same code as `facefleet local up`; each test gets
its own resource-name prefix and its own MongoDB databases, so tests never see each other's data.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from facefleet.common.aws import AwsTarget
from facefleet.common.names import Names
from facefleet.embedded import servers as local

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("FACEFLEET_SHARED", ROOT.parent / "shared")).resolve()
MODELS_DIR = SHARED / "models" / "facefleet-dev"
FACES_DIR = SHARED / "faces"

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--run-slow", action="store_true", help="run full-size end-to-end tests")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--run-slow") or os.environ.get("FACEFLEET_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="full-size run: use --run-slow or FACEFLEET_SLOW=1")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def local_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[local.StackState]:
    """The moto server and nx-27017, started once for the whole session."""
    state_dir = tmp_path_factory.mktemp("stack")
    with local.running(state_dir, ("moto", "mongo")) as state:
        yield state


@dataclass(frozen=True)
class ServerEnv:
    """One test's view of the servers: endpoints, a unique namespace and its own databases."""

    stack: local.StackState
    namespace: str

    @property
    def names(self) -> Names:
        return replace(Names.for_prefix(f"t{self.namespace}"), stack_name=f"t{self.namespace}")

    @property
    def endpoint_url(self) -> str:
        return self.stack.moto_url

    @property
    def region(self) -> str:
        return local.LOCAL_AWS_ENV["AWS_DEFAULT_REGION"]

    @property
    def aws(self) -> AwsTarget:
        return AwsTarget(self.region, self.endpoint_url)

    @property
    def gallery_uri(self) -> str:
        return f"{self.stack.mongo_uri}/gallery_{self.namespace}"

    @property
    def huemn_uri(self) -> str:
        return f"{self.stack.mongo_uri}/huemn_{self.namespace}"

    def environment(self) -> dict[str, str]:
        env = self.stack.environment()
        env.pop(local.STATE_DIR_ENV)  # tests provision many stacks: none writes the session's
        env["GALLERY_IMAGES_MONGO_URI"] = self.gallery_uri
        env["HUEMN_MONGO_URI"] = self.huemn_uri
        env["METRICS_TO_CLOUDWATCH"] = "false"
        return env


@pytest.fixture
def env(local_servers: local.StackState, monkeypatch: pytest.MonkeyPatch) -> ServerEnv:
    """Point boto3 and the settings at the session's servers, with a fresh namespace."""
    test_env = ServerEnv(local_servers, uuid.uuid4().hex[:10])
    for key, value in test_env.environment().items():
        monkeypatch.setenv(key, value)
    return test_env


@pytest.fixture(scope="session")
def models_dir() -> Path:
    if not MODELS_DIR.is_dir():
        pytest.fail(f"the dev model pack is missing at {MODELS_DIR} (set FACEFLEET_SHARED)")
    return MODELS_DIR


@pytest.fixture(scope="session")
def faces_dir() -> Path:
    if not FACES_DIR.is_dir():
        pytest.fail(f"the face photos are missing at {FACES_DIR} (set FACEFLEET_SHARED)")
    return FACES_DIR
