"""A discrete-event model of detection on AWS Batch Spot, driven by the real dispatch policy.

What is modelled and assumed is written with its parameters, `facefleet.tools.simulate.params`.
The current setup (`simulate_ecs`) is the same queue served by N always-on on-demand workers.
"""

from __future__ import annotations

import heapq
from collections import deque

import numpy as np

from facefleet.common.names import NAMES, Names
from facefleet.control import policy as dispatch
from facefleet.control.policy import (
    DETECTION,
    ActiveJob,
    DispatchInputs,
    PolicyParams,
    QueueDepth,
)
from facefleet.tools.simulate.fleet import (
    FAILED,
    RUNNABLE,
    RUNNING,
    STARTING,
    SUCCEEDED,
    Environment,
    Instance,
    Job,
)
from facefleet.tools.simulate.params import DEFAULT_MODEL, DEFAULT_POLICY, ModelParams
from facefleet.tools.simulate.results import RunResult
from facefleet.tools.simulate.trace import Trace

# Event kinds, in the order they are handled when they fall on the same instant: arrivals first,
# so a dispatch tick at the same moment sees them.
_ARRIVAL, _RETURN, _INTERRUPT, _BATCH_DONE, _READY, _IDLE, _SCALE_IN, _TICK = range(8)


class _Engine:
    def __init__(
        self,
        trace: Trace,
        model: ModelParams,
        policy: PolicyParams,
        names: Names,
        always_on: int = 0,
    ) -> None:
        self.trace = trace
        self.model = model
        self.policy = policy
        self.names = names
        self.always_on = always_on
        self.attempts = model.attempts or names.detection_job.attempts
        self.rng = np.random.default_rng(model.seed)
        self.seconds_per_image = 1.0 / model.images_per_s
        self.events: list[tuple[float, int, int, object, int]] = []
        self.seq = 0
        self.now = 0.0
        # The indexing queue: FIFO of [trace row, images left]; returned messages go to the front.
        self.queue: deque[list[int]] = deque()
        self.visible = 0
        self.in_flight = 0
        self.pending_arrivals = len(trace.counts)
        self.idle_jobs: dict[int, Job] = {}
        self.active: dict[str, int] = {}
        self.last_submission: float | None = None
        self.environments: dict[str, Environment] = {}
        instance_jobs = names.instance_vcpus // names.detection_job.vcpus
        if instance_jobs != 1:
            raise ValueError("the model places exactly one job per instance (GPU)")
        for queue in names.job_queues:
            spec = next(
                e for e in names.compute_environments if e.name == queue.compute_environment
            )
            self.environments[queue.name] = Environment(
                spec.name, spec.max_vcpus // names.instance_vcpus
            )
        self.instances: list[Instance] = []
        self.n_alive = 0
        self.jobs = 0
        self.submissions = 0
        self.interruptions = 0
        self.retries = 0
        self.failed = 0
        self.done_lot: list[int] = []
        self.done_count: list[int] = []
        self.done_s: list[float] = []
        self.peak_backlog = 0
        self.timeline_s: list[float] = []
        self.timeline_backlog: list[int] = []
        self.timeline_instances: list[int] = []

    # -- scheduling -----------------------------------------------------------------------------

    def _at(self, time: float, kind: int, obj: object = None, epoch: int = 0) -> None:
        self.seq += 1
        heapq.heappush(self.events, (time, kind, self.seq, obj, epoch))

    # -- the queue ------------------------------------------------------------------------------

    def _take(self, job: Job) -> None:
        """Give `job` a batch from the head of the queue and schedule its completion."""
        pieces: list[list[int]] = []
        want = self.model.batch_size
        n = 0
        queue = self.queue
        while n < want and queue:
            head = queue[0]
            k = min(head[1], want - n)
            pieces.append([head[0], k])
            n += k
            if k == head[1]:
                queue.popleft()
            else:
                head[1] -= k
        self.visible -= n
        self.in_flight += n
        job.batch = pieces
        job.batch_n = n
        job.epoch += 1
        self._at(self.now + n * self.seconds_per_image, _BATCH_DONE, job, job.epoch)

    def _feed(self) -> None:
        # SQS hands a message to whichever long poll it picks: a random idle worker. (Handing it
        # to the longest idle one would keep a whole fleet alive on a trickle of uploads.)
        while self.visible > 0 and self.idle_jobs:
            if len(self.idle_jobs) == 1:
                job_id = next(iter(self.idle_jobs))
            else:
                job_id = list(self.idle_jobs)[int(self.rng.integers(len(self.idle_jobs)))]
            self._take(self.idle_jobs.pop(job_id))

    def _go_idle(self, job: Job) -> None:
        self.idle_jobs[job.id] = job
        job.epoch += 1
        if not self.always_on:
            self._at(self.now + self.model.idle_exit_s, _IDLE, job, job.epoch)

    def _work_or_idle(self, job: Job) -> None:
        if self.visible > 0:
            self._take(job)
        else:
            self._go_idle(job)

    def _return(self, pieces: list[list[int]]) -> None:
        for lot, k in reversed(pieces):
            self.queue.appendleft([lot, k])
            self.visible += k
            self.in_flight -= k
        self._feed()

    # -- instances and jobs ---------------------------------------------------------------------

    def _launch(self, environment: Environment) -> Instance:
        instance = Instance(environment, self.now)
        environment.alive.add(instance)
        self.instances.append(instance)
        self.n_alive += 1
        rate = self.model.interruptions_per_hour
        if rate > 0 and not self.always_on:
            self._at(self.now + self.rng.exponential(3600.0 / rate), _INTERRUPT, instance)
        return instance

    def _assign(self, job: Job, instance: Instance, delay: float) -> None:
        instance.job = job
        instance.epoch += 1  # cancels a pending scale-in
        job.instance = instance
        job.state = STARTING
        job.epoch += 1
        self._at(self.now + delay, _READY, job, job.epoch)

    def _cold_start(self) -> float:
        low, high = self.model.cold_start_s
        return low if high == low else float(self.rng.uniform(low, high))

    def _place(self, job: Job) -> None:
        """A RUNNABLE job: onto an idle instance, a new one within the cap, or wait."""
        environment = job.environment
        if environment.idle:
            self._assign(job, environment.idle.pop(), self.model.warm_start_s)
        elif len(environment.alive) < environment.cap:
            self._assign(job, self._launch(environment), self._cold_start())
        else:
            job.state = RUNNABLE
            environment.waiting.append(job)

    def _release(self, instance: Instance) -> None:
        instance.job = None
        environment = instance.environment
        if environment.waiting:
            self._assign(environment.waiting.popleft(), instance, self.model.warm_start_s)
            return
        environment.idle.append(instance)
        instance.epoch += 1
        self._at(self.now + self.model.scale_down_s, _SCALE_IN, instance, instance.epoch)

    def _terminate(self, instance: Instance) -> None:
        instance.ended = self.now
        environment = instance.environment
        environment.alive.discard(instance)
        if instance in environment.idle:
            environment.idle.remove(instance)
        self.n_alive -= 1
        while environment.waiting and len(environment.alive) < environment.cap:
            self._assign(
                environment.waiting.popleft(), self._launch(environment), self._cold_start()
            )

    def _finish(self, job: Job, state: int) -> None:
        job.state = state
        self.active[job.queue] -= 1
        self.idle_jobs.pop(job.id, None)

    def _submit(self, queue: str, count: int) -> None:
        environment = self.environments[queue]
        for _ in range(count):
            self.jobs += 1
            self.active[queue] = self.active.get(queue, 0) + 1
            self._place(Job(self.jobs, queue, environment))

    # -- events ---------------------------------------------------------------------------------

    def _on_batch_done(self, job: Job) -> None:
        t = self.now
        assert job.batch is not None
        for lot, k in job.batch:
            self.done_lot.append(lot)
            self.done_count.append(k)
            self.done_s.append(t)
        self.in_flight -= job.batch_n
        job.batch = None
        job.batch_n = 0
        self._work_or_idle(job)

    def _on_interrupt(self, instance: Instance) -> None:
        if instance.ended is not None:
            return
        self.interruptions += 1
        job = instance.job
        self._terminate(instance)
        if job is None:
            return
        job.epoch += 1
        job.instance = None
        self.idle_jobs.pop(job.id, None)
        if job.batch is not None:
            pieces, job.batch, job.batch_n = job.batch, None, 0
            if self.model.return_delay_s > 0:
                self._at(self.now + self.model.return_delay_s, _RETURN, pieces)
            else:
                self._return(pieces)
        if job.attempt >= self.attempts:
            self.failed += 1
            self._finish(job, FAILED)
            return
        job.attempt += 1
        self.retries += 1
        self._place(job)

    def _on_tick(self) -> None:
        if (
            self.pending_arrivals == 0
            and self.visible == 0
            and self.in_flight == 0
            and not any(self.active.values())
        ):
            return  # drained: stop dispatching
        if self.now > self.trace.duration_s + self.model.max_overrun_s:
            raise RuntimeError(
                f"backlog of {self.visible + self.in_flight} images not drained "
                f"{self.model.max_overrun_s:.0f} s after the trace ended"
            )
        oldest = self.now - float(self.trace.offsets_s[self.queue[0][0]]) if self.queue else 0.0
        inputs = DispatchInputs(
            indexing=QueueDepth(self.visible, self.in_flight, oldest),
            group_face=QueueDepth(0),
            active=tuple(
                ActiveJob(DETECTION, queue, count) for queue, count in self.active.items() if count
            ),
            now_s=self.now,
            last_submission_s=self.last_submission,
        )
        # Looked up on each tick: the simulator always runs the policy as it is now.
        decision = dispatch.decide(inputs, self.policy, self.names)
        for submission in decision.submissions:
            if submission.kind != DETECTION:
                continue
            if submission.job_queue not in self.environments:
                raise ValueError(f"policy submitted to unknown job queue {submission.job_queue!r}")
            self._submit(submission.job_queue, submission.jobs)
            self.submissions += 1
        if decision.submissions:
            self.last_submission = self.now
        self._at(self.now + self.model.tick_s, _TICK)

    def run(self, setup: str) -> RunResult:
        trace = self.trace
        for lot in range(len(trace.counts)):
            self._at(float(trace.offsets_s[lot]), _ARRIVAL, lot)
        if self.always_on:
            environment = Environment("ecs", self.always_on)
            self.active["ecs"] = 0
            for job_id in range(self.always_on):
                job = Job(-1 - job_id, "ecs", environment)
                self.active["ecs"] += 1
                self._assign(job, self._launch(environment), 0.0)
        else:
            self._at(0.0, _TICK)
        record = self.model.record_timeline
        last = (-1, -1)
        counts = trace.counts
        while self.events:
            time, kind, _, obj, epoch = heapq.heappop(self.events)
            self.now = time
            if kind == _ARRIVAL:
                assert isinstance(obj, int)
                self.pending_arrivals -= 1
                count = int(counts[obj])
                if count:
                    self.queue.append([obj, count])
                    self.visible += count
                    self._feed()
            elif kind == _BATCH_DONE:
                assert isinstance(obj, Job)
                if epoch == obj.epoch:
                    self._on_batch_done(obj)
            elif kind == _TICK:
                self._on_tick()
            elif kind == _READY:
                assert isinstance(obj, Job)
                if epoch == obj.epoch:
                    obj.state = RUNNING
                    self._work_or_idle(obj)
            elif kind == _IDLE:
                assert isinstance(obj, Job)
                if epoch == obj.epoch and obj.instance is not None:
                    instance = obj.instance
                    obj.instance = None
                    self._finish(obj, SUCCEEDED)
                    self._release(instance)
            elif kind == _SCALE_IN:
                assert isinstance(obj, Instance)
                if epoch == obj.epoch and obj.job is None and obj.ended is None:
                    self._terminate(obj)
            elif kind == _INTERRUPT:
                assert isinstance(obj, Instance)
                self._on_interrupt(obj)
            elif kind == _RETURN:
                assert isinstance(obj, list)
                self._return(obj)
            backlog = self.visible + self.in_flight
            if backlog > self.peak_backlog:
                self.peak_backlog = backlog
            if record and (backlog, self.n_alive) != last:
                last = (backlog, self.n_alive)
                self.timeline_s.append(time)
                self.timeline_backlog.append(backlog)
                self.timeline_instances.append(self.n_alive)
        # Stale events (an interruption drawn for an instance long gone) may run the clock on;
        # the run ends with the last completion or instance.
        end = max(
            [float(trace.offsets_s[-1]) if len(trace.offsets_s) else 0.0]
            + self.done_s[-1:]
            + [i.ended for i in self.instances if i.ended is not None]
        )
        if self.always_on:
            end = max(end, trace.duration_s)
            for instance in self.instances:
                instance.ended = end
            if record:
                self.timeline_s.append(end)
                self.timeline_backlog.append(0)
                self.timeline_instances.append(self.always_on)
        if self.visible or self.in_flight:
            raise RuntimeError(f"{self.visible + self.in_flight} images left unprocessed")
        return RunResult(
            setup=setup,
            trace=trace,
            done_lot=np.array(self.done_lot, dtype=np.int64),
            done_count=np.array(self.done_count, dtype=np.int64),
            done_s=np.array(self.done_s, dtype=np.float64),
            instance_start_s=np.array([i.launched for i in self.instances], dtype=np.float64),
            instance_end_s=np.array(
                [end if i.ended is None else i.ended for i in self.instances], dtype=np.float64
            ),
            end_s=end,
            peak_backlog=self.peak_backlog,
            timeline_s=np.array(self.timeline_s, dtype=np.float64),
            timeline_backlog=np.array(self.timeline_backlog, dtype=np.int64),
            timeline_instances=np.array(self.timeline_instances, dtype=np.int64),
            jobs_submitted=self.jobs,
            submissions=self.submissions,
            interruptions=self.interruptions,
            retries=self.retries,
            failed_jobs=self.failed,
        )


def simulate_batch(
    trace: Trace,
    model: ModelParams = DEFAULT_MODEL,
    policy: PolicyParams = DEFAULT_POLICY,
    names: Names = NAMES,
) -> RunResult:
    """Replay `trace` through the dispatch policy, Batch and Spot; run until the queue drains."""
    return _Engine(trace, model, policy, names).run("Batch Spot")


def simulate_ecs(trace: Trace, tasks: int, model: ModelParams = DEFAULT_MODEL) -> RunResult:
    """Replay `trace` through `tasks` always-on workers (the current ECS service, on demand)."""
    if tasks < 1:
        raise ValueError("the ECS service needs at least one task")
    return _Engine(trace, model, DEFAULT_POLICY, NAMES, always_on=tasks).run(
        f"ECS on demand x{tasks}"
    )
