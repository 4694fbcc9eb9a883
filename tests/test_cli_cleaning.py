"""`bcsub inspect`, `bcsub clean` and `bcsub train --clean` on an AN2DL-like set (real CLI)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.conftest import SAMPLE_TRAIN, run_cli
from train.data import load_dataset
from train.synthetic import make_an2dl_like


@pytest.fixture(scope="module")
def an2dl_like(tmp_path_factory):
    sample = load_dataset(SAMPLE_TRAIN)
    images, labels, truth = make_an2dl_like(sample.images, sample.labels, copies=(48, 12), seed=3)
    path = tmp_path_factory.mktemp("an2dl") / "training_set.npz"
    np.savez(path, images=images, labels=labels)
    assert labels.shape == (len(images), 1)
    return path, truth, len(images)


def test_inspect_writes_report_and_pictures(an2dl_like, tmp_path):
    path, truth, n = an2dl_like
    proc = run_cli("inspect", str(path), "--out", str(tmp_path / "rep"))
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "rep" / "report.json").read_text())
    flagged = {o["index"] for o in report["outliers"]} if isinstance(report["outliers"], list) else set()
    assert set(truth["outlier_indices"]) <= flagged
    assert list((tmp_path / "rep").glob("*.png"))
    assert "outliers:" in proc.stdout


def test_clean_dry_run_then_clean(an2dl_like, tmp_path):
    path, truth, n = an2dl_like
    out = tmp_path / "clean.npz"
    dry = run_cli("clean", str(path), "--out", str(out), "--dry-run")
    assert dry.returncode == 0 and "dry run" in dry.stdout and not out.exists()
    proc = run_cli("clean", str(path), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    cleaned = load_dataset(out)
    manifest = json.loads(out.with_suffix(".removed.json").read_text())
    removed = {item["index"] for item in manifest["removed"]}
    assert set(truth["outlier_indices"]) <= removed and set(truth["duplicate_copy_indices"]) <= removed
    genuine_removed = set(truth["genuine_indices"]) & removed
    assert len(genuine_removed) <= 0.01 * len(truth["genuine_indices"])
    assert len(cleaned) == n - len(removed)


def test_train_clean_records_what_it_removed(an2dl_like, tmp_path):
    path, truth, _ = an2dl_like
    out = tmp_path / "run"
    proc = run_cli("train", "--data", str(path), "--clean", "--backbone", "tinycnn", "--weights", "none",
                   "--epochs", "1", "--limit", "64", "--batch-size", "16", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    record = json.loads((out / "cleaning.json").read_text())
    assert {item["index"] for item in record["removed"]} >= set(truth["outlier_indices"])
