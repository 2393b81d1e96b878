"""The simulation's parameters: what is modelled, and what is assumed.

Every figure is a `ModelParams` field; `facefleet.tools.simulate.model` runs the events:
- The indexing queue (SQS) as a FIFO of lots (a trace row's images). Workers receive up to
  `batch_size` messages at a time, hold them in flight while they work, and delete them when the
  faces are stored; a long poll hands a new message to an idle worker at once.
- Every `tick_s` the dispatch flow calls `facefleet.control.policy.decide` itself (not a copy) with
  the simulated queue depth, the jobs active per job queue and the time of the last submission;
  the policy owns the cool-down, the array sizing and the vCPU headroom.
- A job needs one g4dn.xlarge (4 vCPU, 1 GPU). Batch launches an instance per RUNNABLE job up to
  the compute environment's vCPU cap (16 -> 4 instances, 256 -> 64); a cold start (Spot request,
  boot, ECS agent, image pull, model load) takes uniform(`cold_start_s`), a job placed on an idle
  instance Batch has not yet scaled in starts in `warm_start_s`. Jobs beyond the cap wait RUNNABLE.
- A running job processes `images_per_s`: by default the instance throughput table's figure
  (`facefleet.common.instances.THROUGHPUT`) for the default format mix (iPhone-heavy) on the
  slowest type a job may land on, min(decode per vCPU measured by `make bench-phone` x 4 vCPUs,
  the T4's rate anchored from published figures): the CPU decoding HEICs is the limit, not the
  GPU. `images_per_s_for(mix)` gives another mix's figure.
- A job exits after `idle_exit_s` without messages (the consumer's IDLE_EXIT_SECONDS: scale to
  zero); Batch terminates an idle instance after `scale_down_s`. Instances are billed from launch
  to termination.
- Spot interruptions arrive per instance at `interruptions_per_hour` (exponential). The worker's
  SIGTERM drain releases its in-flight messages (visible again after `return_delay_s`; 0 = on the
  notice, MESSAGE_VISIBILITY_TIMEOUT if the host vanished) and exits RETRYABLE_EXIT_CODE; the job
  definition's retry strategy puts the job back to RUNNABLE until `attempts` are used up.
- The grouping queue is not modelled (the GroupFace backlog is reported as empty).

The current setup (`simulate_ecs`) is the same queue served by N always-on on-demand workers.
"""

from __future__ import annotations

from dataclasses import dataclass

from facefleet.common.config import Settings
from facefleet.common.instances import DEFAULT_MIX
from facefleet.control.policy import PolicyParams, job_images_per_s
from facefleet.tools.simulate.trace import DAY_S

_DEFAULTS = Settings()


def images_per_s_for(mix: str | dict[str, float]) -> float:
    """Images/s one detection job sustains for a format mix (the instance throughput table)."""
    return round(job_images_per_s(mix), 2)


# Images per second one detection job sustains, default mix: see above.
DEFAULT_IMAGES_PER_S = images_per_s_for(DEFAULT_MIX)


@dataclass(frozen=True)
class ModelParams:
    images_per_s: float = DEFAULT_IMAGES_PER_S
    batch_size: int = _DEFAULTS.batch_size
    tick_s: float = 60.0
    cold_start_s: tuple[float, float] = (180.0, 360.0)
    warm_start_s: float = 30.0
    idle_exit_s: float = _DEFAULTS.idle_exit_seconds
    scale_down_s: float = 300.0
    interruptions_per_hour: float = 0.01
    return_delay_s: float = 0.0
    attempts: int | None = None  # None: the detection job definition's retry attempts
    seed: int = 0
    record_timeline: bool = True
    # Give up when the backlog is still not drained this long after the trace ends.
    max_overrun_s: float = 30 * DAY_S

    def __post_init__(self) -> None:
        if self.images_per_s <= 0:
            raise ValueError("images_per_s must be positive")
        if self.batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        if self.tick_s <= 0:
            raise ValueError("tick_s must be positive")
        low, high = self.cold_start_s
        if not 0 <= low <= high:
            raise ValueError("cold_start_s must be (low, high) with 0 <= low <= high")
        if min(self.warm_start_s, self.idle_exit_s, self.scale_down_s, self.return_delay_s) < 0:
            raise ValueError("start, idle, scale-down and return delays must not be negative")
        if self.interruptions_per_hour < 0:
            raise ValueError("interruptions_per_hour must not be negative")
        if self.attempts is not None and self.attempts < 1:
            raise ValueError("attempts must be at least 1")


DEFAULT_MODEL = ModelParams()
DEFAULT_POLICY = PolicyParams()
