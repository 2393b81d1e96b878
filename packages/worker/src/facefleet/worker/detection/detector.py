"""The SCRFD face detector: its heads read from the graph, the letterbox, decoding and NMS here.

An SCRFD graph ends in one head per pyramid level and kind: scores (width 1), box distances
(width 4) and landmark distances (width 10), each row an anchor of the level's grid, row-major,
`anchors_per_cell` anchors per cell. `read_heads` finds them in the graph itself: which output is
which kind by its width, the anchors per cell from the channels of the convolution that feeds the
scores, and each level's stride from the rows it answers on a probe canvas. Nothing is read from
another library's objects.

Where the time goes, and why each step is written as it is (measured on the 2-core CPU, dev pack):
the detector's own session is about 90 % of an image's work and the rest is kept out of its way.
- The canvas: the image is resized straight into the detector's float input (BGR to RGB and
  (x - 127.5) / 128 in one pass per channel), no uint8 canvas in between; cv2.dnn.blobFromImage on
  a padded canvas cost two to three times as much.
- Decoding the heads: boxes and landmarks are computed for the anchors above the threshold only
  (decoding all 16,800 anchors of a 640 canvas, then keeping a handful, cost more than the rest of
  the post-processing); the arithmetic is the reference decoding's on the same float32 values, so
  the boxes are bit-identical (`tests/test_detection_models.py` checks it against insightface).
- Batching (GPU): images of a message batch share one square canvas and one detector call.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

from facefleet.worker.models import (
    DET_BATCH_SIZES,
    GPU_PROVIDERS,
    ModelPackError,
    cpu_cores,
    cpu_session,
    open_session,
    ort_threads,
    session_options,
)

DET_STRIDE = 32  # canvases are cut to a multiple of the coarsest stride of the dev pack's levels
DET_MEAN, DET_STD = 127.5, 128.0  # SCRFD's input normalisation (its training pipeline's)
NMS_THRESHOLD = 0.4  # overlap above which the lower-scored of two boxes is dropped (SCRFD's)
_PROBE_SIDE = 256  # canvas the heads are read on when the graph takes any size
_WIDTHS = {"scores": 1, "boxes": 4, "points": 10}
_ELEMENTWISE = frozenset({"Sigmoid", "Relu", "Exp", "Identity"})  # unary, shape-keeping

Detections = tuple[np.ndarray, np.ndarray]  # boxes (N, 5: x1, y1, x2, y2, score), points (N, 5, 2)


def detection_canvas(width: int, height: int, det_size: int) -> tuple[int, int]:
    """The detector input (w, h) for an image: the long side at det_size, the short side scaled
    the same and rounded up to the stride. Same scale as a det_size square, less padding."""
    scale = det_size / max(width, height)
    canvas_w = max(DET_STRIDE, math.ceil(width * scale / DET_STRIDE) * DET_STRIDE)
    canvas_h = max(DET_STRIDE, math.ceil(height * scale / DET_STRIDE) * DET_STRIDE)
    return min(canvas_w, det_size), min(canvas_h, det_size)


@dataclass(frozen=True)
class Canvas:
    """Where one image sits on a detector input: the input's size (w, h), the image's size on it
    (w, h) at the top left, and the scale between the two."""

    size: tuple[int, int]
    fitted: tuple[int, int]
    scale: float


@dataclass(frozen=True)
class Heads:
    """The detector's outputs, per pyramid level (finest first): the index of each kind's output,
    the level's stride; `anchors_per_cell` for every level."""

    strides: tuple[int, ...]
    scores: tuple[int, ...]
    boxes: tuple[int, ...]
    points: tuple[int, ...]
    anchors_per_cell: int


