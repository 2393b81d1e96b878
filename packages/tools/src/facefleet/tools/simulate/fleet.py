"""The simulated fleet: Batch jobs, the Spot instances they run on, their compute environments."""

from __future__ import annotations

from collections import deque

RUNNABLE, STARTING, RUNNING, SUCCEEDED, FAILED = range(5)


class Instance:
    __slots__ = ("ended", "environment", "epoch", "job", "launched")

    def __init__(self, environment: Environment, launched: float) -> None:
        self.environment = environment
        self.launched = launched
        self.ended: float | None = None
        self.job: Job | None = None
        self.epoch = 0


class Job:
    __slots__ = (
        "attempt",
        "batch",
        "batch_n",
        "environment",
        "epoch",
        "id",
        "instance",
        "queue",
        "state",
    )

    def __init__(self, job_id: int, queue: str, environment: Environment) -> None:
        self.id = job_id
        self.queue = queue
        self.environment = environment
        self.attempt = 1
        self.state = RUNNABLE
        self.instance: Instance | None = None
        self.batch: list[list[int]] | None = None
        self.batch_n = 0
        self.epoch = 0


class Environment:
    __slots__ = ("alive", "cap", "idle", "name", "waiting")

    def __init__(self, name: str, cap: int) -> None:
        self.name = name
        self.cap = cap
        self.alive: set[Instance] = set()
        self.idle: list[Instance] = []
        self.waiting: deque[Job] = deque()
