"""Model packs: a folder of InsightFace-layout ONNX files, each recognised from its graph.

A pack is data (buffalo_l in production, facefleet-dev locally): the loader opens every `*.onnx`
once, routes it as insightface's model_zoo does (many outputs: SCRFD detector; one output and a
square input of at least 112 that is a multiple of 16: ArcFace recogniser; landmark/attribute
models are skipped) and wraps it in insightface's own class. One ONNX Runtime session per model
per process, warmed once at load.

How a pack runs is chosen per execution provider, each choice in one place (`PROVIDER_PREFERENCE`,
`REC_BATCH_SIZES`, `DET_BATCH_SIZES`, `_session_options`): on the CPU one intra-op thread per
session and one inference stream per core; on a GPU TensorRT (engine cached on disk) or CUDA, with
detection batched across the images of a message batch. Batching needs a detector graph with a
batch axis: `with_batch_axis` gives one to SCRFD exports that fix batch 1, as the dev recogniser
was given one.

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
import onnx
import onnxruntime as ort
from onnx import numpy_helper

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

    Why one: the worker runs one stream of images per core instead (`ModelPack.inference_streams`).
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


def _session_options(threads: int | None = None) -> ort.SessionOptions:
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


_ELEMENTWISE = frozenset({"Sigmoid", "Relu", "Exp", "Identity"})  # unary, shape-keeping


def with_batch_axis(model: onnx.ModelProto) -> onnx.ModelProto | None:
    """The SCRFD graph with a free batch axis and batch-major (N, anchors, k) outputs, or None when
    the graph is not of the shape this rewrite knows.

    InsightFace's SCRFD exports fix batch 1 and end each head in Transpose(2, 3, 0, 1) + Reshape
    (-1, k): with N images that interleaves them anchor by anchor. Transpose(0, 2, 3, 1) + Reshape
    (0, -1, k) computes the same numbers for N = 1 and keeps images apart for N > 1."""
    graph = onnx.ModelProto()
    graph.CopyFrom(model)
    producers = {out: node for node in graph.graph.node for out in node.output}
    initializers = {init.name: init for init in graph.graph.initializer}
    constants = {node.output[0]: node for node in graph.graph.node if node.op_type == "Constant"}
    for output in graph.graph.output:
        reshape = producers.get(output.name)
        while reshape is not None and reshape.op_type in _ELEMENTWISE:  # e.g. score Sigmoid
            reshape = producers.get(reshape.input[0])
        if reshape is None or reshape.op_type != "Reshape":
            return None
        transpose = producers.get(reshape.input[0])
        if transpose is None or transpose.op_type != "Transpose":
            return None
        perm = next(a for a in transpose.attribute if a.name == "perm")
        if list(perm.ints) not in ([2, 3, 0, 1], [0, 2, 3, 1]):
            return None
        shape_name = reshape.input[1]
        if shape_name in initializers:
            width = int(numpy_helper.to_array(initializers[shape_name])[-1])
        elif shape_name in constants:
            width = int(numpy_helper.to_array(constants[shape_name].attribute[0].t)[-1])
        else:
            return None
        del perm.ints[:]
        perm.ints.extend([0, 2, 3, 1])
        new_shape = f"{output.name}_batch_shape"
        graph.graph.initializer.append(
            numpy_helper.from_array(np.array([0, -1, width], dtype=np.int64), new_shape)
        )
        reshape.input[1] = new_shape
        dims = output.type.tensor_type.shape.dim
        del dims[:]
        for value in ("batch", f"{output.name}_anchors", width):
            dim = dims.add()
            if isinstance(value, str):
                dim.dim_param = value
            else:
                dim.dim_value = value
    batch = graph.graph.input[0].type.tensor_type.shape.dim[0]
    batch.ClearField("dim_value")
    batch.dim_param = "batch"
    return graph


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
    det_batched: bool = False  # the detector session takes (N, 3, H, W): see `with_batch_axis`
    # CPU, several streams: the detector again with an intra-op thread per core, for the last image
    # of a batch, which would otherwise run on one core while the others have nothing left to do.
    wide_detector: Any = None  # onnxruntime.InferenceSession

    @property
    def provider(self) -> str:
        return self.providers[0]

    @property
    def on_gpu(self) -> bool:
        return self.provider in GPU_PROVIDERS

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
        with single-thread sessions, see `ort_threads`). GPU: two, so that one thread prepares or
        finishes a batch on the CPU while the other's batch is on the device."""
        if self.on_gpu:
            return 2
        return max(1, cpu_cores() // ort_threads())


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


def _open(
    probe: ort.InferenceSession,
    source: str | bytes,
    providers: list[str],
    profile: tuple[str, str, str],
) -> ort.InferenceSession:
    """The session to run: the routing probe itself when it already is the one wanted."""
    if providers == ["CPUExecutionProvider"] and isinstance(source, str):
        return probe
    input_name = probe.get_inputs()[0].name
    dynamic = any(not isinstance(d, int) for d in probe.get_inputs()[0].shape)
    return ort.InferenceSession(
        source,
        sess_options=_session_options(),
        providers=providers,
        provider_options=_provider_options(providers, input_name, profile if dynamic else None),
    )


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
    from insightface.model_zoo import SCRFD, ArcFaceONNX  # heavy import, only where models load

    folder = Path(path)
    files = sorted(folder.glob("*.onnx"))
    if not files:
        raise ModelPackError(f"model pack {folder} holds no .onnx file")
    chosen = providers or available_providers()
    on_gpu = chosen[0] in GPU_PROVIDERS
    batch = on_gpu if batch_detector is None else batch_detector
    detector = recogniser = wide = None
    rec_file: Path | None = None
    det_batched = False
    for file in files:
        # Routed on a CPU session (cheap to open); reused as is when the CPU is the provider.
        probe = ort.InferenceSession(
            str(file), sess_options=_session_options(), providers=["CPUExecutionProvider"]
        )
        kind = _route(file, probe)
        if kind == "detection" and detector is None:
            source: str | bytes = str(file)
            if batch:
                rewritten = with_batch_axis(onnx.load(str(file)))
                if rewritten is not None:
                    source, det_batched = rewritten.SerializeToString(), True
            # Square canvases from det_size / 2 (the padded second pass) to det_size.
            high = DET_BATCH_SIZES.get(chosen[0], 1) if det_batched else 1
            square, half = f"3x{det_size}x{det_size}", f"3x{det_size // 2}x{det_size // 2}"
            session = _open(
                probe, source, chosen, (f"1x{half}", f"{high}x{square}", f"{high}x{square}")
            )
            # One session per process: every detection canvas size runs on the dynamic graph
            # (insightface would otherwise build a static-shape session per size).
            detector = SCRFD(model_file=str(file), session=session, static_shape_sessions=False)
            if not on_gpu and cpu_cores() > ort_threads():
                # Not spinning (see _session_options), so when another stream is still busy its
                # threads yield rather than fight: measured under load, no slower than one thread.
                wide = ort.InferenceSession(
                    source, sess_options=_session_options(cpu_cores()), providers=chosen
                )
        elif kind == "recognition" and recogniser is None:
            high = REC_BATCH_SIZES.get(chosen[0], 8)
            side = probe.get_inputs()[0].shape[2]
            crop = f"3x{side}x{side}"
            session = _open(
                probe, str(file), chosen, (f"1x{crop}", f"{high}x{crop}", f"{high}x{crop}")
            )
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
        det_batched=det_batched,
        wide_detector=wide,
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
