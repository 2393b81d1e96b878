"""Grouping quality measures: pairwise and BCubed precision/recall/F1, ARI, same-photo merges.

A predicted labelling gives each face a person id, or None when the face was left unassigned.
Unassigned faces count as singletons (each its own predicted cluster): that is what a user sees
(a face in no person is grouped with nothing), and it keeps a clusterer from scoring well by
refusing to decide. True labels are the identities (LFW folder names).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any

from facefleet.worker.grouping.agreement import ari, singletons_for_unassigned

__all__ = [
    "GroupingScores",
    "ari",
    "bcubed_scores",
    "pairwise_scores",
    "same_photo_merges",
    "score",
    "singletons_for_unassigned",
]


@dataclass(frozen=True)
class GroupingScores:
    pairwise_precision: float
    pairwise_recall: float
    pairwise_f1: float
    bcubed_precision: float
    bcubed_recall: float
    bcubed_f1: float
    ari: float
    people_created: int
    people_true: int
    unassigned_share: float
    same_photo_merges: int


def _f1(precision: float, recall: float) -> float:
    total = precision + recall
    return 2 * precision * recall / total if total > 0 else 0.0


def _pairs(sizes: Counter[Any]) -> int:
    return sum(n * (n - 1) // 2 for n in sizes.values())


def pairwise_scores(
    truth: Sequence[Hashable], predicted: Sequence[Hashable | None]
) -> tuple[float, float, float]:
    """Precision/recall/F1 over the pairs of faces put together (1.0 when there are no pairs)."""
    pred = singletons_for_unassigned(predicted)
    joint = _pairs(Counter(zip(truth, pred, strict=True)))
    predicted_pairs = _pairs(Counter(pred))
    true_pairs = _pairs(Counter(truth))
    precision = joint / predicted_pairs if predicted_pairs else 1.0
    recall = joint / true_pairs if true_pairs else 1.0
    return precision, recall, _f1(precision, recall)


def bcubed_scores(
    truth: Sequence[Hashable], predicted: Sequence[Hashable | None]
) -> tuple[float, float, float]:
    """BCubed (Bagga & Baldwin): per-face precision/recall of its cluster, averaged over faces."""
    pred = singletons_for_unassigned(predicted)
    if not pred:
        return 1.0, 1.0, 1.0
    joint = Counter(zip(truth, pred, strict=True))
    pred_sizes = Counter(pred)
    true_sizes = Counter(truth)
    # Every face in the same (truth, predicted) cell has the same per-face scores.
    precision = sum(n * n / pred_sizes[p] for (_, p), n in joint.items()) / len(pred)
    recall = sum(n * n / true_sizes[t] for (t, _), n in joint.items()) / len(pred)
    return precision, recall, _f1(precision, recall)


def same_photo_merges(photos: Sequence[Hashable], predicted: Sequence[Hashable | None]) -> int:
    """Pairs of faces from one photo that were put in the same person (the cannot-link rule)."""
    cells = Counter(
        (photo, label) for photo, label in zip(photos, predicted, strict=True) if label is not None
    )
    return _pairs(cells)


def score(
    truth: Sequence[Hashable],
    predicted: Sequence[Hashable | None],
    photos: Sequence[Hashable] | None = None,
) -> GroupingScores:
    """All measures for one labelling; `photos` (the photo of each face) enables same-photo merges.

    people_true counts identities with two or more faces: a one-face identity cannot form a group.
    """
    if len(truth) != len(predicted):
        raise ValueError(f"truth has {len(truth)} faces but predicted has {len(predicted)}")
    pp, pr, pf = pairwise_scores(truth, predicted)
    bp, br, bf = bcubed_scores(truth, predicted)
    assigned = [label for label in predicted if label is not None]
    return GroupingScores(
        pairwise_precision=pp,
        pairwise_recall=pr,
        pairwise_f1=pf,
        bcubed_precision=bp,
        bcubed_recall=br,
        bcubed_f1=bf,
        ari=ari(truth, predicted),
        people_created=len(set(assigned)),
        people_true=sum(1 for n in Counter(truth).values() if n >= 2),
        unassigned_share=(len(predicted) - len(assigned)) / len(predicted) if predicted else 0.0,
        same_photo_merges=same_photo_merges(photos, predicted) if photos is not None else 0,
    )
