"""One message batch through the models: fetch and decode on the I/O threads, detection on the
inference streams as images arrive, then one batched recognition pass. The worker
(`service.DetectionService`) and the benchmark share this path.

Why it is shaped so (measured on the 2-core CPU, see benchmarks/bench_detect.py):
- S3 GETs and decoding run on the caller's executor (MAX_FACE_WORKERS threads): a GET is I/O and
  hides behind inference; Pillow's decoder and OpenCV release the GIL, so decoding shares the
  cores with inference instead of waiting for it.
- CPU: every decoded image goes at once to one of `analyzer.streams` inference threads, each
  running single-thread sessions (`models.ort_threads`): no barrier between threads, no spinning,
  and an image is detected the moment it is decoded rather than when the slowest one is.
- GPU (`analyzer.batched`): decoded images are gathered greedily into detector batches: whatever is
  ready goes as soon as a stream is free, up to `det_batch_size` images, padded to one canvas.
- Recognition: on the CPU in the same stream, right after an image's detection; on a GPU one pass
  over the faces of the whole batch in the provider's large recogniser batches.

Timings have one owner, `StageClock`, one per image: stages are the wall-clock intervals of the
image's own work (download, decode, detect, embed, and store, recorded by the service), `total` is
the wall time since the pipeline took the image up to the moment it is read; the difference is
time spent waiting for a turn. Stages never overlap one another, so they add up to at most the
total, and nothing is counted twice.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, as_completed, wait
from dataclasses import dataclass
from typing import TypeVar

from facefleet.worker.detection.analyzer import DetectedFace, FaceAnalyzer, LocatedFace
from facefleet.worker.detection.imaging import DecodedImage

T = TypeVar("T")


class StageClock:
    """One image's timings: stage intervals and the elapsed wall time since it was taken up."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.stages_ms: dict[str, float] = {}

    def record(self, stage: str, since: float) -> None:
        """Add the interval from `since` (a `time.perf_counter()` reading) to now to `stage`."""
        elapsed = (time.perf_counter() - since) * 1000
        self.stages_ms[stage] = self.stages_ms.get(stage, 0.0) + elapsed

    def elapsed_ms(self) -> float:
        return (time.perf_counter() - self.started) * 1000

    def timings_ms(self) -> dict[str, float]:
        """The stages and `total` (elapsed now), in ms rounded to 0.01."""
        timings = {stage: round(ms, 2) for stage, ms in self.stages_ms.items()}
        timings["total"] = round(self.elapsed_ms(), 2)
        return timings


@dataclass(frozen=True)
class PipelineResult:
    """`run_pipeline` output: per item, its decoded image (or the error), its faces, its clock."""

    decoded: DecodedImage | None
    faces: list[DetectedFace]
    error: BaseException | None
    clock: StageClock

    @property
    def timings_ms(self) -> dict[str, float]:
        return self.clock.timings_ms()


def run_pipeline(
    analyzer: FaceAnalyzer,
    items: Iterable[T],
    fetch: Callable[[T, StageClock], DecodedImage],
    executor: ThreadPoolExecutor,
) -> list[PipelineResult]:
    """Fetch+decode every item on `executor` (`fetch(item, clock)` records its own download and
    decode stages), detect each on the inference streams as soon as it is ready, then one batched
    recognition pass."""
    work = list(items)
    clocks = [StageClock() for _ in work]
    decoded: list[DecodedImage | None] = [None] * len(work)
    located: list[list[LocatedFace]] = [[] for _ in work]
    errors: list[BaseException | None] = [None] * len(work)
    fetches: dict[Future[DecodedImage], int] = {
        executor.submit(fetch, item, clock): position
        for position, (item, clock) in enumerate(zip(work, clocks, strict=True))
    }
    faces: list[list[DetectedFace]] = [[] for _ in work]
    state = _Batch(analyzer, clocks, decoded, located, errors, faces)
    if analyzer.batched:
        state.detect_in_batches(fetches)
        # A GPU wants the recogniser's large batches: one pass over the faces of the batch.
        started = time.perf_counter()
        faces[:] = analyzer.embed_located(located)
        for position, image_faces in enumerate(located):
            if image_faces:
                clocks[position].record("embed", started)
    else:
        state.analyze_each(fetches)
    return [PipelineResult(decoded[i], faces[i], errors[i], clocks[i]) for i in range(len(work))]


@dataclass
class _Batch:
    """The per-item state of one `run_pipeline` call, filled in by the detection strategies."""

    analyzer: FaceAnalyzer
    clocks: list[StageClock]
    decoded: list[DecodedImage | None]
    located: list[list[LocatedFace]]
    errors: list[BaseException | None]
    faces: list[list[DetectedFace]]

    def _take(self, future: Future[DecodedImage], position: int) -> bool:
        try:
            self.decoded[position] = future.result()
        except Exception as error:
            self.errors[position] = error
            return False
        return True

    def _detect(self, positions: list[int], wide: bool = False) -> None:
        images = [self.decoded[p] for p in positions]
        started = time.perf_counter()
        try:
            found = self.analyzer.locate_many(
                [image.pixels for image in images if image], wide=wide
            )
        except Exception as error:
            for position in positions:
                self.errors[position], self.decoded[position] = error, None
            return
        for position, faces in zip(positions, found, strict=True):
            self.located[position] = faces
            self.clocks[position].record("detect", started)

    def _analyze(self, position: int, last: bool) -> None:
        self._detect([position], wide=last)
        if self.located[position]:
            started = time.perf_counter()
            self.faces[position] = self.analyzer.embed_located([self.located[position]])[0]
            self.clocks[position].record("embed", started)

    def analyze_each(self, fetches: dict[Future[DecodedImage], int]) -> None:
        """CPU: each image, the moment it is decoded, goes to an inference stream that detects
        and embeds it. Embedding per image costs no more per face on the CPU (single-thread
        recogniser: 2.3-5 ms per face at batch 1 to 16, within the noise) and leaves no serial
        recognition phase at the end of the batch with a core idle."""
        pool = self.analyzer.pool
        jobs = []
        for count, future in enumerate(as_completed(fetches), start=1):
            position = fetches[future]
            if self._take(future, position):
                # The last image of the batch runs its detector on every core: there is nothing
                # left for the other streams to do once they finish what they hold.
                jobs.append(pool.submit(self._analyze, position, count == len(fetches)))
        for job in jobs:
            job.result()

    def detect_in_batches(self, fetches: dict[Future[DecodedImage], int]) -> None:
        """GPU: greedy batches, whatever is decoded goes as soon as a stream is free (up to
        `det_batch_size` images), so the device never waits for the slowest download."""
        pool, limit = self.analyzer.pool, self.analyzer.det_batch_size
        pending: set[Future[object]] = set(fetches)  # type: ignore[arg-type]
        running: set[Future[object]] = set()
        ready: list[int] = []
        while pending or ready:
            if ready and (
                len(ready) >= limit or not pending or len(running) < self.analyzer.streams
            ):
                group, ready = ready[:limit], ready[limit:]
                running.add(pool.submit(self._detect, group))
                continue
            done, _ = wait(pending | running, return_when=FIRST_COMPLETED)
            for future in done:
                if future in running:
                    running.discard(future)
                    continue
                pending.discard(future)
                position = fetches[future]  # type: ignore[index]
                if self._take(future, position):  # type: ignore[arg-type]
                    ready.append(position)
        for job in running:
            job.result()
