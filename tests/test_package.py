"""Packaging pieces: TTA choice, view resolution, import checks, layout checks."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest

from submission import model as runtime
from tests.conftest import SAMPLE_TRAIN
from tools.package import resolve_views
from tools.tta_select import choose_tta
from tools.validate import ValidationReport, check_layout, imported_modules, layout_verdict
from train.errors import BcsubError


def test_resolve_views():
    assert resolve_views("auto") is None
    assert resolve_views("8") == runtime.DIHEDRAL_VIEWS
    assert resolve_views("flips2") == ("identity", "flip_lr")
    assert resolve_views("identity, blur") == ("identity", "blur")
    with pytest.raises(BcsubError, match="--tta 9"):
        resolve_views("9")
    with pytest.raises(BcsubError, match="unknown TTA views"):
        resolve_views("identity,spin")


def test_choose_tta_scores_candidates_and_limits_views():
    models = [runtime.build_network({"backbone": "tinycnn"}) for _ in range(2)]
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (16, 96, 96, 3), dtype=np.uint8)
    y = rng.integers(0, 8, 16)
    choice = choose_tta(models, {"clean": (x, y), "blur@3": (x[:, ::-1], y)})
    assert sum(bool(row.get("chosen")) for row in choice.table) == 1
    assert {row["weighting"] for row in choice.table} == {"uniform", "accuracy"}
    assert np.isclose(sum(choice.member_weights), 1.0) and len(choice.member_weights) == 2
    small = choice.limited_to(2)
    assert len(small.views) <= 2 and sum(bool(row.get("chosen")) for row in small.table) == 1


def test_pick_best_prefers_more_views_within_the_noise():
    from tools.tta_select import TOLERANCE, pick_best

    rows = [{"name": "none", "views": 1, "score": 0.970}, {"name": "rot4", "views": 4, "score": 0.975},
            {"name": "dihedral8", "views": 8, "score": 0.975 - TOLERANCE / 2},
            {"name": "dihedral8+photo", "views": 13, "score": 0.975 - 2 * TOLERANCE}]
    assert pick_best(rows)["name"] == "dihedral8"  # within the tolerance of the best: more views
    assert pick_best(rows, max_views=4)["name"] == "rot4"
    assert pick_best(rows, max_views=1)["name"] == "none"
    assert [r["name"] for r in rows if r.get("chosen")] == ["none"]  # one mark, moved by each call


def test_imported_modules():
    source = "import os, numpy as np\nfrom tensorflow import keras\nfrom . import x\nimport train.data\n"
    assert imported_modules(source) == {"os", "numpy", "tensorflow", "train"}


def test_packages_the_zip_holds_are_its_own_imports(tmp_path):
    """A team's helper package named like bcsub's (tools/) is fine when the zip ships it: the ingestion puts
    the zip root on sys.path. Without the folder, the import is bcsub's own: blocking."""
    from tools.validate import check_imports

    (tmp_path / "model.py").write_text("from tools.helpers import prepare\nimport mylib\nimport numpy\n")
    report = ValidationReport()
    assert not check_imports(tmp_path, report)
    assert "['tools']" in report.failures()[0].detail and "mylib" in report.warnings()[0].detail
    for package in ("tools", "mylib"):
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
    report = ValidationReport()
    assert check_imports(tmp_path, report) and not report.warnings()


@pytest.mark.parametrize("names, fix", [
    (["submission/model.py", "submission/weights.keras"], "zip the files, not their folder"),
    (["Model.py", "weights.keras"], "rename it model.py"),  # macOS forgives the case, CodaBench's Linux does not
    (["weights.keras", "__MACOSX/model.py"], "add the model.py"),
])
def test_a_zip_without_model_py_at_its_root_fails_layout_with_the_fix(tmp_path, names, fix):
    path = tmp_path / "bad.zip"
    with zipfile.ZipFile(path, "w") as archive:
        for name in names:
            archive.writestr(name, "x = 1\n")
    report = ValidationReport()
    assert not check_layout(path, report)
    assert [c.name for c in report.failures()] == ["layout"] and fix in report.failures()[0].detail


