"""Model packs: a folder of InsightFace-layout ONNX files, each recognised from its graph.

A pack is data (buffalo_l in production, facefleet-dev locally): the loader opens every `*.onnx`
once, routes it as insightface's model_zoo does (many outputs: SCRFD detector; one output and a
square input of at least 112 that is a multiple of 16: ArcFace recogniser; landmark/attribute
models are skipped) and wraps it in insightface's own class. One ONNX Runtime session per model
per process, warmed once at load.

Production syncs the pack from MODEL_BUCKET at start-up when MODEL_DIR holds no model
(`resolve_pack_dir`); the image may also bake it in.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from facefleet.common.config import Settings

log = logging.getLogger(__name__)

# Execution-provider preference, in one place: the GPU when the runtime has it, else the CPU.
PROVIDER_PREFERENCE = ("CUDAExecutionProvider", "CPUExecutionProvider")

# Recognition batch size per execution provider. Measured on the 2-core CPU (dev pack,
# MobileFaceNet): about 4 ms/face at batch 1-4, 6 at 8-16 and 11 at 64 (cache pressure), so the CPU
# gets small batches; a GPU amortises launch overhead over large ones.
REC_BATCH_SIZES = {"CUDAExecutionProvider": 64, "CPUExecutionProvider": 4}


class ModelPackError(RuntimeError):
    """A model pack folder is missing, empty, or lacks a detector or a recogniser."""


def available_providers(preference: tuple[str, ...] = PROVIDER_PREFERENCE) -> list[str]:
    present = set(ort.get_available_providers())
    chosen = [p for p in preference if p in present]
    return chosen or ["CPUExecutionProvider"]


def _session_options() -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    threads = os.environ.get("FACEFLEET_ORT_THREADS")  # benchmarks only; 0 = runtime default
    if threads:
        options.intra_op_num_threads = int(threads)
    return options


def _fingerprint(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:10]


@dataclass
class ModelPack:
    """The detector and recogniser of one pack, ready to run."""

    path: Path
    detector: Any  # insightface.model_zoo.SCRFD
    recogniser: Any  # insightface.model_zoo.ArcFaceONNX
    providers: list[str]
    model_id: str
    embedding_dim: int
    rec_fixed_batch: int | None  # the recogniser's batch axis when the file fixes it (often 1)
    det_fixed_size: tuple[int, int] | None

    @property
    def provider(self) -> str:
        return self.providers[0]

    def rec_batch_size(self, override: int | None = None) -> int:
        if self.rec_fixed_batch is not None:
            return self.rec_fixed_batch
        if override:
            return override
        return REC_BATCH_SIZES.get(self.provider, 8)


def _route(path: Path, session: ort.InferenceSession) -> str | None:
    """'detection', 'recognition' or None, from the graph's inputs and outputs (as model_zoo)."""
    shape = session.get_inputs()[0].shape
    outputs = session.get_outputs()
    if len(outputs) >= 5:
        return "detection"
    height, width = shape[2], shape[3]
    landmark_or_swapper = height == 192 or (height == 128 and len(session.get_inputs()) == 2)
    if (
        isinstance(height, int)
        and height == width
        and height >= 112
        and height % 16 == 0
        and len(outputs) == 1
        and not landmark_or_swapper
    ):
        return "recognition"
    log.info("skipping a model the detection worker does not use", extra={"model": path.name})
    return None


