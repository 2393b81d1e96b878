"""Model packs: ONNX Runtime sessions, the execution-provider preference, where a pack comes from.

A pack is data (buffalo_l in production, facefleet-dev locally): a folder of InsightFace-layout
ONNX files, each recognised from its graph as insightface's model_zoo does (`route`: many outputs,
an SCRFD detector; one output and a square input of at least 112 that is a multiple of 16, an
ArcFace recogniser; landmark/attribute models are skipped). `facefleet.worker.detection.pack`
loads one into a `Detector` and a `Recogniser`, each owning its pre- and post-processing. One ONNX
Runtime session per model per process, warmed once at load.

How a pack runs is chosen per execution provider, each choice in one place (`PROVIDER_PREFERENCE`,
`REC_BATCH_SIZES`, `DET_BATCH_SIZES`, `session_options`): on the CPU one intra-op thread per
session and one inference stream per core; on a GPU TensorRT (engine cached on disk) or CUDA, with
detection batched across the images of a message batch (`detector.with_batch_axis` gives SCRFD
exports that fix batch 1 a batch axis, as the dev recogniser was given one).

Production syncs the pack from MODEL_BUCKET at start-up when MODEL_DIR holds no model
(`resolve_pack_dir`); the image may also bake it in.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import onnxruntime as ort

from facefleet.common.config import Settings

log = logging.getLogger(__name__)

# Execution-provider preference, in one place: TensorRT when the runtime has it (the fastest on an
# NVIDIA GPU once its engine is built; the engine is cached on disk, so only the first start of a
# host pays for the build), then CUDA, then the CPU.
PROVIDER_PREFERENCE = (
    "TensorrtExecutionProvider",
    "CUDAExecutionProvider",
    "CPUExecutionProvider",
)
GPU_PROVIDERS = frozenset({"TensorrtExecutionProvider", "CUDAExecutionProvider"})

# Recognition batch size per execution provider. Measured on the 2-core CPU (dev pack,
# MobileFaceNet): about 4 ms/face at batch 1-4, 6 at 8-16 and 11 at 64 (cache pressure), so the CPU
# gets small batches; a GPU amortises launch overhead over large ones.
REC_BATCH_SIZES = {
    "TensorrtExecutionProvider": 128,
    "CUDAExecutionProvider": 128,
    "CPUExecutionProvider": 4,
}
# Images per detector call. The CPU runs every image on its own aspect-fit canvas (a batch would
# only add padding; a CPU gains nothing from the batch axis); a GPU gets the images of a message
# batch together, padded to one square canvas, which is what keeps it busy.
DET_BATCH_SIZES = {"TensorrtExecutionProvider": 32, "CUDAExecutionProvider": 32}

# TensorRT builds an engine per model and shape profile (tens of seconds); it is cached here.
TRT_CACHE_DIR = Path(
    os.environ.get("FACEFLEET_TRT_CACHE", str(Path(tempfile.gettempdir()) / "facefleet-trt"))
)


class ModelPackError(RuntimeError):
    """A model pack folder is missing, empty, or lacks a detector or a recogniser."""


def available_providers(preference: tuple[str, ...] = PROVIDER_PREFERENCE) -> list[str]:
    present = set(ort.get_available_providers())
    chosen = [p for p in preference if p in present]
    return chosen or ["CPUExecutionProvider"]


def cpu_cores() -> int:
    """Cores this process may run on (its affinity mask, not the host's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def ort_threads() -> int:
    """Intra-op threads per CPU session: 1, unless FACEFLEET_ORT_THREADS says otherwise (0: one
    per core, the runtime's own default).

    Why one: the worker runs one stream of images per core instead
    (`detection.pack.ModelPack.inference_streams`).
    Measured side by side on the 2-core CPU (shared with other processes, as a Batch host's cores
    are), the detector ran 20-26 images/s as 2 single-thread streams, 19-25 as one session with 2
    intra-op threads and 12-15 with those threads spinning (the runtime's default). Independent
    images need no barrier; intra-op threads meet at one per operator, wait for the slowest, and
    their spin-wait burns the core a decode thread needs."""
    value = os.environ.get("FACEFLEET_ORT_THREADS", "")
    if not value:
        return 1
    threads = int(value)
    return threads if threads > 0 else cpu_cores()


def session_options(threads: int | None = None) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads or ort_threads()
    # Idle intra-op threads would busy-wait for the next operator: CPU taken from decoding.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def _provider_options(
    providers: list[str], input_name: str, profile: tuple[str, str, str] | None
) -> list[dict[str, str]]:
    """TensorRT gets its engine cache and one shape profile covering every batch the worker sends
    (a shape outside the profile would build a new engine in the middle of a batch)."""
    options: list[dict[str, str]] = []
    for provider in providers:
        settings: dict[str, str] = {}
        if provider == "TensorrtExecutionProvider":
            TRT_CACHE_DIR.mkdir(parents=True, exist_ok=True)
            settings = {
                "trt_engine_cache_enable": "True",
                "trt_engine_cache_path": str(TRT_CACHE_DIR),
                "trt_timing_cache_enable": "True",
                "trt_timing_cache_path": str(TRT_CACHE_DIR),
                "trt_fp16_enable": "True",  # tensor cores; detection and embeddings as in fp32
            }
            if profile is not None:
                low, best, high = profile
                settings["trt_profile_min_shapes"] = f"{input_name}:{low}"
                settings["trt_profile_opt_shapes"] = f"{input_name}:{best}"
                settings["trt_profile_max_shapes"] = f"{input_name}:{high}"
        options.append(settings)
    return options


def open_session(
    probe: ort.InferenceSession,
    source: str | bytes,
    providers: list[str],
    profile: tuple[str, str, str],
) -> ort.InferenceSession:
    """The session a model runs on. `probe` is the CPU session the file was routed with: reused
    as is when it already is the one wanted (the CPU, the file unchanged).
    `profile`: the TensorRT shape profile (min, opt, max) of a graph with free axes."""
    if providers == ["CPUExecutionProvider"] and isinstance(source, str):
        return probe
    input_name = probe.get_inputs()[0].name
    dynamic = any(not isinstance(d, int) for d in probe.get_inputs()[0].shape)
    return ort.InferenceSession(
        source,
        sess_options=session_options(),
        providers=providers,
        provider_options=_provider_options(providers, input_name, profile if dynamic else None),
    )


def cpu_session(path: Path) -> ort.InferenceSession:
    """A CPU session on `path`: cheap to open, enough to read what the graph is."""
    return ort.InferenceSession(
        str(path), sess_options=session_options(), providers=["CPUExecutionProvider"]
    )


def route(path: Path, session: ort.InferenceSession) -> str | None:
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


def fingerprint(path: Path) -> str:
    """The first hex digits of the file's SHA-256: a model id changes with its weights."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:10]


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
