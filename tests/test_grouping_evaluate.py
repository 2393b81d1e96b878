"""A small real run of `facefleet evaluate`: real photos, the dev model pack, real grouping."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from facefleet.tools.quality.conditions import select_photos
from facefleet.tools.quality.evaluate import main


def test_select_photos_takes_people_and_distractors(faces_dir: Path) -> None:
    photos = select_photos(
        faces_dir / "lfw", min_photos=4, max_people=3, distractors=2, max_photos=3, seed=1
    )
    counts: dict[str, int] = {}
    for photo in photos:
        counts[photo.identity] = counts.get(photo.identity, 0) + 1
    assert sorted(counts.values()) == [1, 1, 3, 3, 3]
    assert photos == select_photos(
        faces_dir / "lfw", min_photos=4, max_people=3, distractors=2, max_photos=3, seed=1
    )


@pytest.mark.timeout(240)
def test_evaluate_small_subset(
    faces_dir: Path, models_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        [
            str(faces_dir / "lfw"),
            "--pack",
            str(models_dir),
            "--min-photos",
            "4",
            "--max-people",
            "3",
            "--distractors",
            "2",
            "--max-photos",
            "3",
            "--conditions",
            "clean",
            "composite",
            "--cache",
            str(tmp_path),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    last = out.strip().splitlines()[-1]
    assert last.startswith("RESULT ")
    values = dict(re.findall(r"(\w+)=(\S+)", last))
    assert float(values["clean_bcubed_f1"]) >= 0.8  # clean LFW faces of 3 people group well
    assert values["same_photo_merges"] == "0"  # cannot-link holds on the composites
    for key in ("clean_pairwise_f1", "clean_baseline_ari", "composite_ari"):
        assert 0.0 <= float(values[key]) <= 1.0
    # A consolidated state is what a batch re-cluster gives, whatever the arrival order.
    assert float(values["consolidated_incremental_vs_full_ari"]) == 1.0
    assert float(values["consolidated_order_ari"]) == 1.0
    assert values["named_renamed"] == "0" and values["named_lost"] == "0"
    assert "Immich defaults (minScore 0.7)" in out and "all singletons" in out
    # The truthful user's rounds and the precision keys, for every condition evaluated.
    for name in ("clean", "composite"):
        for k in (10, 25, 50):
            assert 0.0 <= float(values[f"{name}_pairwise_f1_at_{k}"]) <= 1.0
            assert 0.0 <= float(values[f"{name}_baseline_pairwise_f1_at_{k}"]) <= 1.0
        for metric in ("pairwise_precision", "bcubed_precision"):
            assert 0.0 <= float(values[f"{name}_{metric}"]) <= 1.0
            assert 0.0 <= float(values[f"{name}_incremental_{metric}"]) <= 1.0
    assert values["degraded_pairwise_f1_at_10"] == "nan"  # not evaluated in this run
    # Truthful answers only ever help on clean faces.
    assert float(values["clean_pairwise_f1_at_50"]) >= float(values["clean_pairwise_f1"])
    assert "centroid ranking" in out
    assert "== clean: 11 faces" in out
    assert list(tmp_path.glob("clean-*.npz"))  # embeddings cached for reruns
