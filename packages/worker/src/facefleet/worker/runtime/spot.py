"""The Spot two-minute notice, read by the worker itself from instance metadata (IMDSv2).

Why the worker watches, and not ECS: ECS container-instance draining (even with
ECS_ENABLE_SPOT_INSTANCE_DRAINING) stops only service tasks; a Batch job is a standalone task,
so without this it hears of the interruption only when the instance shuts down. EC2 publishes
the notice two minutes ahead at `spot/instance-action` in instance metadata (and as an
EventBridge event); AWS's Spot guide suggests polling it every 5 seconds. Watching it here needs
no Lambda, no ecs:StopTask on Batch's own ECS cluster and no lookup from instance id to task: each
job hears the notice about its own instance. The launch template requires IMDSv2 with a hop limit
of 2, one more than the instance itself needs, because the container's requests cross the Docker
bridge.

On a notice the watcher calls `on_notice` once (the consumer's `request_stop`: stop receiving,
finish or release the batch within SHUTDOWN_DEADLINE_SECONDS, exit with the retryable code) and
ends. Until the metadata service has answered once, a failed call is retried with exponential
backoff (`startup_attempts` calls in all, about half a minute by default): a container that
starts while the instance is still busy, or one dropped connection, must not leave the whole
job deaf to the notice. Off EC2 (no metadata service ever answers) it then ends, quietly.
"""

from __future__ import annotations

import json
import logging
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

DEFAULT_ENDPOINT = "http://169.254.169.254"
TOKEN_PATH = "/latest/api/token"
NOTICE_PATH = "/latest/meta-data/spot/instance-action"
TOKEN_TTL_S = 21_600


class SpotNoticeWatcher(threading.Thread):
    """Poll `spot/instance-action` every `poll_s` seconds; call `on_notice(notice)` once."""

    def __init__(
        self,
        on_notice: Callable[[dict[str, Any]], None],
        *,
        endpoint: str = DEFAULT_ENDPOINT,
        poll_s: float = 5.0,
        timeout_s: float = 1.0,
        startup_attempts: int = 6,
        startup_backoff_s: float = 1.0,
    ) -> None:
        super().__init__(name="spot-notice", daemon=True)
        self.on_notice = on_notice
        self.endpoint = endpoint.rstrip("/")
        self.poll_s = poll_s
        self.timeout_s = timeout_s
        self.startup_attempts = max(1, startup_attempts)
        self.startup_backoff_s = startup_backoff_s
        self.stopped = threading.Event()
        self.notice: dict[str, Any] | None = None
        self._token: str | None = None

    def stop(self) -> None:
        self.stopped.set()

    def _request(self, method: str, path: str, headers: dict[str, str]) -> tuple[int, bytes]:
        request = urllib.request.Request(self.endpoint + path, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                return int(response.status), bytes(response.read())
        except urllib.error.HTTPError as error:
            return int(error.code), b""

    def _fresh_token(self) -> str:
        status, body = self._request(
            "PUT", TOKEN_PATH, {"X-aws-ec2-metadata-token-ttl-seconds": str(TOKEN_TTL_S)}
        )
        if status != 200:
            raise OSError(f"IMDSv2 token request answered {status}")
        return body.decode()

    def check(self) -> dict[str, Any] | None:
        """The pending notice ({"action": "terminate", "time": ...}) or None."""
        if self._token is None:
            self._token = self._fresh_token()
        status, body = self._request("GET", NOTICE_PATH, {"X-aws-ec2-metadata-token": self._token})
        if status == 401:  # the token expired: one more try with a new one
            self._token = self._fresh_token()
            status, body = self._request(
                "GET", NOTICE_PATH, {"X-aws-ec2-metadata-token": self._token}
            )
        if status == 404:
            return None
        if status != 200:
            raise OSError(f"spot/instance-action answered {status}")
        notice: dict[str, Any] = json.loads(body)
        return notice

    def run(self) -> None:
        reached = False
        failures = 0
        while not self.stopped.is_set():
            try:
                notice = self.check()
                reached = True
            except (OSError, ValueError) as error:
                notice = None
                if not reached:
                    failures += 1
                    if failures >= self.startup_attempts:
                        log.info(
                            "no instance metadata service after %d tries (%s): Spot notice "
                            "watcher off",
                            failures,
                            error,
                        )
                        return
                    self._token = None  # a half-done token exchange starts over
                    self.stopped.wait(self.startup_backoff_s * 2 ** (failures - 1))
                    continue
                log.warning("reading the Spot notice failed: %s", error)
            if notice is not None:
                self.notice = notice
                log.warning("Spot interruption notice: draining", extra={"notice": notice})
                self.on_notice(notice)
                return
            self.stopped.wait(self.poll_s)
