"""Inputs CodaBench could send to ``predict`` besides a clean uint8 batch, one table row each: predict
must return labels for them (blocking), the labels of the clean input each stands for (a warning
otherwise); only a wrong image size may raise."""

from __future__ import annotations

import contextlib
import io
import traceback
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from tools.contract import judge_output
from tools.validate import ValidationReport

EDGE_IMAGES = 8
AGREEMENT = 0.875  # labels that must agree with the clean input's (7 of 8: 0..1 floats round differently)


@dataclass(frozen=True)
class EdgeCase:
    """``make`` turns a few uint8 probe images into the input; ``clean`` gives the input it stands for
    (None: predict must raise instead)."""

    make: Callable[[np.ndarray], object]
    clean: Callable[[np.ndarray], np.ndarray] | None


def _nan_inf(x: np.ndarray) -> np.ndarray:
    y = x.astype(np.float32)
    y[:, :8, :8, 0], y[:, -8:, -8:, 1], y[:, :8, -8:, 2] = np.nan, np.inf, -np.inf
    return y


def _nan_inf_as_zero(x: np.ndarray) -> np.ndarray:
    return np.nan_to_num(_nan_inf(x), nan=0.0, posinf=0.0, neginf=0.0)


def _out_of_range(x: np.ndarray) -> np.ndarray:
    y = x.astype(np.float32)
    y[:, :16] -= 300.0
    y[:, -16:] += 300.0
    return y


# Every edge case the validation table shows; adding one is one line here.
EDGE_CASES: dict[str, EdgeCase] = {
    "NaN and inf pixels": EdgeCase(_nan_inf, _nan_inf_as_zero),
    "pixels outside 0..255": EdgeCase(_out_of_range, lambda x: np.clip(_out_of_range(x), 0, 255)),
    "floats in 0..1": EdgeCase(lambda x: x.astype(np.float32) / 255.0, lambda x: x),
    "one (96, 96, 3) image": EdgeCase(lambda x: x[0], lambda x: x[:1]),
    "a list of images": EdgeCase(lambda x: list(x), lambda x: x),
    "wrong image size": EdgeCase(lambda x: x[:, :64, :64], None),
}


def check_edge_cases(model, probe: np.ndarray, report: ValidationReport) -> None:
    """Run every ``EDGE_CASES`` input through ``model.predict`` (a loaded submission) and add one row each:
    blocking for the inputs predict must answer, advisory for the wrong size it should refuse; an answer
    that differs from the clean input's adds an advisory row."""
    x = probe[:EDGE_IMAGES]
    for name, case in EDGE_CASES.items():
        stderr = io.StringIO()
        try:
            with contextlib.redirect_stderr(stderr):
                labels = np.asarray(model.predict(case.make(x)))
        except Exception as err:  # noqa: BLE001 - the submission's error is the result
            last = traceback.format_exception_only(type(err), err)[-1].strip()
            if case.clean is None:
                report.add(f"predict: {name}", True, f"refused with {last}", advisory=True)
            else:
                report.add(f"predict: {name}", False, f"predict raised {last}; it must return labels")
            continue
        if case.clean is None:
            report.add(f"predict: {name}", False, f"returned labels {labels.shape} instead of refusing", advisory=True)
            continue
        expected = np.asarray(model.predict(case.clean(x)))
        verdict = judge_output(labels, len(expected))
        if verdict.problem:
            report.add(f"predict: {name}", False, verdict.problem)
            continue
        agree = float(np.mean(verdict.labels == expected)) if len(expected) else 1.0
        note = "; notes it on stderr" if stderr.getvalue().strip() else ""
        report.add(f"predict: {name}", True, f"labels; {agree:.0%} as for the clean input{note}")
        if agree < AGREEMENT:
            report.add(f"predict: {name}, as clean", False, f"only {agree:.0%} of the labels are those of the clean "
                       "input it stands for", advisory=True)