def test_sub_folders_and_macos_metadata_beside_a_root_model_py_pass_layout(tmp_path):
    """CodaBench unzips the whole archive (the 2023 template shipped a SavedModel folder beside model.py)."""
    path = tmp_path / "mac.zip"
    with zipfile.ZipFile(path, "w") as archive:
        for name in ("model.py", "SubmissionModel/saved_model.pb", "SubmissionModel/variables/v.index",
                     "__MACOSX/._model.py", ".DS_Store"):
            archive.writestr(name, "x = 1\n")
    report = ValidationReport()
    assert check_layout(path, report)
    detail = report.checks[0].detail
    assert "beside it SubmissionModel/" in detail and "macOS metadata" in detail and "__MACOSX" not in detail
    assert layout_verdict(["./model.py", "./weights.keras"]) == (True, "model.py at the zip root")


def test_run_dirs_from_before_standardization_keep_their_scaling(tmp_path):
    """A model.json written before the spec recorded its preprocessing is rebuilt as it was trained."""
    import json

    from train.runs import find_members

    for name, spec in {"old": {"backbone": "resnet-small", "image_size": 64},
                       "new": {"backbone": "resnet-small", "image_size": 64, "preprocessing": "standardize"},
                       "pretrained": {"backbone": "mobilenetv3small", "image_size": 96}}.items():
        run = tmp_path / name
        run.mkdir()
        (run / "model.json").write_text(json.dumps(spec))
        (run / "weights.npz").write_bytes(b"")
        (run / "metrics.json").write_text('{"accuracy": 0.5}')
    assert find_members(tmp_path / "old")[0].spec["preprocessing"] == "unit"
    assert find_members(tmp_path / "new")[0].spec["preprocessing"] == "standardize"
    assert "preprocessing" not in find_members(tmp_path / "pretrained")[0].spec


def test_choose_tta_scores_each_image_on_the_members_that_did_not_train_on_it():
    """A --folds ensemble: image i counts only the member whose fold it is; the score equals that of
    the out-of-fold predictions, whatever the other members say."""
    models = [runtime.build_network({"backbone": "tinycnn"}) for _ in range(2)]
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (12, 96, 96, 3), dtype=np.uint8)
    y = rng.integers(0, 8, 12)
    usable = np.zeros((2, 12), bool)
    usable[0, :6] = usable[1, 6:] = True
    choice = choose_tta(models, {"clean": (x, y)}, usable=usable)
    oof_labels = [runtime.TTAEnsemble([m], views=1).predict(part) for m, part in zip(models, (x[:6], x[6:]))]
    oof = np.mean(np.concatenate(oof_labels) == y)
    row = next(r for r in choice.table if r["name"] == "none" and r["weighting"] == "uniform")
    assert row["clean"] == pytest.approx(oof)
    assert np.isclose(sum(choice.member_weights), 1.0)


def test_a_time_plan_share_chooses_tta_on_fewer_validation_images(tmp_path):
    """`bcsub package` chooses the TTA on the share of the validation images that the run's time plan left
    time for (plan.json; the smallest over the runs), stratified, never fewer than MIN_EVAL_IMAGES."""
    from tools.eval_data import MIN_EVAL_IMAGES, planned_selection_share, validation_data

    run = tmp_path / "run"
    run.mkdir()
    (run / "plan.json").write_text(json.dumps({"tta_selection_share": 0.4}))
    (tmp_path / "other").mkdir()
    assert planned_selection_share([str(run)]) == 0.4
    assert planned_selection_share([str(tmp_path / "other")]) == 1.0  # no plan: every image
    full, _ = validation_data([], str(SAMPLE_TRAIN), seed=0)
    part, _ = validation_data([], str(SAMPLE_TRAIN), seed=0, share=0.4)
    assert len(full.data) == 320 and len(part.data) == MIN_EVAL_IMAGES  # 0.4 x 320 = 128, below the floor
    assert set(np.unique(part.data.labels)) == set(np.unique(full.data.labels))
    with pytest.raises(BcsubError, match="--tta-share 1.5"):
        from tools.package import PackageOptions, selection_share

        selection_share(PackageOptions([str(run)], "x.zip", tta_share=1.5))