def _feeding_conv(model: onnx.ModelProto, output: str) -> onnx.NodeProto | None:
    """The convolution a head output comes from, through reshapes and elementwise steps."""
    producers = {out: node for node in model.graph.node for out in node.output}
    fixed = {init.name for init in model.graph.initializer}
    fixed |= {node.output[0] for node in model.graph.node if node.op_type == "Constant"}
    node = producers.get(output)
    while node is not None and node.op_type != "Conv":
        computed = [name for name in node.input if name and name not in fixed]
        node = producers.get(computed[0]) if computed else None
    return node


def read_heads(model: onnx.ModelProto, probe: ort.InferenceSession, name: str) -> Heads:
    """The heads of an SCRFD graph (see the module docstring), from the graph and one probe run."""
    shape = probe.get_inputs()[0].shape
    fixed = isinstance(shape[2], int) and isinstance(shape[3], int)
    height, width = (int(shape[2]), int(shape[3])) if fixed else (_PROBE_SIDE, _PROBE_SIDE)
    blob = np.zeros((1, 3, height, width), dtype=np.float32)
    outputs = probe.run(None, {probe.get_inputs()[0].name: blob})
    kinds: dict[str, list[tuple[int, int]]] = {kind: [] for kind in _WIDTHS}
    for index, array in enumerate(outputs):
        kind = next((k for k, w in _WIDTHS.items() if array.shape[-1] == w), None)
        if kind is None:
            raise ModelPackError(f"detector {name}: an output of width {array.shape[-1]}")
        rows = int(np.prod(array.shape[:-1]))
        kinds[kind].append((rows, index))
    levels = len(kinds["scores"])
    if not levels or any(len(found) != levels for found in kinds.values()):
        raise ModelPackError(
            f"detector {name}: needs score, box and landmark heads for each level "
            f"({', '.join(f'{len(v)} {k}' for k, v in kinds.items())})"
        )
    for found in kinds.values():
        found.sort(key=lambda item: -item[0])  # most rows: the finest level
    conv = _feeding_conv(model, model.graph.output[kinds["scores"][0][1]].name)
    weights = {init.name: init for init in model.graph.initializer}
    if conv is None or conv.input[1] not in weights:
        raise ModelPackError(f"detector {name}: no convolution feeds its score head")
    anchors = int(weights[conv.input[1]].dims[0])  # one score channel per anchor
    strides = []
    for rows, _ in kinds["scores"]:
        stride = round(math.sqrt(height * width * anchors / rows))
        if (height // stride) * (width // stride) * anchors != rows:
            raise ModelPackError(f"detector {name}: a level of {rows} anchors fits no stride")
        strides.append(stride)
    return Heads(
        strides=tuple(strides),
        scores=tuple(index for _, index in kinds["scores"]),
        boxes=tuple(index for _, index in kinds["boxes"]),
        points=tuple(index for _, index in kinds["points"]),
        anchors_per_cell=anchors,
    )


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


def nms(candidates: np.ndarray, threshold: float = NMS_THRESHOLD) -> list[int]:
    """Greedy non-maximum suppression over (N, 5) boxes with scores: the rows kept, best first.
    Areas count the pixels a box covers (+1 per side), as SCRFD's evaluation does."""
    x1, y1, x2, y2, scores = (candidates[:, column] for column in range(5))
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    while order.size:
        best, rest = order[0], order[1:]
        keep.append(int(best))
        width = np.maximum(0.0, np.minimum(x2[best], x2[rest]) - np.maximum(x1[best], x1[rest]) + 1)
        height = np.maximum(
            0.0, np.minimum(y2[best], y2[rest]) - np.maximum(y1[best], y1[rest]) + 1
        )
        overlap = width * height
        order = rest[overlap / (areas[best] + areas[rest] - overlap) <= threshold]
    return keep


class Detector:
    """An SCRFD graph on its sessions: `load()` once (idempotent), then `predict(images)`."""

    def __init__(
        self,
        model_file: Path,
        providers: list[str],
        *,
        probe: ort.InferenceSession | None = None,
        batch: bool = False,
        det_size: int = 640,
    ) -> None:
        self.model_file = str(model_file)
        self.providers = providers
        self._probe = probe
        self._batch = batch
        self._det_size = det_size
        self._lock = threading.Lock()
        self._anchor_cache: dict[tuple[int, int, int], np.ndarray] = {}
        self.session: ort.InferenceSession | None = None
        # CPU, several streams: the detector again with an intra-op thread per core, for the last
        # image of a batch, which would otherwise run on one core while the others have nothing
        # left to do.
        self.wide_session: ort.InferenceSession | None = None
        self.batched = False  # the session takes (N, 3, H, W): see `with_batch_axis`
        self.fixed_size: tuple[int, int] | None = None  # (w, h) when the graph fixes its input

    def load(self) -> Detector:
        """Open the sessions and read the heads; a second call does nothing."""
        with self._lock:
            if self.session is not None:
                return self
            path = Path(self.model_file)
            probe = self._probe or cpu_session(path)
            model = onnx.load(self.model_file)
            self.heads = read_heads(model, probe, path.name)
            source: str | bytes = self.model_file
            if self._batch:
                rewritten = with_batch_axis(model)
                if rewritten is not None:
                    source, self.batched = rewritten.SerializeToString(), True
            # Square canvases from det_size / 2 (the padded second pass) to det_size.
            high = DET_BATCH_SIZES.get(self.providers[0], 1) if self.batched else 1
            size = self._det_size
            square, half = f"3x{size}x{size}", f"3x{size // 2}x{size // 2}"
            profile = (f"1x{half}", f"{high}x{square}", f"{high}x{square}")
            # One session per process: every canvas size runs on the graph's free axes.
            session = open_session(probe, source, self.providers, profile)
            self.input_name = session.get_inputs()[0].name
            self.output_names = [output.name for output in session.get_outputs()]
            self._batch_major = len(session.get_outputs()[0].shape) == 3
            shape = session.get_inputs()[0].shape
            if isinstance(shape[2], int) and isinstance(shape[3], int):
                self.fixed_size = (shape[3], shape[2])
            if self.providers[0] not in GPU_PROVIDERS and cpu_cores() > ort_threads():
                # Not spinning (see session_options), so when another stream is still busy its
                # threads yield rather than fight: measured under load, no slower than one thread.
                self.wide_session = ort.InferenceSession(
                    source, sess_options=session_options(cpu_cores()), providers=self.providers
                )
            self.session = session
            return self

    # -- pre-processing -------------------------------------------------------------------------
    def canvas(self, width: int, height: int, det_size: int, square: bool) -> Canvas:
        """The image scaled to fit the detector input, at its top left (SCRFD's letterbox)."""
        if self.fixed_size is not None:
            size = self.fixed_size
        elif square:
            size = (det_size, det_size)
        else:
            size = detection_canvas(width, height, det_size)
        ratio = float(height) / width
        if ratio > float(size[1]) / size[0]:
            new_height = size[1]
            new_width = int(new_height / ratio)
        else:
            new_width = size[0]
            new_height = int(new_width * ratio)
        return Canvas(size, (new_width, new_height), float(new_height) / height)

    @staticmethod
    def fill(blob: np.ndarray, image: np.ndarray, canvas: Canvas) -> None:
        """Resize `image` into one (3, H, W) slot of the detector input, RGB and normalised; the
        padding holds what a zero pixel becomes. No uint8 canvas, one float write per channel."""
        new_width, new_height = canvas.fitted
        resized = cv2.resize(image, (new_width, new_height))
        blob[:, new_height:, :] = -DET_MEAN / DET_STD
        blob[:, :new_height, new_width:] = -DET_MEAN / DET_STD
        for channel, plane in enumerate(cv2.split(resized)[::-1]):  # BGR -> RGB
            target = blob[channel, :new_height, :new_width]
            np.subtract(plane, DET_MEAN, out=target, dtype=np.float32)
            target *= 1.0 / DET_STD  # exact: a power of two

    # -- post-processing ------------------------------------------------------------------------
    def _anchors(self, height: int, width: int, stride: int) -> np.ndarray:
        """The (x, y) centre of every anchor of a level's grid, in canvas pixels, row-major."""
        key = (height, width, stride)
        centres = self._anchor_cache.get(key)
        if centres is None:
            grid = np.stack(list(np.mgrid[:height, :width][::-1]), axis=-1).astype(np.float32)
            centres = (grid * stride).reshape((-1, 2))
            if self.heads.anchors_per_cell > 1:
                centres = np.repeat(centres, self.heads.anchors_per_cell, axis=0)
            self._anchor_cache[key] = centres
        return centres

    def decode(
        self, outputs: Sequence[np.ndarray], index: int, canvas: Canvas, threshold: float
    ) -> Detections:
        """Boxes (N, 5) and landmarks (N, 5, 2) of image `index` of a detector call, in the
        image's pixels, after NMS; distances (in strides) from the centres of the passing anchors.
        """
        width, height = canvas.size
        heads = self.heads
        scores_list, boxes_list, points_list = [], [], []
        for level, stride in enumerate(heads.strides):
            scores = outputs[heads.scores[level]]
            box_out, kps_out = outputs[heads.boxes[level]], outputs[heads.points[level]]
            if self._batch_major:
                scores, box_out, kps_out = scores[index], box_out[index], kps_out[index]
            passing = np.where(scores >= threshold)[0]
            if not len(passing):
                continue
            centres = self._anchors(height // stride, width // stride, stride)[passing]
            distance = box_out[passing] * stride
            boxes = np.stack(
                [
                    centres[:, 0] - distance[:, 0],
                    centres[:, 1] - distance[:, 1],
                    centres[:, 0] + distance[:, 2],
                    centres[:, 1] + distance[:, 3],
                ],
                axis=-1,
            )
            offsets = kps_out[passing] * stride
            points = np.empty_like(offsets)
            points[:, 0::2] = centres[:, :1] + offsets[:, 0::2]
            points[:, 1::2] = centres[:, 1:2] + offsets[:, 1::2]
            scores_list.append(scores[passing])
            boxes_list.append(boxes)
            points_list.append(points.reshape((-1, 5, 2)))
        if not scores_list:
            return np.empty((0, 5), dtype=np.float32), np.empty((0, 5, 2), dtype=np.float32)
        scores = np.vstack(scores_list)
        order = np.argsort(-scores.ravel(), kind="stable")
        boxes = np.vstack(boxes_list) / canvas.scale
        points = np.vstack(points_list) / canvas.scale
        candidates = np.hstack((boxes, scores)).astype(np.float32, copy=False)[order]
        points = points[order]
        keep = nms(candidates)
        return candidates[keep], points[keep]

    # -- inference ------------------------------------------------------------------------------
    def predict(
        self,
        images: Sequence[np.ndarray],
        det_size: int,
        *,
        square: bool,
        threshold: float = 0.5,
        wide: bool = False,
    ) -> list[Detections]:
        """One detector call over BGR `images` (one canvas size for all of them: `square`, or a
        single image). `wide`: on the session with a thread per core (CPU)."""
        self.load()
        canvases = [
            self.canvas(image.shape[1], image.shape[0], det_size, square) for image in images
        ]
        width, height = canvases[0].size
        if any(c.size != (width, height) for c in canvases):
            raise ValueError("images of one detector call need one canvas size")
        blob = np.empty((len(images), 3, height, width), dtype=np.float32)
        for slot, image, canvas in zip(blob, images, canvases, strict=True):
            self.fill(slot, image, canvas)
        session = self.wide_session if wide and self.wide_session else self.session
        assert session is not None
        outputs = session.run(self.output_names, {self.input_name: blob})
        return [self.decode(outputs, i, canvas, threshold) for i, canvas in enumerate(canvases)]
