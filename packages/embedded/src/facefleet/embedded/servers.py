"""The embedded local stack: moto server (AWS), nx-27017 (MongoDB wire protocol on SQLite),
Prefect's local server and the cutover router (the router Lambda's stand-in: it forwards the
ingress queue to the ECS or Batch queue by user, `facefleet.control.router_process`), each a
child process on loopback with state in a folder the user names.

Ports are taken from the OS (bind to port 0), so two stacks never collide; `stack.json` records
ports and process groups so `down` and `status` work from another shell, and `stack.env` holds
the environment a worker or flow needs (`source STATE/stack.env`).
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pymongo import MongoClient

from facefleet.control import router_process

LOOPBACK = "127.0.0.1"
# The router last: it talks to the moto server (and waits for the provisioned queues).
SERVICES = ("moto", "mongo", "prefect", "router")
ROUTER_PREFIX_ENV = "FACEFLEET_PREFIX"
STATE_FILE = "stack.json"
ENV_FILE = "stack.env"

# Dummy credentials: the moto server accepts any; real ones must never be needed locally.
LOCAL_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}
QUIET_ENV = {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"}


class StackError(RuntimeError):
    """A local service failed to start or answer; the message names it and its log file."""


@dataclass
class ServiceProcess:
    name: str
    port: int
    pid: int
    log: str


# Where the local Batch executor finds the model packs that a container has under its model
# root (the analogue of a volume mount): `$FACEFLEET_SHARED/models`, else ../shared/models.
LOCAL_MODELS_ENV = "FACEFLEET_LOCAL_MODELS"
STATE_DIR_ENV = "FACEFLEET_LOCAL_STATE_DIR"


def local_models_root() -> Path | None:
    shared = Path(os.environ.get("FACEFLEET_SHARED", "../shared"))
    models = (shared / "models").resolve()
    return models if models.is_dir() else None


@dataclass
class StackState:
    state_dir: str
    services: dict[str, ServiceProcess] = field(default_factory=dict)
    # The worker environment of the infra stack provisioned on these servers (queue URLs,
    # buckets, ...), recorded by the provision flow so `source stack.env` gives all of it.
    worker_env: dict[str, str] = field(default_factory=dict)

    @property
    def moto_url(self) -> str:
        return f"http://{LOOPBACK}:{self.services['moto'].port}"

    @property
    def mongo_uri(self) -> str:
        return f"mongodb://{LOOPBACK}:{self.services['mongo'].port}"

    @property
    def prefect_api_url(self) -> str:
        return f"http://{LOOPBACK}:{self.services['prefect'].port}/api"

    def environment(self) -> dict[str, str]:
        """What a worker or flow needs to talk to this stack (queue/bucket names come later,
        from the provisioned infra stack)."""
        env = {**LOCAL_AWS_ENV, **QUIET_ENV, **self.worker_env}
        env[STATE_DIR_ENV] = str(self.state_dir)
        models = local_models_root()
        if models is not None:
            env[LOCAL_MODELS_ENV] = str(models)
        if "moto" in self.services:
            env["AWS_ENDPOINT_URL"] = self.moto_url
            env["METRICS_TO_CLOUDWATCH"] = "true"
        if "mongo" in self.services:
            env["GALLERY_IMAGES_MONGO_URI"] = f"{self.mongo_uri}/gallery_images"
            env["HUEMN_MONGO_URI"] = f"{self.mongo_uri}/huemn"
        if "prefect" in self.services:
            env["PREFECT_API_URL"] = self.prefect_api_url
            env["PREFECT_HOME"] = str(Path(self.state_dir) / "prefect")
        return env

    def save(self) -> None:
        directory = Path(self.state_dir)
        (directory / STATE_FILE).write_text(json.dumps(asdict(self), indent=2))
        lines = [f"export {k}={shlex.quote(v)}" for k, v in sorted(self.environment().items())]
        (directory / ENV_FILE).write_text("\n".join(lines) + "\n")

    @classmethod
    def load(cls, state_dir: str | Path) -> StackState | None:
        path = Path(state_dir) / STATE_FILE
        if not path.exists():
            return None
        data = json.loads(path.read_text())
        services = {k: ServiceProcess(**v) for k, v in data["services"].items()}
        worker_env = dict(data.get("worker_env", {}))
        return cls(state_dir=data["state_dir"], services=services, worker_env=worker_env)


def record_worker_environment(state_dir: str | Path, worker_env: Mapping[str, str]) -> bool:
    """Add a provisioned stack's worker environment to the local stack's stack.env; False when
    there is no local stack in `state_dir`."""
    state = StackState.load(state_dir)
    if state is None:
        return False
    state.worker_env = dict(worker_env)
    state.save()
    return True


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def _bin(name: str) -> str:
    """A console script of this environment (the venv running us), not whatever is on PATH."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


def service_command(service: str, port: int, state_dir: Path) -> list[str]:
    """The command line of one service of the stack (tests start extra routers with it)."""
    if service == "moto":
        return [_bin("moto_server"), "-H", LOOPBACK, "-p", str(port)]
    if service == "mongo":
        data = state_dir / "mongo"
        data.mkdir(exist_ok=True)
        return [
            _bin("nx-27017"),
            "--host",
            LOOPBACK,
            "-p",
            str(port),
            "--data-dir",
            str(data),
            "--pid-file",
            str(state_dir / "mongo.pid"),
            "--log-file",
            str(state_dir / "mongo.log"),
        ]
    if service == "prefect":
        return [_bin("prefect"), "server", "start", "--host", LOOPBACK, "--port", str(port)]
    if service == "router":
        return [sys.executable, "-m", router_process.__name__]
    raise ValueError(f"unknown service {service!r}; expected one of {SERVICES}")


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(200 <= response.status < 300)
    except OSError:
        return False


