"""Scoring: sklearn-exact metrics and the expected-hidden-score estimate with its bootstrap interval."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import accuracy_score, f1_score

from tools.local_score import expected_hidden_score
from tools.shift.suite import plan_variants
from train.metrics import score


def test_score_matches_sklearn():
    rng = np.random.default_rng(0)
    y_true = rng.integers(0, 8, 500)
    y_pred = np.where(rng.random(500) < 0.7, y_true, rng.integers(0, 8, 500))
    result = score(y_true, y_pred)
    assert result["accuracy"] == accuracy_score(y_true, y_pred)
    assert np.isclose(result["macro_f1"], f1_score(y_true, y_pred, average="macro"))
    assert np.allclose([r["f1"] for r in result["per_class"]], f1_score(y_true, y_pred, average=None))
    assert np.array(result["confusion"]).sum() == 500 and np.trace(result["confusion"]) == (y_true == y_pred).sum()


def test_known_prediction():
    result = score(np.array([0, 1, 2, 3]), np.array([0, 1, 2, 2]))
    assert result["accuracy"] == 0.75
    assert result["per_class"][3]["recall"] == 0.0 and result["per_class"][2]["precision"] == 0.5


def _correct(rate: float, n: int, rng) -> np.ndarray:
    return rng.random(n) < rate


def test_expected_hidden_score_mixes_the_two_halves():
    variants = plan_variants(("clean", "corruptions", "an2dl"), (1, 3, 5))
    rng = np.random.default_rng(1)
    n = 4000
    correct = {v.name: _correct({"clean": 0.98, "corruptions": 0.8, "an2dl": 0.6}[v.suite], n, rng)
               for v in variants}
    result = expected_hidden_score(correct, variants, seed=0)
    an2dl = np.mean([correct[v.name].mean() for v in variants if v.suite == "an2dl"])
    corruptions = np.mean([correct[v.name].mean() for v in variants if v.suite == "corruptions"])
    assert np.isclose(result["expected_hidden_accuracy"], (an2dl + corruptions) / 2)
    low, high = result["ci95"]
    assert low < result["expected_hidden_accuracy"] < high and high - low < 0.03
    assert result["based_on"] == ["an2dl", "corruptions"]


def test_expected_hidden_score_falls_back_to_clean_and_widens_with_fewer_images():
    variants = plan_variants(("clean",), (3,))
    rng = np.random.default_rng(2)
    wide = expected_hidden_score({"clean": _correct(0.9, 100, rng)}, variants, seed=0)
    narrow = expected_hidden_score({"clean": _correct(0.9, 10000, rng)}, variants, seed=0)
    assert wide["based_on"] == ["clean"]
    assert (wide["ci95"][1] - wide["ci95"][0]) > 3 * (narrow["ci95"][1] - narrow["ci95"][0])


ONE_SLOW_CALL = """
import os, time, numpy as np
class Model:
    def __init__(self):
        self.calls = 0
    def predict(self, X):
        self.calls += 1
        if self.calls == 2 and not os.path.exists("slept"):  # relative: the working directory is this folder
            open("slept", "w").close()
            time.sleep(60)
        return np.zeros(len(X), dtype=np.int64)
"""


def test_a_variant_that_times_out_costs_only_its_own_score(tmp_path):
    from tests.conftest import SAMPLE_TEST
    from tools.local_score import ScoreOptions, local_score, to_json
    from tools.template_zip import zip_submission

    zip_path = zip_submission(tmp_path / "slow.zip", ONE_SLOW_CALL, [])
    options = ScoreOptions([str(zip_path)], str(SAMPLE_TEST), ("clean", "corruptions"), (1,), time_limit=3, limit=24)
    data, (result,) = local_score(options)
    names = [v.name for v in result.variants]
    assert result.summary["variants_failed"] == {names[1]: "timeout"} and result.run.children == 2
    assert set(result.scores) == set(names) - {names[1]} and result.summary["expected_hidden_accuracy"] is not None
    assert result.summary["projected_seconds_10000_images"] is not None and result.summary["time_limit_seconds"] == 3
    variants = to_json(data, [result])["submissions"][0]["variants"]
    assert variants[names[1]]["status"] == "timeout" and "less" in variants[names[1]]["error"]
    assert variants[names[0]]["status"] == "ok" and variants[names[0]]["accuracy"] is not None


def test_expected_hidden_score_is_the_calibrated_variant_and_never_a_silent_stand_in():
    import numpy as np

    from tools.local_score import CALIBRATED_VARIANT, expected_hidden_score
    from tools.shift.suite import plan_variants

    variants = plan_variants(("clean", "hidden", "an2dl"), (3,))
    correct = {v.name: np.ones(50, bool) for v in variants}
    correct[CALIBRATED_VARIANT] = np.arange(50) < 20
    result = expected_hidden_score(correct, variants, seed=0)
    assert result["expected_hidden_accuracy"] == 0.4 and result["calibrated"]
    assert result["ci95"][0] < 0.4 < result["ci95"][1]
    del correct[CALIBRATED_VARIANT]  # hidden@2 failed: no number rather than the uncalibrated stand-in
    assert expected_hidden_score(correct, variants, seed=0)["expected_hidden_accuracy"] is None
    uncalibrated = expected_hidden_score({"clean": np.ones(5, bool)}, plan_variants(("clean",)), seed=0)
    assert uncalibrated["calibrated"] is False and uncalibrated["expected_hidden_accuracy"] == 1.0


def test_a_zip_of_the_folder_fails_every_variant_and_says_how_to_zip_it(tmp_path):
    """CodaBench imports model.py from the zip root; a zip of the folder fails there with "No module named
    'model'". local-score fails the same way and adds the fix."""
    import zipfile

    from tests.conftest import SAMPLE_TEST
    from tools.display import run_failures
    from tools.local_score import ScoreOptions, local_score

    zip_path = tmp_path / "folder.zip"
    with zipfile.ZipFile(zip_path, "w") as archive:
        archive.writestr("my_submission/model.py", "class Model:\n    def predict(self, X):\n        return X\n")
    _, (result,) = local_score(ScoreOptions([str(zip_path)], str(SAMPLE_TEST), ("clean",), (1,), limit=8))
    assert result.summary["variants_failed"] == {"clean": "import_error"} and not result.scores
    lines = run_failures(result)
    assert "No module named 'model'" in lines[0]
    assert lines[1] == ("fix: model.py is in a folder (my_submission/model.py), where `from model import Model` "
                        "cannot find it; zip the files, not their folder")
