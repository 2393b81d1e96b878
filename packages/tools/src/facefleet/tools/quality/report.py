"""The lab's report: one table per condition and the `RESULT ...` line of headline figures
(FaceFleet's after consolidation against the best truth-tuned baseline per metric)."""

from __future__ import annotations

from facefleet.tools.quality.conditions import CONDITIONS
from facefleet.tools.quality.experiment import FACEFLEET, INCREMENTAL, ConditionResult
from facefleet.tools.quality.scores import GroupingScores
from facefleet.tools.quality.truthful_user import BUDGETS

METRIC_FIELDS = {"bcubed": "bcubed_f1", "pairwise": "pairwise_f1", "ari": "ari"}


def best_baseline(result: ConditionResult, metric: str = "bcubed") -> tuple[str, GroupingScores]:
    """The best truth-tuned baseline for `metric` (each baseline was tuned for it)."""
    tuned = {k: v for k, v in result.rows.items() if k.endswith(f"tuned[{metric}]")}
    field_name = METRIC_FIELDS[metric]
    name = max(tuned, key=lambda k: getattr(tuned[k], field_name))
    return name, tuned[name]


def format_table(result: ConditionResult) -> str:
    lines = [
        f"== {result.name}: {result.faces} faces ({result.missed} not detected)",
        f"agreement ARI: incremental vs full {result.incremental_vs_full:.4f}, two orders "
        f"{result.order_ari:.4f}; after consolidation: vs full {result.consolidated_vs_full:.4f}, "
        f"two orders {result.consolidated_order_ari:.4f} (target >= 0.98)",
        f"named people: {result.named} named before consolidation, {result.named_renamed} renamed, "
        f"{result.named_lost} lost or emptied (target 0)",
        f"{'method':<34}{'pairP':>7}{'pairR':>7}{'pairF1':>7}{'B3-P':>7}{'B3-R':>7}{'B3-F1':>7}"
        f"{'ARI':>7}{'people':>8}{'truth':>7}{'unasg':>7}{'same-ph':>8}  setting",
    ]
    for method, s in result.rows.items():
        setting = ",".join(f"{k}={v}" for k, v in result.settings.get(method, {}).items())
        lines.append(
            f"{method:<34}{s.pairwise_precision:7.3f}{s.pairwise_recall:7.3f}"
            f"{s.pairwise_f1:7.3f}{s.bcubed_precision:7.3f}{s.bcubed_recall:7.3f}"
            f"{s.bcubed_f1:7.3f}{s.ari:7.3f}{s.people_created:8d}{s.people_true:7d}"
            f"{s.unassigned_share:7.3f}{s.same_photo_merges:8d}  {setting}"
        )
    ours = result.rows[FACEFLEET]
    lines.append(
        "a truthful user's answers (per 100 true people), pairwise F1 / BCubed F1 / ARI, "
        "FaceFleet's questions vs the centroid ranking:"
    )
    lines.append(f"  {'0':>3}: {_triple(ours)}")
    for k in BUDGETS:
        if k in result.answers:
            lines.append(
                f"  {k:>3}: {_triple(result.answers[k])}   centroid ranking "
                f"{_triple(result.baseline_answers[k])}"
            )
    for metric, field_name in METRIC_FIELDS.items():
        name, best = best_baseline(result, metric)
        mine, theirs = getattr(ours, field_name), getattr(best, field_name)
        verdict = "met" if mine >= theirs - 1e-9 else f"short by {theirs - mine:.4f}"
        lines.append(
            f"target {metric}: FaceFleet {mine:.4f} vs best truth-tuned baseline {theirs:.4f} "
            f"({name}): {verdict}"
        )
    return "\n".join(lines)


def _triple(s: GroupingScores) -> str:
    return f"{s.pairwise_f1:.3f} / {s.bcubed_f1:.3f} / {s.ari:.3f}"


def result_line(results: dict[str, ConditionResult]) -> str:
    """The headline figures; FaceFleet's are after consolidation (what a user's library shows
    once the pass has run; the incremental figures are in the tables)."""
    parts = []
    for name in CONDITIONS:
        result = results.get(name)
        for metric, field_name in METRIC_FIELDS.items():
            key = "bcubed_f1" if metric == "bcubed" else field_name
            ours = f"{getattr(result.rows[FACEFLEET], field_name):.4f}" if result else "nan"
            base = (
                f"{getattr(best_baseline(result, metric)[1], field_name):.4f}" if result else "nan"
            )
            parts += [f"{name}_{key}={ours}", f"{name}_baseline_{key}={base}"]
    composite = results.get("composite")
    immich = (
        next((k for k in composite.rows if k.startswith("Immich")), None) if composite else None
    )
    ours_merges = composite.rows[FACEFLEET].same_photo_merges if composite else "nan"
    base_merges = composite.rows[immich].same_photo_merges if composite and immich else "nan"
    parts.append(f"same_photo_merges={ours_merges}")
    parts.append(f"baseline_same_photo_merges={base_merges}")
    values = list(results.values())
    parts.append(f"incremental_vs_full_ari={min(r.incremental_vs_full for r in values):.4f}")
    parts.append(f"order_ari={min(r.order_ari for r in values):.4f}")
    parts.append(
        f"consolidated_incremental_vs_full_ari={min(r.consolidated_vs_full for r in values):.4f}"
    )
    parts.append(f"consolidated_order_ari={min(r.consolidated_order_ari for r in values):.4f}")
    parts.append(f"named_renamed={sum(r.named_renamed for r in values)}")
    parts.append(f"named_lost={sum(r.named_lost for r in values)}")
    parts.extend(_answer_and_precision_keys(results))
    return "RESULT " + " ".join(parts)


def _answer_and_precision_keys(results: dict[str, ConditionResult]) -> list[str]:
    """Per condition: pairwise F1 after k answers per 100 people (FaceFleet's questions and the
    centroid ranking's), and the precisions after consolidation and of the incremental state."""
    parts = []
    for name in CONDITIONS:
        result = results.get(name)
        for k in BUDGETS:
            ours = result.answers.get(k) if result else None
            base = result.baseline_answers.get(k) if result else None
            parts.append(f"{name}_pairwise_f1_at_{k}={_value(ours, 'pairwise_f1')}")
            parts.append(f"{name}_baseline_pairwise_f1_at_{k}={_value(base, 'pairwise_f1')}")
        for row, prefix in ((FACEFLEET, ""), (INCREMENTAL, "incremental_")):
            scores = result.rows.get(row) if result else None
            for metric in ("pairwise_precision", "bcubed_precision"):
                parts.append(f"{name}_{prefix}{metric}={_value(scores, metric)}")
    return parts


def _value(scores: GroupingScores | None, field_name: str) -> str:
    return "nan" if scores is None else f"{getattr(scores, field_name):.4f}"
