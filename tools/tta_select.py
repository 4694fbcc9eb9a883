"""Choose TTA views and ensemble member weights at package time, on clean and shifted validation data."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from submission.model import DIHEDRAL_VIEWS, TTAEnsemble, views_in
from tools.shift.suite import apply_variant, make_variant
from train.data import Dataset

PHOTOMETRIC_VIEWS = views_in("photometric")
CANDIDATE_VIEW_SETS: dict[str, tuple[str, ...]] = {
    "none": ("identity",),
    "flips2": ("identity", "flip_lr"),
    "rot4": ("identity", "rot90", "rot180", "rot270"),
    "dihedral8": DIHEDRAL_VIEWS,
    "dihedral8+photo": DIHEDRAL_VIEWS + PHOTOMETRIC_VIEWS,
}
# The shifted copies of the validation data TTA is also scored on: (suite, kind, level) of tools/shift.
EVAL_SHIFTS = (("an2dl", "an2dl", 2), ("corruptions", "defocus_blur", 3), ("corruptions", "contrast_down", 3),
               ("corruptions", "saturate", 3), ("corruptions", "stain_deposit", 3))
# Score differences smaller than this are noise on a few hundred validation images: among candidates
# within it of the best, the one with the most views wins (averaging more views of a cell with no
# natural orientation rarely hurts; the time cap in `package` limits the cost).
TOLERANCE = 0.003


def pick_best(rows: list[dict], max_views: int | None = None) -> dict:
    """The candidate with the most views (then the higher score) among those scoring within
    ``TOLERANCE`` of the best; only rows with at most ``max_views`` views are considered. Marks it."""
    allowed = [r for r in rows if max_views is None or r["views"] <= max_views]
    top = max(r["score"] for r in allowed)
    best = max((r for r in allowed if r["score"] >= top - TOLERANCE), key=lambda r: (r["views"], r["score"]))
    for row in rows:
        row.pop("chosen", None)
    best["chosen"] = True
    return best


@dataclass
class TTAChoice:
    views: tuple[str, ...]
    member_weights: list[float]
    table: list[dict]  # one row per candidate: name, views, weighting, clean, shifted, score

    def limited_to(self, max_views: int) -> TTAChoice:
        """The best candidate with at most ``max_views`` views (by the same rule)."""
        best = pick_best(self.table, max_views)
        return TTAChoice(CANDIDATE_VIEW_SETS[best["name"]], best["weights"], self.table)


def choose_tta(models: list, eval_sets: dict[str, tuple[np.ndarray, np.ndarray]],
               batch_size: int = 256) -> TTAChoice:
    """Score every candidate view set with uniform and accuracy-weighted members; keep the best.

    ``eval_sets`` maps a name ("clean", "pixelate@3", …) to (images, labels). The score is the mean of
    the clean accuracy and the mean shifted accuracy, so robustness counts as much as clean accuracy.
    """
    all_views = CANDIDATE_VIEW_SETS["dihedral8+photo"]
    ensemble = TTAEnsemble(models, views=all_views, batch_size=batch_size)
    probs = {name: ensemble.view_probabilities(x) for name, (x, _) in eval_sets.items()}
    labels = {name: y for name, (_, y) in eval_sets.items()}
    member_acc = np.mean([[np.mean(p[m].mean(0).argmax(1) == labels[name]) for m in range(len(models))]
                          for name, p in probs.items()], axis=0)
    weightings = {"uniform": np.ones(len(models))}
    if len(models) > 1:
        weightings["accuracy"] = np.maximum(member_acc - member_acc.min() + 0.01, 0.01)
    rows = []
    for set_name, views in CANDIDATE_VIEW_SETS.items():
        idx = [all_views.index(v) for v in views]
        for weight_name, weights in weightings.items():
            w = weights / weights.sum()
            acc = {name: float(np.mean(
                np.einsum("m,mvnc->nc", w, p[:, idx]).argmax(1) == labels[name])) for name, p in probs.items()}
            shifted = [a for name, a in acc.items() if name != "clean"]
            row = {"name": set_name, "views": len(views), "weighting": weight_name,
                   "clean": acc.get("clean", float("nan")),
                   "shifted": float(np.mean(shifted)) if shifted else float("nan")}
            row["score"] = float(np.nanmean([row["clean"], row["shifted"]]))
            row["weights"] = [float(x) for x in w]
            rows.append(row)
    best = pick_best(rows)
    return TTAChoice(CANDIDATE_VIEW_SETS[best["name"]], best["weights"], rows)


def shifted_eval_sets(data: Dataset, seed: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Clean validation data plus a few shifted copies from the local-score suite."""
    sets = {"clean": (data.images, data.labels)}
    for suite, kind, severity in EVAL_SHIFTS:
        variant = make_variant(suite, kind, severity)
        sets[variant.name] = (apply_variant(data.images, variant, seed), data.labels)
    return sets
