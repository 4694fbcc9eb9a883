"""Zips bcsub did not make: the official template, other teams' model.py styles, the output contract and
the server-version run. Every model is built here; no model file is committed."""

from __future__ import annotations

import json
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import SAMPLE_TEST, run_cli
from tools.harness import run_zip
from tools.template_zip import template_model_py, write_template_zip, zip_submission
from tools.validate import describe_failure, validate_zip


def _tiny_cnn(flip: bool = False):
    import keras

    layers = [keras.Input((96, 96, 3))] + ([keras.layers.RandomFlip("horizontal")] if flip else [])
    layers += [keras.layers.Conv2D(4, 3, strides=4, activation="relu"), keras.layers.GlobalAveragePooling2D(),
               keras.layers.Dense(8, activation="softmax")]
    return keras.Sequential(layers)


@pytest.fixture(scope="module")
def template_zip(tmp_path_factory) -> Path:
    """The official template model.py with a tiny CNN saved (by the installed Keras) as weights.keras."""
    return write_template_zip(_tiny_cnn(), tmp_path_factory.mktemp("template") / "template.zip", scale=1 / 255)


@pytest.fixture
def wide_terminal(monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")  # rich wraps table cells at 80 columns when not on a terminal


def test_template_zip_scores_in_local_score(template_zip, tmp_path):
    out = tmp_path / "score.json"
    proc = run_cli("local-score", str(template_zip), "--data", str(SAMPLE_TEST), "--suite", "clean,an2dl",
                   "--severities", "1", "--json", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = json.loads(out.read_text())["submissions"][0]["summary"]
    assert summary["status"] == "ok" and not summary["variants_failed"]
    assert "seen" not in summary  # no seen-images record in a zip bcsub did not make: nothing to say
    assert 0 <= summary["expected_hidden_accuracy"] <= 1
    assert summary["projected_seconds_10000_images"] > summary["init_seconds"] > 0
    assert "expected hidden score" in proc.stdout


def test_template_zip_passes_check_and_its_working_directory_reliance_is_advisory(template_zip, wide_terminal):
    proc = run_cli("check", str(template_zip))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "passed the blocking checks" in proc.stdout
    warnings = [line for line in proc.stdout.splitlines() if line.startswith("warning (advisory")]
    assert any("working directory" in w and "os.path.dirname(__file__)" in w for w in warnings), proc.stdout
    assert any("n=0" in w for w in warnings)  # Keras' predict raises on an empty array: advisory only


NUMPY_MODEL = """
import numpy as np


class Model:
    def predict(self, X):
        labels = (np.asarray(X, dtype=np.float64).mean(axis=(1, 2, 3)) // 32).astype(np.int64) % 8
        {body}
"""


def _numpy_zip(tmp_path, body: str) -> Path:
    return zip_submission(tmp_path / "sub.zip", NUMPY_MODEL.format(body=body), [])


@pytest.fixture(scope="module")
def probe(sample_test) -> np.ndarray:
    return sample_test[0]


def test_column_of_float_labels_passes_with_advisories(tmp_path, probe):
    report, _ = validate_zip(_numpy_zip(tmp_path, "return labels.reshape(-1, 1).astype(np.float32)"), probe)
    assert report.ok, describe_failure(report, None)
    warned = {c.name: c.detail for c in report.warnings()}
    assert "column" in warned["output format"] and "float32" in warned["output format"]


def test_one_hot_output_fails_blocking(tmp_path, probe):
    report, _ = validate_zip(_numpy_zip(tmp_path, "return np.eye(8)[labels]"), probe)
    assert not report.ok
    assert describe_failure(report, None).startswith("failed 'output contract'")
    assert "argmax" in report.failures()[0].detail


def test_raising_on_an_empty_batch_is_advisory(tmp_path, probe):
    body = "if len(X) == 0:\n            raise ValueError('no images')\n        return labels"
    report, _ = validate_zip(_numpy_zip(tmp_path, body), probe)
    assert report.ok, describe_failure(report, None)
    assert [c.name for c in report.warnings()] == ["n=0"] and "no images" in report.warnings()[0].detail


SUB_FOLDER_MODEL = """import os

import numpy as np


class Model:
    def __init__(self):
        self.label = int(np.load(os.path.join(os.path.dirname(__file__), "params", "label.npy")))

    def predict(self, X):
        return np.full(len(X), self.label, dtype=np.int64)
"""


def test_a_zip_with_a_sub_folder_and_macos_metadata_runs_as_codabench_unzips_it(tmp_path, probe):
    """model.py loads its file from a sub-folder; the zip was made by macOS "Compress" (__MACOSX/, .DS_Store)."""
    label = tmp_path / "label.npy"
    np.save(label, np.int64(5))
    path = tmp_path / "mac.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("model.py", SUB_FOLDER_MODEL)
        archive.write(label, "params/label.npy")
        for junk in ("__MACOSX/._model.py", "__MACOSX/params/._label.npy", ".DS_Store"):
            archive.writestr(junk, b"\x00\x05\x16\x07")
    report, _ = validate_zip(path, probe)
    assert report.ok, describe_failure(report, None)
    assert "beside it params/" in report.checks[0].detail
    labels = run_zip(path, {"probe": probe[:7]}).predictions["probe"]
    assert labels.tolist() == [5] * 7


def test_check_exit_code_follows_blocking_checks_only(tmp_path):
    one_hot = run_cli("check", str(_numpy_zip(tmp_path, "return np.eye(8)[labels]")))
    assert one_hot.returncode == 2 and "failed 'output contract'" in one_hot.stderr, one_hot.stderr


# Saved under the server's Keras, as 2024 teams' models were: a template zip and a real-world-style zip
# (its own loader by absolute path, an .h5 file, /255 inside predict, its own flip TTA).
SAVE_UNDER_SERVER_KERAS = """
import sys, keras
model = keras.Sequential([keras.Input((96, 96, 3)), keras.layers.Conv2D(4, 3, strides=4, activation="relu"),
                          keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(8, activation="softmax")])
for path in sys.argv[1:]:
    model.save(path)
"""
REAL_WORLD_MODEL_PY = """import os

import numpy as np
import tensorflow as tf


class Model:
    def __init__(self):
        path = os.path.join(os.path.dirname(__file__), "model.h5")
        self.net = tf.keras.models.load_model(path, compile=False)

    def predict(self, X):
        X = np.asarray(X, dtype=np.float32) / 255.0
        probs = self.net.predict(X, verbose=0) + self.net.predict(X[:, :, ::-1], verbose=0)
        return np.argmax(probs, axis=1)
"""


@pytest.mark.slow
def test_zips_saved_under_the_servers_keras_pass_check_env(tmp_path, wide_terminal):
    from tools.compat_env import compat_python

    keras_file, h5_file = tmp_path / "weights.keras", tmp_path / "model.h5"
    subprocess.run([str(compat_python()), "-c", SAVE_UNDER_SERVER_KERAS, str(keras_file), str(h5_file)],
                   check=True, capture_output=True, timeout=600)
    for zip_path in (zip_submission(tmp_path / "template.zip", template_model_py(), [keras_file]),
                     zip_submission(tmp_path / "real_world.zip", REAL_WORLD_MODEL_PY, [h5_file])):
        proc = run_cli("check", str(zip_path), "--env", timeout=1800)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "keras 3.4.1" in proc.stdout and "also under the server's versions" in proc.stdout


@pytest.mark.slow
def test_keras_argument_unknown_to_the_server_fails_check_env_with_the_loaders_error(tmp_path):
    """RandomFlip saved by the installed Keras carries 'data_format', which Keras 3.4.1 does not take."""
    zip_path = write_template_zip(_tiny_cnn(flip=True), tmp_path / "flip.zip")
    proc = run_cli("check", str(zip_path), "--env", timeout=1800)
    assert proc.returncode != 0
    error = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1, proc.stderr
    assert "failed 'Model()' under tensorflow 2.17.0, keras 3.4.1" in error[0]
    assert "ValueError: Unrecognized keyword arguments passed to RandomFlip: {'data_format'" in error[0]
    assert "RandomFlip has no argument 'data_format' in Keras 3.4.1" in error[0] and "re-save" in error[0]
