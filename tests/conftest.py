"""Shared fixtures: the embedded sample, a tiny trained run and its packaged zip (built once)."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = Path(__file__).resolve().parent.parent
SAMPLE_TRAIN = ROOT / "data" / "sample" / "train.npz"
SAMPLE_TEST = ROOT / "data" / "sample" / "test.npz"


@pytest.fixture(autouse=True)
def float32_policy_after_each_test():
    """Every test starts in Keras' float32 policy: one that sets a member up without finishing it (``--precision
    auto`` is mixed_bfloat16 on a CPU with bfloat16 instructions) must not leave bfloat16 to the next in its process."""
    yield
    if "keras" in sys.modules:
        sys.modules["keras"].mixed_precision.set_global_policy("float32")


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 900) -> subprocess.CompletedProcess:
    """Run the real `bcsub` command line in a subprocess."""
    return subprocess.run([sys.executable, "-m", "tools.cli", *args], cwd=cwd or ROOT, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, "PYTHONPATH": str(ROOT)})


def history_epochs(path: Path) -> list[int]:
    """The epoch column of a run's ``history.csv`` (empty before the first epoch ends)."""
    if not path.exists():
        return []
    with open(path, newline="") as handle:
        return [int(row["epoch"]) for row in csv.DictReader(handle)]


@pytest.fixture(scope="session")
def sample_test() -> tuple[np.ndarray, np.ndarray]:
    with np.load(SAMPLE_TEST, allow_pickle=False) as data:
        return data["images"], data["labels"].astype(np.int64)


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> Path:
    """A tinycnn trained for one epoch on 64 sample images (class-balanced batches) with the real CLI."""
    out = tmp_path_factory.mktemp("runs") / "tiny"
    proc = run_cli("train", "--data", str(SAMPLE_TRAIN), "--backbone", "tinycnn", "--weights", "none",
                   "--epochs", "1", "--limit", "64", "--batch-size", "16", "--augment", "v1", "--balance", "8",
                   "--out", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out


@pytest.fixture(scope="session")
def packaged_zip(trained_run: Path, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    out = tmp_path_factory.mktemp("zips") / "submission.zip"
    proc = run_cli("package", str(trained_run), "--out", str(out), "--tta", "auto")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out, proc
