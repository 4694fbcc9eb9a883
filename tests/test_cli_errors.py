"""Bad input through the real CLI: exit code 2, one line naming the problem and the fix, nothing written."""

from __future__ import annotations

import json
import socket

import numpy as np
import pytest

from tests.conftest import SAMPLE_TEST, SAMPLE_TRAIN, run_cli


def _error_line(proc) -> str:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = [line for line in proc.stderr.strip().splitlines() if line.startswith("error:")]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    return lines[0]


def test_missing_data_file(tmp_path):
    line = _error_line(run_cli("train", "--data", str(tmp_path / "nope.npz"), "--weights", "none",
                               "--out", str(tmp_path / "run")))
    assert "no such file" in line
    assert not (tmp_path / "run").exists()  # nothing written before the inputs are checked


def test_wrong_shape_data(tmp_path):
    bad = tmp_path / "bad.npz"
    np.savez(bad, images=np.zeros((8, 32, 32, 3), np.uint8), labels=np.arange(8))
    line = _error_line(run_cli("train", "--data", str(bad), "--weights", "none", "--out", str(tmp_path / "r")))
    assert "(N, 96, 96, 3)" in line and not (tmp_path / "r").exists()


def test_unknown_backbone(tmp_path):
    line = _error_line(run_cli("train", "--data", str(SAMPLE_TRAIN), "--backbone", "vgg99",
                               "--out", str(tmp_path / "run")))
    assert "unknown backbone 'vgg99'" in line and "mobilenetv3small" in line
    assert not (tmp_path / "run").exists()


def _online() -> bool:
    try:
        socket.create_connection(("storage.googleapis.com", 443), timeout=3).close()
        return True
    except OSError:
        return False


@pytest.mark.skipif(_online(), reason="needs a machine without internet access")
def test_offline_imagenet_fails_fast_with_the_fix(tmp_path, monkeypatch):
    line = _error_line(run_cli("train", "--data", str(SAMPLE_TRAIN), "--backbone", "mobilenetv3small",
                               "--weights", "imagenet", "--epochs", "1", "--limit", "64", "--out",
                               str(tmp_path / "run"), ))
    assert "--weights none" in line and "~/.keras/models" in line
    assert not (tmp_path / "run" / "model.json").exists()


def test_weights_path_must_exist(tmp_path):
    line = _error_line(run_cli("train", "--data", str(SAMPLE_TRAIN), "--backbone", "mobilenetv3small",
                               "--weights", str(tmp_path / "w.h5"), "--out", str(tmp_path / "run")))
    assert "no such file" in line and "no-top" in line and not (tmp_path / "run").exists()


def test_clean_and_inspect_check_their_outputs_first(tmp_path):
    (tmp_path / "file").write_text("x")
    line = _error_line(run_cli("inspect", str(SAMPLE_TEST), "--out", str(tmp_path / "file")))
    assert "is a file" in line
    line = _error_line(run_cli("clean", str(SAMPLE_TEST), "--out", str(tmp_path / "clean.txt")))
    assert "must end in .npz" in line and not list(tmp_path.glob("clean*"))


def test_package_rejects_a_folder_that_is_not_a_run(tmp_path):
    line = _error_line(run_cli("package", str(tmp_path), "--out", str(tmp_path / "s.zip")))
    assert "not a bcsub run dir" in line
    assert not (tmp_path / "s.zip").exists()


def test_package_rejects_mismatched_member(tmp_path, trained_run):
    odd = tmp_path / "odd"
    odd.mkdir()
    for name in ("weights.npz", "metrics.json", "config.json"):
        (odd / name).write_bytes((trained_run / name).read_bytes())
    spec = json.loads((trained_run / "model.json").read_text())
    (odd / "model.json").write_text(json.dumps({**spec, "num_classes": 5}))
    line = _error_line(run_cli("package", str(trained_run), str(odd), "--out", str(tmp_path / "s.zip")))
    assert "predicts 5 classes" in line and not (tmp_path / "s.zip").exists()


def test_local_score_missing_zip(tmp_path):
    line = _error_line(run_cli("local-score", str(tmp_path / "none.zip"), "--data", str(SAMPLE_TEST)))
    assert "no such file" in line


def test_local_score_unknown_suite(tmp_path, packaged_zip):
    line = _error_line(run_cli("local-score", str(packaged_zip[0]), "--data", str(SAMPLE_TEST),
                               "--suite", "clean,weather"))
    assert "weather" in line


def test_check_command_passes_a_good_zip(packaged_zip):
    proc = run_cli("check", str(packaged_zip[0]))
    assert proc.returncode == 0, proc.stderr
    assert "passed" in proc.stdout and "deterministic" in proc.stdout


def test_package_names_the_zoom_undo_rules(tmp_path, trained_run):
    line = _error_line(run_cli("package", str(trained_run), "--out", str(tmp_path / "s.zip"), "--zoom-undo", "always"))
    assert "--zoom-undo rule" in line and "auto, on, off" in line and not (tmp_path / "s.zip").exists()
