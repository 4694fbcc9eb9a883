"""The dependency floors are true: training runs at the oldest TensorFlow and Keras pyproject.toml allows
(tests/test_compat_env.py proves the runtime, submission/model.py, under the server's Keras 3.4.1).

Slow: the first run creates a cached virtual environment from the package index (about 1.5 GB), so the training
test runs by `make test-floors`, not by `make test` (CI), whose time goes to the server-version checks."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from tests.conftest import ROOT, SAMPLE_TRAIN
from tools.compat_env import FLOOR_ENV


def test_pyproject_floors_are_the_tested_versions():
    pyproject = (ROOT / "pyproject.toml").read_text()
    for package, requirement in zip(("tensorflow", "keras"), FLOOR_ENV.requirements[:2]):
        version = requirement.split("==")[1]
        floor = ".".join(version.split(".")[:2])
        assert f'"{package}>={floor}"' in pyproject, f"pyproject.toml must state {package}>={floor}"


@pytest.mark.slow
@pytest.mark.floors
def test_training_runs_at_the_floor_versions(tmp_path):
    """One epoch with every augmentation part (hybrid: RandAugment, AugMix, CutMix/MixUp, colour, blur),
    weight averaging and a polish stage, at tensorflow 2.16 / keras 3.11."""
    from tools.compat_env import floor_python

    python = floor_python()
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.run([str(python), "-m", "tools.cli", "train", "--data", str(SAMPLE_TRAIN), "--backbone",
                           "tinycnn", "--weights", "none", "--epochs", "1", "--limit", "64", "--batch-size", "16",
                           "--augment", "hybrid", "--ema-momentum", "0.9", "--polish-epochs", "1", "--out", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    versions = json.loads((out / "polished" / "model.json").read_text())["keras_version"]
    assert versions == FLOOR_ENV.requirements[1].split("==")[1]
    assert json.loads((out / "ensemble.json").read_text())["members"] == ["unpolished", "polished"]
