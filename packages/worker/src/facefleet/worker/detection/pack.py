"""A model pack loaded: the folder's detector and recogniser, recognised from their graphs.

`load_pack(folder)` opens every `*.onnx` once on the CPU to route it (`models.route`), keeps the
first detector and the first recogniser, and opens each on the preferred execution provider
(`models.available_providers`). How many images and faces go through at once is decided here per
provider (`models.REC_BATCH_SIZES`, `models.DET_BATCH_SIZES`, `ModelPack.inference_streams`).
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from facefleet.worker.detection.detector import Detector
from facefleet.worker.detection.recogniser import Recogniser
from facefleet.worker.models import (
    DET_BATCH_SIZES,
    GPU_PROVIDERS,
    REC_BATCH_SIZES,
    ModelPackError,
    available_providers,
    cpu_cores,
    cpu_session,
    fingerprint,
    ort_threads,
    route,
)

log = logging.getLogger(__name__)


@dataclass
class ModelPack:
    """The detector and recogniser of one pack, loaded and ready to run."""

    path: Path
    detector: Detector
    recogniser: Recogniser
    providers: list[str]
    model_id: str

    @property
    def provider(self) -> str:
        return self.providers[0]

    @property
    def on_gpu(self) -> bool:
        return self.provider in GPU_PROVIDERS

    @property
    def embedding_dim(self) -> int:
        return self.recogniser.embedding_dim

    @property
    def rec_fixed_batch(self) -> int | None:
        """The recogniser's batch axis when the file fixes it (often 1)."""
        return self.recogniser.fixed_batch

    @property
    def det_fixed_size(self) -> tuple[int, int] | None:
        return self.detector.fixed_size

    @property
    def det_batched(self) -> bool:
        """The detector session takes (N, 3, H, W): see `detector.with_batch_axis`."""
        return self.detector.batched

    def rec_batch_size(self, override: int | None = None) -> int:
        if self.rec_fixed_batch is not None:
            return self.rec_fixed_batch
        if override:
            return override
        return REC_BATCH_SIZES.get(self.provider, 8)

    def det_batch_size(self, override: int | None = None) -> int:
        """Images per detector call: 1 (each image on its own aspect-fit canvas) unless the graph
        takes a batch axis and the provider gains from one."""
        if not self.det_batched:
            return 1
        if override:
            return override
        return DET_BATCH_SIZES.get(self.provider, 1)

    @property
    def inference_streams(self) -> int:
        """Threads that run the models at once. CPU: one per intra-op thread budget (one per core
        with single-thread sessions, see `models.ort_threads`). GPU: two, so that one thread
        prepares or finishes a batch on the CPU while the other's batch is on the device."""
        if self.on_gpu:
            return 2
        return max(1, cpu_cores() // ort_threads())


def load_pack(
    path: Path,
    providers: list[str] | None = None,
    *,
    warm: bool = True,
    batch_detector: bool | None = None,
    det_size: int = 640,
) -> ModelPack:
    """Open every ONNX file of `path`; exactly one detector and one recogniser are used.

    `batch_detector` (default: on a GPU) gives the detector a batch axis when its graph lacks one;
    `det_size` sizes the TensorRT shape profiles (square det_size canvases on a GPU)."""
    folder = Path(path)
    files = sorted(folder.glob("*.onnx"))
    if not files:
        raise ModelPackError(f"model pack {folder} holds no .onnx file")
    chosen = providers or available_providers()
    batch = chosen[0] in GPU_PROVIDERS if batch_detector is None else batch_detector
    detector: Detector | None = None
    recogniser: Recogniser | None = None
    for file in files:
        # Routed on a CPU session (cheap to open); reused as is when the CPU is the provider.
        probe = cpu_session(file)
        kind = route(file, probe)
        if kind == "detection" and detector is None:
            detector = Detector(file, chosen, probe=probe, batch=batch, det_size=det_size).load()
        elif kind == "recognition" and recogniser is None:
            recogniser = Recogniser(file, chosen, probe=probe).load()
    if detector is None or recogniser is None:
        found = ", ".join(f.name for f in files)
        raise ModelPackError(f"model pack {folder} needs a detector and a recogniser; has {found}")
    assert recogniser.session is not None
    rec_file = Path(recogniser.model_file)
    pack = ModelPack(
        path=folder,
        detector=detector,
        recogniser=recogniser,
        providers=list(recogniser.session.get_providers()),
        model_id=f"{rec_file.stem}-{fingerprint(rec_file)}",
    )
    if warm:
        warm_up(pack)
    log.info(
        "model pack loaded",
        extra={
            "pack": str(folder),
            "model_id": pack.model_id,
            "providers": pack.providers,
            "embedding_dim": pack.embedding_dim,
            "detector": Path(detector.model_file).name,
            "recogniser": rec_file.name,
            "rec_batch_size": pack.rec_batch_size(),
            "det_batch_size": pack.det_batch_size(),
            "inference_streams": pack.inference_streams,
        },
    )
    return pack


def warm_up(pack: ModelPack) -> None:
    """One pass through each model, so the first real image does not pay session start-up."""
    image = np.zeros((640, 640, 3), dtype=np.uint8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pack.detector.predict([image], 640, square=True)
    width, height = pack.recogniser.input_size
    pack.recogniser.predict([np.zeros((height, width, 3), dtype=np.uint8)])
