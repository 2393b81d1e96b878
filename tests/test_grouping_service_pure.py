"""The service's pure helpers: settings to parameters, face matching across models."""

from __future__ import annotations

import numpy as np

from facefleet.common.config import Settings
from facefleet.common.documents import FaceDoc
from facefleet.worker.grouping.carry import iou, match_faces
from facefleet.worker.grouping.service import cluster_params
from facefleet.worker.grouping.state import ClusterParams


def face(
    image_id: str, index: int, bbox: tuple[float, float, float, float], model_id: str
) -> FaceDoc:
    return FaceDoc(
        "u",
        image_id,
        model_id,
        index,
        bbox,
        ((0.0, 0.0),) * 5,
        0.9,
        0.9,
        np.ones(4, dtype=np.float32) / 2,
    )


def test_grouping_distance_moves_every_threshold_together() -> None:
    default = ClusterParams()
    assert cluster_params(Settings.from_env({})) == default
    tuned = cluster_params(Settings.from_env({"GROUPING_DISTANCE": "0.5"}))
    assert abs(tuned.join_sim - 0.5) < 1e-9
    assert abs((tuned.seed_sim - tuned.join_sim) - (default.seed_sim - default.join_sim)) < 1e-9
    assert tuned.k == default.k


def test_faces_match_across_models_by_photo_and_box_overlap() -> None:
    old = [
        face("p1", 0, (0, 0, 100, 100), "m1"),
        face("p1", 1, (200, 0, 300, 100), "m1"),
        face("p2", 0, (0, 0, 50, 50), "m1"),
    ]
    new = [
        face("p1", 0, (205, 5, 305, 105), "m2"),
        face("p1", 1, (2, 0, 102, 98), "m2"),
        face("p2", 0, (100, 100, 150, 150), "m2"),
    ]
    mapping = match_faces(old, new)
    assert mapping == {old[0].doc_id: new[1].doc_id, old[1].doc_id: new[0].doc_id}
    assert iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert iou((0, 0, 10, 10), (20, 20, 30, 30)) == 0.0
