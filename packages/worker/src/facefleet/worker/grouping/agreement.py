"""Agreement between two labellings of the same faces (ARI), as the re-cluster reports it.

The runtime's one quality measure; the full quality lab (pairwise, BCubed, same-photo merges)
is `facefleet.tools.quality.scores`, which re-exports these.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

from sklearn.metrics import adjusted_rand_score


def singletons_for_unassigned(predicted: Sequence[Hashable | None]) -> list[Hashable]:
    """Replace None with a label no other face has, so unassigned faces are singletons."""
    return [("unassigned", i) if label is None else label for i, label in enumerate(predicted)]


def _codes(labels: Sequence[Hashable]) -> list[int]:
    codes: dict[Hashable, int] = {}
    return [codes.setdefault(label, len(codes)) for label in labels]


def ari(first: Sequence[Hashable | None], second: Sequence[Hashable | None]) -> float:
    """Adjusted Rand index; None (unassigned) is a singleton on either side."""
    return float(
        adjusted_rand_score(
            _codes(singletons_for_unassigned(first)), _codes(singletons_for_unassigned(second))
        )
    )
