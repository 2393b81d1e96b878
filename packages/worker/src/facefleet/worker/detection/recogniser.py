"""The ArcFace recogniser: aligned face crops in, raw embeddings out (the caller normalises).

Its input normalisation is read from the graph: an MXNet export subtracts and scales inside the
graph (a Sub and a Mul before its first convolution) and takes raw pixels; every other ArcFace
export takes (x - 127.5) / 127.5. The crops go in RGB at the graph's input size.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime as ort

from facefleet.worker.models import REC_BATCH_SIZES, cpu_session, open_session

REC_MEAN, REC_STD = 127.5, 127.5  # ArcFace's input normalisation, when the graph has none


def normalises_inside(model: onnx.ModelProto) -> bool:
    """Whether the graph subtracts and scales its input itself (before its first convolution)."""
    before: set[str] = set()
    for node in model.graph.node:
        if node.op_type == "Conv":
            break
        before.add(node.op_type)
    return {"Sub", "Mul"} <= before


class Recogniser:
    """An ArcFace graph on its session: `load()` once (idempotent), then `predict(crops)`."""

    def __init__(
        self, model_file: Path, providers: list[str], *, probe: ort.InferenceSession | None = None
    ) -> None:
        self.model_file = str(model_file)
        self.providers = providers
        self._probe = probe
        self._lock = threading.Lock()
        self.session: ort.InferenceSession | None = None
        self.input_mean, self.input_std = REC_MEAN, REC_STD
        self.fixed_batch: int | None = None  # the graph's batch axis when the file fixes it
        self.embedding_dim = 0

    def load(self) -> Recogniser:
        """Open the session, read the input, measure the embedding; a second call does nothing."""
        with self._lock:
            if self.session is not None:
                return self
            path = Path(self.model_file)
            probe = self._probe or cpu_session(path)
            if normalises_inside(onnx.load(self.model_file)):
                self.input_mean, self.input_std = 0.0, 1.0
            shape = probe.get_inputs()[0].shape
            side = int(shape[2])
            self.input_size = (int(shape[3]), side)  # (w, h)
            self.fixed_batch = shape[0] if isinstance(shape[0], int) else None
            high = REC_BATCH_SIZES.get(self.providers[0], 8)
            crop = f"3x{side}x{side}"
            session = open_session(
                probe,
                self.model_file,
                self.providers,
                (f"1x{crop}", f"{high}x{crop}", f"{high}x{crop}"),
            )
            self.input_name = session.get_inputs()[0].name
            self.output_name = session.get_outputs()[0].name
            zeros = np.zeros((self.fixed_batch or 1, 3, side, side), dtype=np.float32)
            dim = session.run([self.output_name], {self.input_name: zeros})[0].shape[-1]
            self.embedding_dim = int(dim)
            self.session = session
            return self

    def predict(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        """(N, D) float32 raw embeddings of aligned BGR crops, in one session run."""
        self.load()
        assert self.session is not None
        blob = cv2.dnn.blobFromImages(
            list(crops),
            1.0 / self.input_std,
            self.input_size,
            (self.input_mean,) * 3,
            swapRB=True,
        )
        blob = np.ascontiguousarray(blob, dtype=np.float32)
        out = self.session.run([self.output_name], {self.input_name: blob})[0]
        return np.asarray(out, dtype=np.float32).reshape(-1, self.embedding_dim)
