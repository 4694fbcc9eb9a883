"""The output contract: (n,) int labels 0..7; a column or whole floats are advisory; the rest blocks."""

from __future__ import annotations

import numpy as np
import pytest

from tools.contract import judge_output


def test_int_labels_pass_clean():
    verdict = judge_output(np.array([0, 7, 3], np.uint8), 3)
    assert verdict.problem is None and not verdict.warnings
    assert verdict.labels.dtype == np.int64 and verdict.labels.tolist() == [0, 7, 3]


@pytest.mark.parametrize(("pred", "warned"), [
    (np.array([[1], [2]]), ["column"]),
    (np.array([1.0, 2.0], np.float32), ["float32"]),
    (np.array([[1.0], [2.0]]), ["column", "float64"]),
    (np.zeros((0,), np.float32), ["float32"]),
])
def test_column_and_whole_floats_are_advisory(pred, warned):
    verdict = judge_output(pred, len(pred))
    assert verdict.problem is None and verdict.labels.shape == (len(pred),) and verdict.labels.dtype == np.int64
    assert len(verdict.warnings) == len(warned) and all(w in " ".join(verdict.warnings) for w in warned)


@pytest.mark.parametrize(("pred", "n", "said"), [
    (np.eye(8)[[0, 3]], 2, "argmax"),  # one-hot
    (np.full((2, 8), 0.125), 2, "argmax"),  # probabilities
    (np.zeros((0, 8)), 0, "argmax"),
    (np.array([0, 1, 2]), 2, "for 2 images"),
    (np.array([0, 8]), 2, "outside 0..7"),
    (np.array([-1, 0]), 2, "outside 0..7"),
    (np.array([0.5, 1.0]), 2, "non-whole"),
    (np.array([np.nan, 1.0]), 2, "non-whole"),
    (np.array(["a", "b"]), 2, "dtype"),
    (np.array(3), 1, "shape ()"),
])
def test_what_no_scorer_can_read_is_blocking(pred, n, said):
    verdict = judge_output(pred, n)
    assert verdict.labels is None and said in verdict.problem
