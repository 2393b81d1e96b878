"""What every doctor check returns, and the helpers the checks share."""

from __future__ import annotations

from dataclasses import dataclass

from botocore.exceptions import ClientError

from facefleet.infra.stack_config import QueueRef


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str

    def line(self) -> str:
        return f"{'ok  ' if self.ok else 'todo'}  {self.name}: {self.detail}"


def _error(error: Exception) -> str:
    if isinstance(error, ClientError):
        return str(error.response.get("Error", {}).get("Code") or error)
    return str(error)


def _queue(value: str | None, region: str) -> QueueRef | None:
    return QueueRef.parse(value, region) if value else None
