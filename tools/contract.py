"""The output contract of ``Model.predict``: what CodaBench scores, what it tolerates, what it cannot score.

One function decides it for the ingestion replica, ``check`` and ``package``. The contract is (n,)
integer labels 0..7. A (n,1) column and whole-number float labels are advisory: a scorer that flattens
and casts (as CodaBench's evidently does) still reads them. One-hot or probability rows, a wrong length,
labels outside 0..7 and non-whole floats are blocking: no scorer can read them as labels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from submission.model import NUM_CLASSES


@dataclass(frozen=True)
class Verdict:
    """``labels``: the answer as the scorer reads it ((n,) int64), None when ``problem`` blocks it;
    ``warnings``: advisory departures from the contract, each with its fix."""

    labels: np.ndarray | None
    problem: str | None = None
    warnings: tuple[str, ...] = ()


def judge_output(pred, n: int) -> Verdict:
    """Judge what ``predict`` returned for ``n`` images against the output contract."""
    pred = np.asarray(pred)
    if pred.dtype.kind not in "biuf":
        return Verdict(None, f"predict returned dtype {pred.dtype}, expected integer labels 0..{NUM_CLASSES - 1}")
    warnings = []
    if pred.ndim == 2 and pred.shape[1] == 1:
        warnings.append(f"predict returned shape {pred.shape}, a column; return shape ({n},) (np.ravel)")
        pred = pred[:, 0]
    if pred.ndim == 2 and pred.shape[0] == n:
        return Verdict(None, f"predict returned shape {pred.shape}: {pred.shape[1]} scores per image (one-hot or "
                             "probabilities), expected labels; return np.argmax(scores, axis=1)")
    if pred.shape != (n,):
        return Verdict(None, f"predict returned shape {pred.shape} for {n} images, expected ({n},)")
    if pred.dtype.kind in "bf":
        if not np.all(np.isfinite(pred)) or not np.array_equal(pred, np.round(pred)):
            return Verdict(None, f"predict returned non-whole {pred.dtype} values (scores, not labels); "
                                 f"return integer labels 0..{NUM_CLASSES - 1}")
        warnings.append(f"predict returned {pred.dtype} labels; return integers (.astype(int))")
    if n and (pred.min() < 0 or pred.max() >= NUM_CLASSES):
        return Verdict(None, f"predict returned labels outside 0..{NUM_CLASSES - 1} "
                             f"(min {pred.min()}, max {pred.max()})")
    return Verdict(pred.astype(np.int64), None, tuple(warnings))
