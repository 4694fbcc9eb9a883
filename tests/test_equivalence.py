"""The zip provably equals the trained network: each member, rebuilt as the runtime rebuilds it, gives the
training graph's validation probabilities, or `bcsub package` (and `bcsub check RUN_DIR`) fails."""

from __future__ import annotations

import json
import shutil

import keras

from submission import model as runtime
from tests.conftest import run_cli
from tools.equivalence import TOLERANCE, compare_member
from train.data import Dataset
from train.runs import read_equivalence, write_equivalence


def test_a_runtime_that_rebuilds_another_network_fails_package(trained_run, tmp_path):
    """model.json says the network scales pixels to 0..1; it was trained standardising them."""
    broken = tmp_path / "broken"
    shutil.copytree(trained_run, broken)
    spec = json.loads((broken / "model.json").read_text())
    (broken / "model.json").write_text(json.dumps({**spec, "preprocessing": "unit"}))
    proc = run_cli("package", str(broken), "--out", str(tmp_path / "s.zip"), "--tta", "1")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "same network as trained" in proc.stderr and "max |p difference|" in proc.stderr
    assert "accuracy trained" in proc.stderr and "shipped" in proc.stderr
    assert not (tmp_path / "s.zip").exists()
    checked = run_cli("check", str(broken))
    assert checked.returncode == 2 and "same network as trained" in checked.stderr
    good = run_cli("check", str(trained_run))
    assert good.returncode == 0 and "passed" in good.stdout, good.stdout + good.stderr


def test_mixed_precision_training_graph_is_recorded_in_float32(tmp_path, sample_test):
    """A network trained in mixed precision computes in float16; its reference probabilities are taken in
    float32 (same layers, same weights), so the float32 runtime matches them within the tolerance."""
    spec = {"backbone": "tinycnn", "image_size": 48, "preprocessing": "standardize"}
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        trained = runtime.build_network(spec, input_size=48)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    images, labels = sample_test
    write_equivalence(trained, Dataset(images[:16], labels[:16], "sample"), tmp_path)
    assert trained.get_layer("logits").dtype_policy.compute_dtype == "float16"  # restored afterwards
    shipped = runtime.build_network(spec)
    runtime.assign_weights(shipped, trained.get_weights())
    result = compare_member(runtime, shipped, read_equivalence(tmp_path), "mixed")
    assert result.ok and result.n == 16 and result.max_difference <= TOLERANCE


def test_the_reference_carries_the_prior_correction_the_spec_adds(tmp_path, sample_test):
    """A balanced run ships logit offsets its training graph never had: the reference applies them exactly,
    so the shipped network matches it; a reference without them would not."""
    spec = {"backbone": "tinycnn", "image_size": 48, "preprocessing": "standardize"}
    offsets = [1.5, -1.0, 0.5, 0.0, -0.5, 2.0, -2.0, 0.25]
    trained = runtime.build_network(spec, input_size=48)
    shipped = runtime.build_network({**spec, "logit_offsets": offsets})
    runtime.assign_weights(shipped, trained.get_weights())
    val = Dataset(sample_test[0][:16], sample_test[1][:16], "sample")
    write_equivalence(trained, val, tmp_path, offsets)
    assert compare_member(runtime, shipped, read_equivalence(tmp_path), "balanced").ok
    write_equivalence(trained, val, tmp_path)
    assert not compare_member(runtime, shipped, read_equivalence(tmp_path), "balanced").ok
