"""Grouping metrics against hand-worked examples."""

from __future__ import annotations

import pytest

from facefleet.tools.quality.scores import (
    ari,
    bcubed_scores,
    pairwise_scores,
    same_photo_merges,
    score,
)


def test_perfect_grouping_scores_one() -> None:
    truth = ["a", "a", "b", "b", "c"]
    s = score(truth, [1, 1, 2, 2, 3])
    assert (s.pairwise_f1, s.bcubed_f1, s.ari) == (1.0, 1.0, 1.0)
    assert s.people_true == 2 and s.people_created == 3


def test_unassigned_faces_are_singletons() -> None:
    truth = ["a", "a", "a", "b"]
    # Two of a's three faces together, one left out, b left out.
    precision, recall, _ = pairwise_scores(truth, [1, 1, None, None])
    assert precision == 1.0 and recall == pytest.approx(1 / 3)
    bp, br, _ = bcubed_scores(truth, [1, 1, None, None])
    assert bp == 1.0
    assert br == pytest.approx((2 / 3 + 2 / 3 + 1 / 3 + 1) / 4)
    assert score(truth, [1, 1, None, None]).unassigned_share == 0.5


def test_merging_two_people_costs_precision() -> None:
    truth = ["a", "a", "b", "b"]
    bp, br, _ = bcubed_scores(truth, [1, 1, 1, 1])
    assert bp == pytest.approx(0.5) and br == 1.0
    assert pairwise_scores(truth, [1, 1, 1, 1])[0] == pytest.approx(2 / 6)


def test_ari_is_label_free_and_none_is_a_singleton() -> None:
    assert ari([1, 1, 2, 2], ["x", "x", "y", "y"]) == 1.0
    assert ari([None, None, 1, 1], [5, 6, 7, 7]) == 1.0
    assert ari([None, None, 1, 1], [5, 5, 7, 7]) < 1.0


def test_same_photo_merges_count_pairs() -> None:
    photos = ["p1", "p1", "p1", "p2"]
    assert same_photo_merges(photos, [1, 1, 1, 1]) == 3
    assert same_photo_merges(photos, [1, 2, None, 1]) == 0


def test_length_mismatch_is_an_error() -> None:
    with pytest.raises(ValueError, match="truth has 2 faces"):
        score(["a", "b"], [1])
