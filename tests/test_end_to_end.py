"""train -> package -> local-score through the real CLI, on the embedded sample."""

from __future__ import annotations

import ast
import json
import zipfile

import numpy as np

from tests.conftest import SAMPLE_TEST, run_cli
from tools.harness import run_zip
from train.splits import read_split


def test_train_writes_a_complete_run(trained_run):
    for name in ("config.json", "model.json", "weights.npz", "history.csv", "metrics.json", "confusion.png",
                 "curves.png"):
        assert (trained_run / name).is_file(), name
    metrics = json.loads((trained_run / "metrics.json").read_text())
    assert 0.0 <= metrics["accuracy"] <= 1.0 and len(metrics["per_class"]) == 8
    config = json.loads((trained_run / "config.json").read_text())
    assert config["backbone"] == "tinycnn" and config["weights"] == "none" and config["limit"] == 64
    assert len((trained_run / "history.csv").read_text().strip().splitlines()) == 2  # header + 1 epoch
    spec = json.loads((trained_run / "model.json").read_text())  # balanced batches: prior correction
    assert spec["preprocessing"] == "standardize" and len(spec["logit_offsets"]) == 8


def test_zip_is_flat_and_self_contained(packaged_zip):
    zip_path, proc = packaged_zip
    with zipfile.ZipFile(zip_path) as archive:
        names = archive.namelist()
        source = archive.read("model.py").decode()
        manifest = json.loads(archive.read("bcsub_submission.json"))
    assert "model.py" in names and all("/" not in n for n in names)
    imported = {n.names[0].name.split(".")[0] for n in ast.walk(ast.parse(source)) if isinstance(n, ast.Import)}
    imported |= {n.module.split(".")[0] for n in ast.walk(ast.parse(source))
                 if isinstance(n, ast.ImportFrom) and n.module}
    assert not imported & {"train", "tools", "submission", "bcsub"}
    assert imported <= {"__future__", "json", "os", "sys", "numpy", "tensorflow", "keras"}
    assert manifest["members"][0]["weights"] in names
    assert len(manifest["members"][0]["spec"]["logit_offsets"]) == 8  # the zip rebuilds the same network
    assert manifest["tta"]["selection"], "tta auto must record the candidates it scored"
    assert "s per 1,000 images" in proc.stdout and "MB" in proc.stdout
    from tools.edge_cases import EDGE_CASES

    table = " ".join(proc.stdout.split())
    assert "same network as trained" in table  # the detail is checked in tests/test_equivalence.py
    assert table.count("predict:") == len(EDGE_CASES)  # every edge case of predict is a row of the table
    assert "FAIL" not in proc.stdout


def test_zip_runs_like_codabench(packaged_zip, sample_test):
    images, _ = sample_test
    result = run_zip(packaged_zip[0], {"all": images, "one": images[:1], "float": images[:5].astype(np.float64)})
    assert result.ok, result.error
    assert result.predictions["all"].shape == (len(images),)
    assert result.predictions["all"].min() >= 0 and result.predictions["all"].max() <= 7


def test_local_score_cli(packaged_zip, trained_run, tmp_path):
    """The sample's test images, plus 5 images the zip trained on and the validation images it chose on: scored,
    and said to be seen (the record `package` wrote, ``tools/seen.py``) in the JSON, the console and the report."""
    split = read_split(trained_run)
    data = split.data.load()
    pick = np.concatenate([split.train[:5], split.val])
    with np.load(SAMPLE_TEST, allow_pickle=False) as test:
        images, labels = np.concatenate([test["images"], data.images[pick]]), np.concatenate([test["labels"],
                                                                                              data.labels[pick]])
    np.savez(tmp_path / "mixed.npz", images=images, labels=labels)
    out_json = tmp_path / "score.json"
    proc = run_cli("local-score", str(packaged_zip[0]), "--data", str(tmp_path / "mixed.npz"), "--severities", "3",
                   "--suite", "clean,corruptions,an2dl", "--json", str(out_json), "--report", str(tmp_path / "rep"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "expected hidden score" in proc.stdout
    report = json.loads(out_json.read_text())
    summary = report["submissions"][0]["summary"]
    n = 80 + len(pick)
    assert report["n_images"] == n
    assert 0 <= summary["clean_accuracy"] <= 1 and summary["ci95"][0] <= summary["ci95"][1]
    assert summary["seen"] == {"images": n, "training": 5, "validation": len(split.val)}
    advisory = f"5 of {n} scored images are images this zip trained on (and {len(split.val)} more it was validated on)"
    assert any(w.startswith(advisory) for w in summary["warnings"])
    assert advisory in " ".join(proc.stdout.split()) and advisory in (tmp_path / "rep" / "index.html").read_text()
    variants = report["submissions"][0]["variants"]
    assert "clean" in variants and "pixelate@3" in variants and any(k.startswith("an2dl@") for k in variants)
    assert (tmp_path / "rep" / "index.html").is_file()


def test_augment_preview_cli(tmp_path):
    proc = run_cli("augment-preview", "--data", str(SAMPLE_TEST), "--preset", "hybrid", "--out",
                   str(tmp_path / "grid.png"), "--n-images", "3")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "grid.png").stat().st_size > 10_000
