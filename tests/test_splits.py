"""Every run records its split (split.json: indices + a content hash of the data) in the run dir and in each
member; `bcsub package` chooses TTA on exactly those images, on every run layout, and refuses changed data."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import ROOT, SAMPLE_TRAIN, run_cli
from tools.eval_data import recorded_validation
from train.errors import BcsubError
from train.runs import find_members
from train.splits import SPLIT_FILE, read_split

RECORDED = "the recorded validation split"


def _train(out: Path, *options: str, data: Path | str = SAMPLE_TRAIN) -> Path:
    proc = run_cli("train", "--data", str(data), "--backbone", "tinycnn", "--weights", "none", "--epochs", "1",
                   "--limit", "48", "--batch-size", "16", "--augment", "none", *options, "--out", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out


def _package_auto(run: Path, zip_path: Path) -> dict:
    """`bcsub package RUN` as the README writes it (no --val, --tta auto): the TTA table, from the split."""
    proc = run_cli("package", str(run), "--out", str(zip_path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    text = " ".join(proc.stdout.split())  # rich wraps lines
    assert "TTA choice" in text and RECORDED in text and "no validation" not in text
    with zipfile.ZipFile(zip_path) as archive:
        manifest = json.loads(archive.read("bcsub_submission.json"))
    assert manifest["tta"]["selection"]
    return manifest


@pytest.mark.slow
def test_snapshot_run_packages_with_tta_chosen_on_its_split(tmp_path):
    """A --polish-epochs run (unpolished/ and polished/, no config.json in them, like --preset cpu)."""
    out = _train(tmp_path / "snap", "--polish-epochs", "1")
    recorded = read_split(out)
    for member in ("unpolished", "polished"):
        assert read_split(out / member).same_as(recorded)
        assert (out / member / "equivalence.npz").is_file()
    assert len(recorded.val) and not set(recorded.val) & set(recorded.train)
    manifest = _package_auto(out, tmp_path / "snap.zip")
    assert len(manifest["members"]) == 2


def test_members_run_uses_its_split_and_refuses_changed_data(tmp_path):
    data = tmp_path / "train.npz"
    shutil.copyfile(SAMPLE_TRAIN, data)
    out = _train(tmp_path / "members", "--members", "2", data=data)
    assert json.loads((out / "config.json").read_text())["data"] == str(data.resolve())
    recorded = read_split(out)
    assert recorded.data.path == str(data.resolve()) and recorded.data.n == 320 and recorded.val_data is None
    assert all(read_split(out / f"member_{k}").same_as(recorded) for k in range(2))
    _package_auto(out, tmp_path / "members.zip")
    with np.load(data) as saved:
        images, labels = saved["images"].copy(), saved["labels"]
    images[int(recorded.val[0]), 0, 0, 0] ^= 1  # one pixel of one validation image
    np.savez(data, images=images, labels=labels)
    with pytest.raises(BcsubError, match="changed since the run was trained"):  # what `package` runs first
        recorded_validation(find_members(out))


def test_kfold_run_packages_as_one_zip_with_tta_chosen_out_of_fold(tmp_path):
    """Each fold member is scored only on its own fold (it trained on the others); paths are stored resolved."""
    out = tmp_path / "folds"
    proc = run_cli("train", "--data", "data/sample/train.npz", "--backbone", "tinycnn", "--weights", "none",
                   "--epochs", "1", "--limit", "48", "--batch-size", "16", "--folds", "2", "--augment", "none",
                   "--out", str(out), cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((out / "config.json").read_text())["data"] == str(SAMPLE_TRAIN)
    ensemble = json.loads((out / "ensemble.json").read_text())
    assert ensemble["members"] == ["fold_0", "fold_1"] and "oof_metrics" in ensemble
    with np.load(out / "oof_predictions.npz") as oof:
        assert oof["probs"].shape == (48, 8) and np.allclose(oof["probs"].sum(axis=1), 1, atol=1e-4)
    folds = [read_split(out / f"fold_{k}") for k in range(2)]
    assert not set(folds[0].val) & set(folds[1].val) and set(folds[0].val) == set(folds[1].train)
    assert len(json.loads((out / SPLIT_FILE).read_text())["folds"]) == 2
    manifest = _package_auto(out, tmp_path / "ens.zip")
    assert len(manifest["members"]) == 2
    assert {row["weighting"] for row in manifest["tta"]["selection"]} == {"uniform", "accuracy"}


def test_a_run_trained_before_splits_were_recorded_still_packages(trained_run, tmp_path):
    """No split.json and no equivalence.npz: dihedral TTA with a note, the equivalence row a warning."""
    old = tmp_path / "old"
    shutil.copytree(trained_run, old)
    (old / SPLIT_FILE).unlink()
    (old / "equivalence.npz").unlink()
    proc = run_cli("package", str(old), "--out", str(tmp_path / "old.zip"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    text = " ".join(proc.stdout.split())
    assert "recorded no validation split" in text and "8 dihedral" in text
    assert "warn" in proc.stdout and "retrain to check" in text