def load_pack(path: Path, providers: list[str] | None = None, *, warm: bool = True) -> ModelPack:
    """Open every ONNX file of `path`; exactly one detector and one recogniser are used."""
    from insightface.model_zoo import SCRFD, ArcFaceONNX  # heavy import, only where models load

    folder = Path(path)
    files = sorted(folder.glob("*.onnx"))
    if not files:
        raise ModelPackError(f"model pack {folder} holds no .onnx file")
    chosen = providers or available_providers()
    detector = recogniser = None
    rec_file: Path | None = None
    for file in files:
        session = ort.InferenceSession(str(file), sess_options=_session_options(), providers=chosen)
        kind = _route(file, session)
        if kind == "detection" and detector is None:
            # One session per process: every detection canvas size runs on the dynamic graph
            # (insightface would otherwise build a static-shape session per size).
            detector = SCRFD(model_file=str(file), session=session, static_shape_sessions=False)
        elif kind == "recognition" and recogniser is None:
            recogniser = ArcFaceONNX(model_file=str(file), session=session)
            rec_file = file
    if detector is None or recogniser is None or rec_file is None:
        found = ", ".join(f.name for f in files)
        raise ModelPackError(f"model pack {folder} needs a detector and a recogniser; has {found}")

    rec_batch = recogniser.input_shape[0]
    det_shape = detector.input_shape
    det_fixed = (
        (det_shape[3], det_shape[2])
        if isinstance(det_shape[2], int) and isinstance(det_shape[3], int)
        else None
    )
    probe = np.zeros((1, 3, *recogniser.input_size[::-1]), dtype=np.float32)
    dim = int(
        recogniser.session.run(recogniser.output_names, {recogniser.input_name: probe})[0].shape[-1]
    )
    pack = ModelPack(
        path=folder,
        detector=detector,
        recogniser=recogniser,
        providers=list(recogniser.session.get_providers()),
        model_id=f"{rec_file.stem}-{_fingerprint(rec_file)}",
        embedding_dim=dim,
        rec_fixed_batch=rec_batch if isinstance(rec_batch, int) else None,
        det_fixed_size=det_fixed,
    )
    if warm:
        warm_up(pack)
    log.info(
        "model pack loaded",
        extra={
            "pack": str(folder),
            "model_id": pack.model_id,
            "providers": pack.providers,
            "embedding_dim": dim,
            "detector": Path(detector.model_file).name,
            "recogniser": rec_file.name,
            "rec_batch_size": pack.rec_batch_size(),
        },
    )
    return pack


def warm_up(pack: ModelPack) -> None:
    """One pass through each model, so the first real image does not pay session start-up."""
    image = np.zeros((640, 640, 3), dtype=np.uint8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pack.detector.detect(image, input_size=pack.det_fixed_size or (640, 640))
    size = pack.recogniser.input_size
    pack.recogniser.get_feat([np.zeros((size[1], size[0], 3), dtype=np.uint8)])


def sync_pack(bucket: str, pack_name: str, destination: Path, s3: Any) -> Path:
    """Download s3://bucket/pack_name/*.onnx into destination (files already there are kept)."""
    destination.mkdir(parents=True, exist_ok=True)
    paginator = s3.get_paginator("list_objects_v2")
    count = 0
    for page in paginator.paginate(Bucket=bucket, Prefix=f"{pack_name}/"):
        for item in page.get("Contents", []):
            key = item["Key"]
            if not key.endswith(".onnx"):
                continue
            target = destination / key.rsplit("/", 1)[-1]
            if target.exists() and target.stat().st_size == item["Size"]:
                continue
            log.info("downloading model file", extra={"bucket": bucket, "key": key})
            partial = target.with_suffix(".part")
            s3.download_file(bucket, key, str(partial))
            partial.replace(target)  # never leave a truncated model where the loader looks
            count += 1
    if not any(destination.glob("*.onnx")):
        raise ModelPackError(f"s3://{bucket}/{pack_name}/ holds no .onnx file")
    log.info(
        "model pack synced",
        extra={"bucket": bucket, "pack": pack_name, "downloaded": count, "path": str(destination)},
    )
    return destination


def resolve_pack_dir(settings: Settings) -> Path:
    """MODEL_DIR when it holds a pack (baked into the image), else a sync from MODEL_BUCKET."""
    if settings.model_dir:
        folder = Path(settings.model_dir)
        if any(folder.glob("*.onnx")):
            return folder
    if not settings.model_bucket:
        raise ModelPackError(
            f"MODEL_DIR {settings.model_dir!r} holds no model and MODEL_BUCKET is not set"
        )
    target = (
        Path(settings.model_dir)
        if settings.model_dir
        else Path(tempfile.gettempdir()) / "facefleet-models" / settings.model_pack
    )
    s3 = settings.aws.client("s3")
    return sync_pack(settings.model_bucket, settings.model_pack, target, s3)
