"""Choose TTA views and ensemble member weights at package time, on clean and shifted validation data."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from submission.model import DIHEDRAL_VIEWS, BatchNormAdaptation, ImageRepair, TTAEnsemble, ZoomUndo, views_in
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
# The shifted copies of the validation data TTA is also scored on: (suite, kind, level) of tools/shift —
# the calibrated hidden-set shift at its three levels.
EVAL_SHIFTS = (("hidden", "hidden", 1), ("hidden", "hidden", 2), ("hidden", "hidden", 3))
# Test-time BatchNorm adaptation (``TTAEnsemble(adapt_bn=...)``): the prior, in images, of the training
# statistics; and how much clean accuracy it may cost (it must also raise the shifted accuracy).
ADAPT_PRIOR = 256.0
ADAPT_MAX_CLEAN_COST = 0.002
# `bcsub package --zoom-undo`: the clean accuracy the zoom undo may cost ("on": any; "off": it is not tried).
ZOOM_UNDO_RULES = {"auto": ADAPT_MAX_CLEAN_COST, "on": 1.0, "off": None}
# Score differences smaller than this are noise on a few hundred validation images: among candidates
# within it of the best, the one with the most views wins (averaging more views of a cell with no
# natural orientation rarely hurts; the time cap in `package` limits the cost).
TOLERANCE = 0.003


def pick_best(rows: list[dict], max_views: int | None = None) -> dict:
    """The candidate with the most views (then the higher score) among those scoring within
    ``TOLERANCE`` of the best; only eligible rows with at most ``max_views`` views are considered. Marks it."""
    allowed = [r for r in rows if r.get("eligible", True) and (max_views is None or r["views"] <= max_views)]
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
    table: list[dict]  # one row per candidate: name, views, weighting, adapt_bn, repair, clean, shifted, score
    adapt_bn: float | None = None  # the BatchNorm adaptation prior, None: off
    repair: ImageRepair | None = None  # None: off
    candidate_repair: ImageRepair | None = None  # the repair the rows with "repair" were scored with
    zoom: ZoomUndo | None = None  # None: off
    candidate_zoom: ZoomUndo | None = None  # the zoom undo the rows with "zoom" were scored with

    @classmethod
    def from_row(cls, row: dict, table: list[dict], candidate_repair: ImageRepair | None = None,
                 candidate_zoom: ZoomUndo | None = None) -> TTAChoice:
        repair = candidate_repair if row.get("repair") else None
        zoom = candidate_zoom if row.get("zoom") else None
        return cls(CANDIDATE_VIEW_SETS[row["name"]], row["weights"], table, row["adapt_bn"] or None, repair,
                   candidate_repair, zoom, candidate_zoom)

    def limited_to(self, max_views: int) -> TTAChoice:
        """The best candidate with at most ``max_views`` views (by the same rule)."""
        return TTAChoice.from_row(pick_best(self.table, max_views), self.table, self.candidate_repair,
                                  self.candidate_zoom)


def choose_tta(models: list, eval_sets: dict[str, tuple[np.ndarray, np.ndarray]],
               batch_size: int = 256, usable: np.ndarray | None = None,
               fit_zoom: Callable[[ImageRepair | None], ZoomUndo] | None = None,
               zoom_max_clean_cost: float = ADAPT_MAX_CLEAN_COST) -> TTAChoice:
    """Score every candidate view set with uniform and accuracy-weighted members, with and without image
    repair (``ImageRepair``: an erased box filled, tone ops undone; its tone reference taken from the clean
    images), with and without test-time BatchNorm adaptation; keep the best.

    ``eval_sets`` maps a name ("clean", "hidden@2", …) to (images, labels). The score is the mean of the
    clean accuracy and the mean shifted accuracy, so robustness counts as much as clean accuracy. An
    adapted candidate is eligible only where it raises the shifted accuracy of the same candidate without
    adaptation and costs at most ``ADAPT_MAX_CLEAN_COST`` of its clean accuracy (each set adapts to itself,
    as the hidden set will). Image repair is judged by the same rule against the same candidate without it;
    then ``fit_zoom`` (the image repair chosen, or None -> a fitted ``ZoomUndo``), when given, is called and
    the zoom undo judged by the same rule, with ``zoom_max_clean_cost`` for the clean cost. BatchNorm
    adaptation is then scored on the sets as the best unadapted candidate saw them (repaired, zoom undone, or
    not). ``usable`` (members, n): which members may predict which image (those that did not train on it: one
    per image for a --folds run); each image is scored on the weighted average of those.
    """
    all_views = CANDIDATE_VIEW_SETS["dihedral8+photo"]
    labels = {name: y for name, (_, y) in eval_sets.items()}
    plain = _view_probabilities(models, all_views, batch_size, None, eval_sets)
    n = len(next(iter(labels.values())))
    mask = np.ones((len(models), n)) if usable is None else np.asarray(usable, np.float64)
    member_acc = np.mean([[np.mean((p[m].mean(0).argmax(1) == labels[name])[mask[m] > 0])
                           for m in range(len(models))] for name, p in plain.items()], axis=0)
    weightings = {"uniform": np.ones(len(models))}
    if len(models) > 1:
        weightings["accuracy"] = np.maximum(member_acc - member_acc.min() + 0.01, 0.01)

    def score(set_probs: dict[str, np.ndarray], adapt: float | None, repair: bool, zoomed: bool = False) -> list[dict]:
        rows = []
        for set_name, views in CANDIDATE_VIEW_SETS.items():
            idx = [all_views.index(v) for v in views]
            for weight_name, weights in weightings.items():
                w = weights / weights.sum()
                per_image = w[:, None] * mask
                per_image /= per_image.sum(axis=0, keepdims=True)
                acc = {name: float(np.mean(np.einsum("mn,mvnc->nc", per_image, p[:, idx]).argmax(1)
                                           == labels[name])) for name, p in set_probs.items()}
                shifted = [a for name, a in acc.items() if name != "clean"]
                row = {"name": set_name, "views": len(views), "weighting": weight_name, "adapt_bn": adapt,
                       "repair": repair, "zoom": zoomed, "clean": acc.get("clean", float("nan")),
                       "shifted": float(np.mean(shifted)) if shifted else float("nan")}
                row["score"] = float(np.nanmean([row["clean"], row["shifted"]]))
                row["weights"] = [float(x) for x in w]
                rows.append(row)
        return rows

    rows = score(plain, None, False)
    repair = ImageRepair.from_images(eval_sets["clean"][0]) if "clean" in eval_sets else None
    sets, probs = eval_sets, plain  # as the best candidate so far sees them
    if repair is not None:
        repaired_sets, repaired, changed = _prepared(models, all_views, batch_size, plain, eval_sets, repair)
        if changed:
            rows += score(repaired, None, True)
            _mark_repair_eligibility(rows)
    repair_on = bool(pick_best(rows).get("repair"))
    if repair_on:
        sets, probs = repaired_sets, repaired
    zoom = fit_zoom(repair if repair_on else None) if fit_zoom else None
    if zoom is not None:
        zoom_sets, zoom_probs, _ = _prepared(models, all_views, batch_size, probs, sets, zoom)
        rows += score(zoom_probs, None, repair_on, zoomed=True)
        _mark_eligibility(rows, "zoom", lambda r: bool(r.get("zoom")) and not r["adapt_bn"], zoom_max_clean_cost)
        if pick_best(rows).get("zoom"):
            sets = zoom_sets
    if any(BatchNormAdaptation(m, ADAPT_PRIOR).layers for m in models):
        best = pick_best(rows)
        rows += score(_view_probabilities(models, all_views, batch_size, ADAPT_PRIOR, sets), ADAPT_PRIOR,
                      bool(best.get("repair")), bool(best.get("zoom")))
        _mark_adaptation_eligibility(rows)
    return TTAChoice.from_row(pick_best(rows), rows, repair, zoom)


# The share of the validation images the image repair changes, summed over the evaluation sets (clean, hidden@1..3):
# measured on pbc96_val, 0 + 0.44 + 0.67 + 0.92 (the erased-box fill finds the cutouts of 60% of hidden@2's images).
REPAIRED_SETS = 2.03
# The same for the zoom undo (the images it rescales, at its threshold 0.2): measured on pbc96_val with the CPU preset's
# pair, 0.01 + 0.13 + 0.32 + 0.32 (bench/results/zoom_undo_val.json).
ZOOMED_SETS = 0.78


def selection_passes(eval_sets: int = 1 + len(EVAL_SHIFTS), adapts: bool = True,
                     repaired_sets: float = REPAIRED_SETS, zoomed_sets: float = ZOOMED_SETS) -> float:
    """Passes over the validation images each network makes in ``choose_tta`` (an image seen in k views
    counts k times): every candidate view of every evaluation set, again for the images the image repair
    changes (``repaired_sets`` sets' worth) and for those the zoom undo rescales (``zoomed_sets``), and again
    adapted (BatchNorm networks), where each set's statistics are measured once more. The zoom estimate's
    own passes (one network, one view) and its fit are ``ZOOM_FIT_PASSES`` in ``train/planner.py``. The time
    planner keeps room for them."""
    views = len(CANDIDATE_VIEW_SETS["dihedral8+photo"])
    return (eval_sets * views * (2 if adapts else 1) + (eval_sets if adapts else 0)
            + views * (repaired_sets + zoomed_sets))


def _prepared(models: list, views: tuple[str, ...], batch_size: int, probs: dict[str, np.ndarray],
              sets: dict[str, tuple[np.ndarray, np.ndarray]], step) -> tuple[dict, dict[str, np.ndarray], bool]:
    """``sets`` passed through ``step`` (a test-time preparation: float32 chunk -> chunk), the view probabilities
    ``probs`` with those of the images it changed computed again, and whether it changed any."""
    prepared, out, changed_any = {}, {name: p.copy() for name, p in probs.items()}, False
    for name, (x, y) in sets.items():
        pixels = x.astype(np.float32)
        after = np.concatenate([step(pixels[i:i + 256]) for i in range(0, len(x), 256)]) if len(x) else pixels
        prepared[name] = (after, y)
        changed = (after != pixels).reshape(len(x), -1).any(axis=1)
        if changed.any():
            changed_any = True
            out[name][:, :, changed] = _view_probabilities(models, views, batch_size, None,
                                                           {name: (after[changed], None)})[name]
    return prepared, out, changed_any


def _view_probabilities(models: list, views: tuple[str, ...], batch_size: int, adapt_bn: float | None,
                        eval_sets: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, np.ndarray]:
    ensemble = TTAEnsemble(models, views=views, batch_size=batch_size, adapt_bn=adapt_bn)
    return {name: ensemble.view_probabilities(x) for name, (x, _) in eval_sets.items()}


def _mark_repair_eligibility(rows: list[dict]) -> None:
    """An unadapted row with image repair is eligible when it beats its twin without repair on shifted data
    at little clean cost."""
    _mark_eligibility(rows, "repair", lambda r: bool(r.get("repair")) and not r["adapt_bn"])


def _mark_adaptation_eligibility(rows: list[dict]) -> None:
    """An adapted row is eligible when it beats its unadapted twin (same views, weighting and image repair)
    on shifted data at little clean cost, and that twin is eligible."""
    _mark_eligibility(rows, "adapt_bn", lambda r: bool(r["adapt_bn"]))


def _mark_eligibility(rows: list[dict], option: str, has_it, max_clean_cost: float = ADAPT_MAX_CLEAN_COST) -> None:
    """A row with a test-time ``option`` (``has_it(row)``) is eligible when it beats its twin without the
    option on shifted data at a clean cost of at most ``max_clean_cost`` (and its twin is eligible)."""
    def key(row: dict, drop: bool = False) -> tuple:
        options = {"adapt_bn": row["adapt_bn"] or None, "repair": bool(row.get("repair")),
                   "zoom": bool(row.get("zoom"))}
        if drop:
            options[option] = None if option == "adapt_bn" else False
        return row["name"], row["weighting"], options["adapt_bn"], options["repair"], options["zoom"]

    twins = {key(r): r for r in rows if not has_it(r)}
    for row in filter(has_it, rows):
        twin = twins[key(row, drop=True)]
        row["eligible"] = bool(twin.get("eligible", True) and row["shifted"] > twin["shifted"]
                               and row["clean"] >= twin["clean"] - max_clean_cost)


def shifted_eval_sets(data: Dataset, seed: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Clean validation data plus a few shifted copies from the local-score suite."""
    sets = {"clean": (data.images, data.labels)}
    for suite, kind, severity in EVAL_SHIFTS:
        variant = make_variant(suite, kind, severity)
        sets[variant.name] = (apply_variant(data.images, variant, seed), data.labels)
    return sets