def _mongo_ok(port: int) -> bool:
    client: MongoClient[dict[str, object]] = MongoClient(
        LOOPBACK, port, serverSelectionTimeoutMS=1000, connectTimeoutMS=1000
    )
    try:
        client.admin.command("ping")
        return True
    except Exception:
        return False
    finally:
        client.close()


def _ready(service: str, port: int) -> bool:
    if service == "router":
        return True  # no port: alive is ready (it waits for its queues itself)
    if service == "moto":
        # The static dashboard page: data.json serializes every backend and slows with the state.
        return _http_ok(f"http://{LOOPBACK}:{port}/moto-api/")
    if service == "mongo":
        return _mongo_ok(port)
    return _http_ok(f"http://{LOOPBACK}:{port}/api/health")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    with contextlib.suppress(ChildProcessError):
        # Reap it if it is our own exited child, so a zombie does not count as alive.
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    return True


def _wait(check: Callable[[], bool], pid: int, timeout: float, what: str, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        if not _alive(pid):
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise StackError(f"{what} exited during start-up; see {log}:\n{tail}")
        time.sleep(0.2)
    raise StackError(f"{what} did not answer within {timeout:.0f} s; see {log}")


def _configure_moto(url: str) -> None:
    # Batch jobs must not need Docker: local jobs are our own processes (see flows' executor).
    request = urllib.request.Request(
        f"{url}/moto-api/config",
        data=json.dumps({"batch": {"use_docker": False}}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=5):
        pass


def start_service(
    service: str,
    state_dir: Path,
    timeout: float = 90.0,
    extra_env: Mapping[str, str] | None = None,
) -> ServiceProcess:
    port = 0 if service == "router" else free_port()
    log = state_dir / f"{service}.out"
    env = {**os.environ, **QUIET_ENV, **LOCAL_AWS_ENV, **(extra_env or {})}
    if service == "prefect":
        env["PREFECT_HOME"] = str(state_dir / "prefect")
        env.pop("PREFECT_API_URL", None)
    with log.open("ab") as out:
        process = subprocess.Popen(
            service_command(service, port, state_dir),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
            cwd=state_dir,
        )
    started = ServiceProcess(service, port, process.pid, str(log))
    try:
        _wait(lambda: _ready(service, port), process.pid, timeout, service, log)
    except StackError:
        stop_service(started)
        raise
    if service == "moto":
        _configure_moto(f"http://{LOOPBACK}:{port}")
    return started


def stop_service(service: ServiceProcess, grace: float = 10.0) -> None:
    """SIGTERM the service's process group, then SIGKILL what is left after `grace` seconds."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(service.pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not _alive(service.pid) and not _group_alive(service.pid):
                return
            time.sleep(0.1)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def up(state_dir: str | Path, services: Sequence[str] = SERVICES) -> StackState:
    """Start the services (those already running are kept) and write stack.json/stack.env."""
    directory = Path(state_dir).resolve()
    directory.mkdir(parents=True, exist_ok=True)
    state = StackState.load(directory) or StackState(str(directory))
    for name in services:
        running = state.services.get(name)
        if running and _alive(running.pid) and _ready(name, running.port):
            continue
        extra = router_environment(state) if name == "router" else None
        try:
            state.services[name] = start_service(name, directory, extra_env=extra)
        except StackError:
            state.save()
            raise
        state.save()
    return state


def router_environment(state: StackState, prefix: str | None = None) -> dict[str, str]:
    """The router process's environment: the stack's moto endpoint and the `Names` prefix
    (FACEFLEET_PREFIX from the caller's environment, else the default names)."""
    if "moto" not in state.services:
        raise StackError("the router needs the moto server: start moto first")
    env = {
        **LOCAL_AWS_ENV,
        "AWS_ENDPOINT_URL": state.moto_url,
        "METRICS_TO_CLOUDWATCH": "true",
        "PYTHONUNBUFFERED": "1",
    }
    chosen = prefix or os.environ.get(ROUTER_PREFIX_ENV)
    if chosen:
        env[ROUTER_PREFIX_ENV] = chosen
    return env


def down(state_dir: str | Path) -> list[str]:
    """Stop every service of the stack; return the names stopped."""
    state = StackState.load(state_dir)
    if state is None:
        return []
    for service in state.services.values():
        stop_service(service)
    stopped = list(state.services)
    state.services.clear()
    state.save()
    return stopped


def status(state_dir: str | Path) -> dict[str, bool]:
    """Whether each recorded service is alive and answering."""
    state = StackState.load(state_dir)
    if state is None:
        return {}
    return {name: _alive(s.pid) and _ready(name, s.port) for name, s in state.services.items()}


@contextlib.contextmanager
def running(state_dir: str | Path, services: Sequence[str] = SERVICES) -> Iterator[StackState]:
    """A stack for the duration of a block (tests, the demo): always stopped on the way out."""
    try:
        yield up(state_dir, services)
    finally:
        down(state_dir)


def apply_environment(env: Mapping[str, str]) -> None:
    os.environ.update(env)
