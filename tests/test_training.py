"""Training mechanics: resume after a kill, balancing, k-fold splits, freezing, presets."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.conftest import ROOT, SAMPLE_TRAIN, history_epochs, run_cli
from train.config import TrainConfig
from train.errors import BcsubError
from train.fit import plan_stages
from train.pipeline import epoch_indices, training_dataset
from train.runs import find_members


@pytest.mark.slow
def test_killed_training_resumes_from_the_saved_epoch(tmp_path):
    out = tmp_path / "run"
    args = ["train", "--data", str(SAMPLE_TRAIN), "--backbone", "tinycnn", "--weights", "none", "--epochs", "6",
            "--limit", "64", "--batch-size", "16", "--augment", "none", "--patience", "10", "--ema-momentum", "0.9",
            "--polish-epochs", "2", "--polish-augment", "v1", "--out", str(out)]
    proc = subprocess.Popen([sys.executable, "-m", "tools.cli", *args], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600
    while len(history_epochs(out / "history.csv")) < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    proc.wait()
    done_before = history_epochs(out / "history.csv")
    assert 2 <= len(done_before) < 6, "the run must be interrupted mid-training"
    assert not (out / "model.json").exists()
    unfinished = run_cli("package", str(out), "--out", str(tmp_path / "x.zip"))
    assert unfinished.returncode == 2 and "did not finish" in unfinished.stderr
    resumed = run_cli(*args)
    assert resumed.returncode == 0, resumed.stderr
    epochs = history_epochs(out / "history.csv")
    assert epochs == [*range(6), 0, 1], f"expected epochs 0..5 once each, then 2 polish epochs; got {epochs}"
    # the polish stage makes a snapshot ensemble: the weights from before it and after it
    assert json.loads((out / "ensemble.json").read_text())["members"] == ["unpolished", "polished"]
    members = find_members(out)
    assert [m.run_dir.name for m in members] == ["unpolished", "polished"]
    before, after = (np.load(m.weights_path)["w0000"] for m in members)
    assert not np.array_equal(before, after)
    packaged = run_cli("package", str(out), "--out", str(tmp_path / "snap.zip"), "--tta", "1")
    assert packaged.returncode == 0, packaged.stderr
    assert "2 member(s)" in packaged.stdout


def test_backup_killed_mid_write_keeps_the_previous_epoch(tmp_path, monkeypatch):
    """A kill while the epoch backup is written leaves the previous backup readable (Keras' own
    BackupAndRestore writes in place and left a file h5py could not open)."""
    from pathlib import Path

    from submission.model import build_network
    from train.keras_internals import AtomicBackupAndRestore

    def network():
        model = build_network({"backbone": "tinycnn", "image_size": 32}, input_size=32)
        model.compile(optimizer="adam", loss="categorical_crossentropy")
        model.optimizer.build(model.trainable_variables)
        return model

    model = network()
    backup = AtomicBackupAndRestore(str(tmp_path))
    backup.set_model(model)
    backup.on_epoch_end(0)
    saved = model.get_weights()
    model.set_weights([w + 1.0 for w in saved])

    def dies_mid_write(filepath, **kwargs):
        Path(filepath).write_bytes(b"\x89HDF\r\n\x1a\n half an epoch")
        raise KeyboardInterrupt

    monkeypatch.setattr(model, "save_weights", dies_mid_write)
    with pytest.raises(KeyboardInterrupt):
        backup.on_epoch_end(1)
    resumed = network()
    restore = AtomicBackupAndRestore(str(tmp_path))
    restore.set_model(resumed)
    restore.on_train_begin()
    assert resumed._initial_epoch == 1
    for got, want in zip(resumed.get_weights(), saved):
        np.testing.assert_array_equal(got, want)
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp") or "weights.h5." in p.name] == []


def test_ema_checkpoint_holds_the_weights_that_were_validated(tmp_path):
    """With --ema-momentum the logged val accuracy and the kept checkpoint are the averaged weights."""
    import tensorflow as tf

    from submission.model import build_network
    from train.fit import Stage, run_stage
    from train.pipeline import evaluation_dataset

    rng = np.random.default_rng(0)
    labels = np.arange(96) % 8
    images = (rng.integers(0, 60, (96, 32, 32, 3)) + labels[:, None, None, None] * 24).astype(np.uint8)
    cfg = TrainConfig(data="d", out=str(tmp_path), backbone="tinycnn", weights="none", ema_momentum=0.95,
                      learning_rate=0.01, patience=0, warmup_epochs=0)
    model = build_network({"backbone": "tinycnn", "image_size": 32}, input_size=32)
    train_ds, steps = training_dataset(images, labels, 16, "none", 0, seed=0)
    val_ds = evaluation_dataset(images[::3], labels[::3], 16)
    run_stage(model, Stage("full", 4, 0.01, None, 0.0, "none"), cfg, tf.distribute.get_strategy(), train_ds, steps,
              val_ds, tmp_path, None)
    assert model.optimizer.use_ema
    with open(tmp_path / "history.csv", newline="") as handle:
        logged = [float(row["val_accuracy"]) for row in csv.DictReader(handle)]
    _, accuracy = model.evaluate(val_ds, verbose=0)
    assert accuracy == pytest.approx(max(logged), abs=1e-6)


def test_xla_choice_follows_the_devices_and_the_option():
    """--xla auto: XLA on a CPU-only machine without a strategy (this machine) for a stage long enough to pay
    for compiling, Keras' own choice otherwise; on/off force it; anything else is refused with the choices."""
    from train.xla import XLA_MIN_STEPS, xla_for

    assert xla_for("auto", distributed=False, steps=70 * 112) is True  # the CPU preset's main stage; no GPU here
    assert xla_for("auto", distributed=False, steps=XLA_MIN_STEPS - 1) == "auto"  # too short to pay its compile
    assert xla_for("auto", distributed=True, steps=70 * 112) == "auto"
    assert xla_for("on", distributed=True, steps=1) is True and xla_for("off", distributed=False, steps=10**4) is False
    with pytest.raises(BcsubError, match="--xla 'fast': choose one of: auto, on, off"):
        TrainConfig(data="d", out="o", backbone="tinycnn", xla="fast")


def test_precision_choice_follows_the_devices_and_the_option(tmp_path):
    """--precision auto: mixed_float16 on a GPU, mixed_bfloat16 on a CPU with bfloat16 instructions, float32 on
    other CPUs; a named policy is kept; anything else is refused. Whether the CPU has bfloat16 instructions is
    read from its flags (/proc/cpuinfo)."""
    from train.devices import cpu_flags, cpu_has_bf16, training_precision

    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 avx512f amx_bf16 amx_tile\n\n"
                       "processor\t: 1\nflags\t\t: fpu sse avx2 avx512f amx_bf16 amx_tile\n")
    assert {"avx2", "amx_bf16"} <= cpu_flags(cpuinfo) and cpu_has_bf16(cpu_flags(cpuinfo))
    assert not cpu_has_bf16({"avx2", "avx512f", "fma"}) and cpu_flags(tmp_path / "missing") == set()
    assert training_precision("auto", gpus=1) == "mixed_float16"
    amx, zen4, older = cpu_flags(cpuinfo), {"avx2", "avx512f", "avx512_bf16"}, {"avx2", "avx512f", "fma"}
    assert training_precision("auto", gpus=1, flags=amx) == "mixed_float16"
    assert training_precision("auto", gpus=0, flags=amx) == "mixed_bfloat16"
    assert training_precision("auto", gpus=0, flags=zen4) == "mixed_bfloat16"
    assert training_precision("auto", gpus=0, flags=older) == "float32"
    assert training_precision("float32", gpus=0, flags=amx) == "float32"
    assert training_precision("float32", gpus=1) == "float32"
    assert training_precision("mixed_bfloat16", gpus=0) == "mixed_bfloat16"
    with pytest.raises(BcsubError, match="--precision 'fp8': choose one of: auto, float32, mixed_float16"):
        TrainConfig(data="d", out="o", backbone="tinycnn", precision="fp8")


def test_the_workers_of_a_run_agree_on_one_precision(tmp_path, capsys):
    """--multi-worker with --precision auto: each worker resolves auto on its own devices, then all train in the
    one policy they all chose, else in float32 (a cluster mixing CPU families); recorded in precision.json."""
    import json

    import keras
    import numpy as np
    import tensorflow as tf

    from train.devices import POLICIES, agreed_precision, training_precision
    from train.fit import agree_across_workers, set_precision

    def votes(*policies: str) -> np.ndarray:
        return np.sum([np.eye(len(POLICIES))[POLICIES.index(p)] for p in policies], axis=0)

    assert agreed_precision(votes("mixed_bfloat16", "mixed_bfloat16")) == "mixed_bfloat16"
    assert agreed_precision(2 * votes("mixed_float16")) == "mixed_float16"  # two GPUs a worker: two votes each
    assert agreed_precision(votes("mixed_bfloat16", "float32")) == "float32"
    assert agreed_precision(votes("mixed_float16", "mixed_bfloat16", "mixed_bfloat16")) == "float32"
    own = training_precision("auto")
    # the real all-reduce, with this process as the only worker: its own choice stands
    assert agree_across_workers(tf.distribute.get_strategy(), own) == own
    set_precision("auto", tmp_path, agree=lambda policy: agreed_precision(votes(policy, "float32")))
    assert keras.mixed_precision.global_policy().name == "float32"
    recorded = json.loads((tmp_path / "precision.json").read_text())
    assert recorded["policy"] == "float32" and recorded["agreed_by_workers"] is True
    if own != "float32":  # a CPU with bfloat16 instructions (or a GPU) outvoted by a worker without
        assert f"this one alone would train in {own}" in capsys.readouterr().out
    set_precision("mixed_bfloat16", tmp_path, agree=lambda policy: "float32")  # a named policy is not put to a vote
    assert keras.mixed_precision.global_policy().name == "mixed_bfloat16"
    assert "agreed_by_workers" not in json.loads((tmp_path / "precision.json").read_text())


def test_a_member_trained_in_bfloat16_is_shipped_in_float32(tmp_path):
    """--precision mixed_bfloat16 (1.2x as fast on an AMX CPU): the run trains, the saved weights are float32,
    the run records the policy it trained in, and `bcsub check` finds the shipped networks equal to the training
    graph's float32 probabilities."""
    out = tmp_path / "run"
    proc = run_cli("train", "--data", str(SAMPLE_TRAIN), "--backbone", "tinycnn", "--weights", "none",
                   "--image-size", "32", "--epochs", "2", "--polish-epochs", "1", "--limit", "64", "--batch-size",
                   "16", "--augment", "v3ef", "--precision", "mixed_bfloat16", "--out", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    assert json.loads((out / "config.json").read_text())["precision"] == "mixed_bfloat16"
    assert json.loads((out / "precision.json").read_text())["policy"] == "mixed_bfloat16"
    members = find_members(out)
    assert len(members) == 2  # the unpolished and polished snapshots
    for member in members:
        with np.load(member.weights_path, allow_pickle=False) as weights:
            assert {weights[key].dtype.name for key in weights.files} == {"float32"}
    checked = run_cli("check", str(out))
    assert checked.returncode == 0 and "passed" in checked.stdout, checked.stdout + checked.stderr


def xla_compiled(function) -> bool:
    """Whether a Keras train function wraps a tf.function compiled with XLA (found through its closures)."""
    seen, todo = set(), [function]
    while todo:
        f = todo.pop()
        if id(f) in seen:
            continue
        seen.add(id(f))
        if getattr(f, "_jit_compile", None):
            return True
        todo += [c.cell_contents for c in (getattr(f, "__closure__", None) or ()) if callable(c.cell_contents)]
        todo += [w for w in (getattr(f, "__wrapped__", None), getattr(f, "_python_function", None)) if w]
    return False


def test_xla_compiled_training_learns_what_the_plain_step_learns(tmp_path):
    """The XLA-compiled training step (the CPU default for long stages) and the plain one, from the same start
    on the same batches: the same loss curve and nearly the same network (XLA fuses, so float rounding
    differs); the model really was compiled with XLA."""
    import keras
    import tensorflow as tf

    from submission.model import build_network
    from train.fit import Stage, run_stage
    from train.pipeline import evaluation_dataset

    rng = np.random.default_rng(0)
    labels = np.arange(96) % 8
    images = (rng.integers(0, 60, (96, 32, 32, 3)) + labels[:, None, None, None] * 24).astype(np.uint8)
    val_ds = evaluation_dataset(images[::3], labels[::3], 16)
    outputs, losses = {}, {}
    for xla in ("on", "off"):
        out = tmp_path / xla
        out.mkdir()
        cfg = TrainConfig(data="d", out=str(out), backbone="tinycnn", weights="none", learning_rate=0.01,
                          patience=0, warmup_epochs=0, dropout=0.0, xla=xla)
        keras.utils.set_random_seed(0)
        model = build_network({"backbone": "tinycnn", "image_size": 32, "dropout": 0.0}, input_size=32)
        train_ds, steps = training_dataset(images, labels, 16, "none", 0, seed=0)
        run_stage(model, Stage("full", 3, 0.01, None, 0.0, "none"), cfg, tf.distribute.get_strategy(), train_ds,
                  steps, val_ds, out, None)
        assert xla_compiled(model.train_function) is (xla == "on")
        assert model.jit_compile is False  # validation and prediction stay plain
        with open(out / "history.csv", newline="") as handle:
            losses[xla] = [float(row["loss"]) for row in csv.DictReader(handle)]
        outputs[xla] = model.predict(images[:32].astype(np.float32), verbose=0)
    np.testing.assert_allclose(losses["on"], losses["off"], rtol=1e-3)
    np.testing.assert_allclose(outputs["on"], outputs["off"], atol=1e-3)


def test_the_xla_probe_keeps_the_faster_step_and_is_only_for_long_cpu_stages():
    """The CPU preset's epoch at 72 px, measured: 43 s XLA-compiled vs 32 s plain on a 2-core Intel Xeon, 106 s vs
    140 s on a 2-core AMD EPYC (README, Benchmarks): each machine keeps its faster step. --xla on/off, short
    stages and distributed ones are not probed."""
    from train.xla import XLA_MIN_STEPS, choose_xla, fastest_epoch_s, xla_message, xla_probe_applies

    xeon = choose_xla(72, {True: 43.0, False: 32.0}.__getitem__)
    assert xeon["xla"] is False and fastest_epoch_s(xeon) == 32.0
    assert "43 s XLA-compiled and 32 s plain" in xla_message(xeon) and "with the plain step" in xla_message(xeon)
    epyc = choose_xla(72, {True: 106.0, False: 140.0}.__getitem__)
    assert epyc["xla"] is True and fastest_epoch_s(epyc) == 106.0 and "XLA-compiled step" in xla_message(epyc)
    assert xla_probe_applies("auto", distributed=False, steps=70 * 112)
    assert not xla_probe_applies("auto", distributed=False, steps=XLA_MIN_STEPS - 1)
    assert not xla_probe_applies("auto", distributed=True, steps=70 * 112)
    assert not any(xla_probe_applies(choice, distributed=False, steps=70 * 112) for choice in ("on", "off"))


def test_the_probed_xla_choice_is_the_step_every_stage_trains_with(tmp_path):
    """The real probe on the tiny network: both steps timed, the record written, the member's --xla set to the
    faster, and the stage compiled that way; a run dir that already holds a choice keeps it without probing."""
    import tensorflow as tf

    from train.data import Dataset
    from train.devices import training_precision
    from train.fit import MemberFit, Stage, prepare_stage
    from train.xla import XLA_FILE

    rng = np.random.default_rng(0)
    labels = np.arange(64) % 8
    data = Dataset(rng.integers(0, 255, (64, 96, 96, 3), dtype=np.uint8), labels, "synthetic")
    stage = Stage("full", 200, 0.01, None, 0.0, "none")  # 200 epochs x 4 steps: long enough to consider XLA
    for written in (None, {"probed_side": 32, "seconds_per_epoch": {"xla": 1.0, "plain": 2.0}, "xla": True}):
        out = tmp_path / ("probed" if written is None else "kept")
        out.mkdir()
        if written:
            (out / XLA_FILE).write_text(json.dumps(written))
        cfg = TrainConfig(data="d", out=str(out), backbone="tinycnn", weights="none", image_size=32, batch_size=16)
        member = MemberFit(cfg, data, data, out, "tinycnn", seed=0)
        member.setup()
        assert json.loads((out / "precision.json").read_text())["policy"] == training_precision("auto")
        choice = member.fit_xla_to_machine(stage)
        assert choice == json.loads((out / XLA_FILE).read_text())
        assert all(seconds > 0 for seconds in choice["seconds_per_epoch"].values()) and choice["probed_side"] == 32
        assert written is None or choice == written
        assert member.cfg.xla == ("on" if choice["xla"] else "off")
        prepare_stage(member.model, stage, member.cfg, tf.distribute.get_strategy(), steps=4)
        assert xla_compiled(member.model.train_function) is choice["xla"]


def test_balanced_epoch_indices():
    labels = np.array([0] * 50 + [1] * 3 + [2] * 10 + [3, 4, 5, 6, 7] * 2)
    idx = epoch_indices(labels, 20, np.random.default_rng(0))
    assert np.bincount(labels[idx], minlength=8).tolist() == [20] * 8
    assert len(set(idx[labels[idx] == 0].tolist())) == 20  # big class: sampled without replacement


def test_training_dataset_batches_are_balanced():
    images = np.zeros((40, 96, 96, 3), np.uint8)
    labels = np.array([0] * 33 + [1, 2, 3, 4, 5, 6, 7])
    ds, steps = training_dataset(images, labels, batch_size=16, augment="none", balance=8, seed=0)
    assert steps == 4
    counts = np.zeros(8)
    for x, y in ds.take(steps):
        assert x.shape == (16, 96, 96, 3) and y.shape == (16, 8)
        counts += y.numpy().sum(axis=0)
    assert counts.tolist() == [8] * 8


def test_prior_offsets_are_the_centred_log_class_frequencies():
    from train.pipeline import prior_logit_offsets

    labels = np.repeat(np.arange(8), [10, 20, 40, 10, 10, 10, 80, 20])
    offsets = np.array(prior_logit_offsets(labels))
    assert abs(offsets.sum()) < 1e-5
    assert np.isclose(offsets[6] - offsets[0], np.log(81 / 11), atol=1e-5)  # +1 smoothing
    assert np.allclose(prior_logit_offsets(np.repeat(np.arange(8), 5)), 0.0)
    cfg = TrainConfig.from_options("cpu", data="d", out="o")
    assert cfg.balance and cfg.corrects_prior
    assert not TrainConfig.from_options("cpu", data="d", out="o", prior_correction=False).corrects_prior
    assert not TrainConfig.from_options(None, data="d", out="o").corrects_prior  # natural batches


def test_training_dataset_augments_at_the_network_size():
    """A 64 px network is trained on batches shrunk to 64 px before augmentation (v3 keeps 0..255)."""
    from train.fit import training_input_size

    images = np.random.default_rng(0).integers(0, 256, (16, 96, 96, 3), dtype=np.uint8)
    labels = np.arange(16) % 8
    size = training_input_size({"backbone": "resnet-small", "image_size": 64})
    assert size == 64 and training_input_size({"backbone": "efficientnetb0", "image_size": 224}) is None
    ds, _ = training_dataset(images, labels, batch_size=8, augment="v3", balance=0, seed=0, size=size)
    x, _ = next(iter(ds))
    assert x.shape == (8, 64, 64, 3) and x.dtype == np.float32
    assert 0 <= float(np.min(x)) and float(np.max(x)) <= 255


def test_fold_splits_are_stratified_and_disjoint():
    from train.trainer import fold_splits

    labels = np.repeat(np.arange(8), 10)
    splits = fold_splits(labels, 5, seed=0)
    seen = np.concatenate([val for _, val in splits])
    assert sorted(seen.tolist()) == list(range(80))
    for train_idx, val_idx in splits:
        assert not set(train_idx) & set(val_idx)
        assert np.bincount(labels[val_idx], minlength=8).tolist() == [2] * 8
    with pytest.raises(BcsubError, match="fewer than"):
        fold_splits(np.repeat(np.arange(8), 2), 3, seed=0)


def test_two_stages_for_pretrained_one_from_scratch():
    scratch = TrainConfig(data="d", out="o", backbone="resnet-small", weights="none")
    assert [s.name for s in plan_stages(scratch)] == ["full"]
    tuned = TrainConfig(data="d", out="o", backbone="efficientnetv2s", weights="imagenet", fine_tune_layers=30)
    head, fine = plan_stages(tuned)
    assert head.trainable_top == 0 and fine.trainable_top == 30
    assert fine.learning_rate < head.learning_rate and fine.l2 > head.l2


def test_polish_stage_is_last_milder_and_slower():
    cfg = TrainConfig(data="d", out="o", backbone="resnet-small", weights="none", augment="v3", learning_rate=2e-3,
                      polish_epochs=8, polish_augment="v1", polish_learning_rate_factor=0.15)
    full, polish = plan_stages(cfg)
    assert (full.name, full.augment, full.epochs) == ("full", "v3", cfg.epochs)
    assert (polish.name, polish.augment, polish.epochs, polish.warmup_epochs) == ("polish", "v1", 8, 0)
    assert polish.learning_rate == pytest.approx(3e-4) and polish.trainable_top is None
    tuned = TrainConfig(data="d", out="o", backbone="efficientnetv2s", fine_tune_layers=30, polish_epochs=2)
    assert [(s.name, s.trainable_top) for s in plan_stages(tuned)] == [("head", 0), ("fine_tune", 30), ("polish", 30)]
    with pytest.raises(BcsubError, match="--polish-augment 'v9'"):
        TrainConfig(data="d", out="o", polish_epochs=2, polish_augment="v9")


def test_fine_tuning_freezes_batchnorm():
    import keras

    from submission.model import build_network
    from train.backbones import set_backbone_trainable

    model = build_network({"backbone": "mobilenetv3small", "image_size": 32})
    backbone = model.get_layer("backbone")
    set_backbone_trainable(model, 0)
    assert not backbone.trainable and model.get_layer("logits").trainable
    set_backbone_trainable(model, 20)
    top = backbone.layers[-20:]
    assert all(not layer.trainable for layer in backbone.layers[:-20] if layer.weights)
    assert any(layer.trainable for layer in top if layer.weights)
    assert all(not layer.trainable for layer in backbone.layers if isinstance(layer, keras.layers.BatchNormalization))


def test_presets_and_overrides():
    cfg = TrainConfig.from_options("cpu", data="d", out="o", epochs=3)
    assert cfg.backbone == "resnet-small" and cfg.weights == "none" and cfg.epochs == 3
    ensemble = TrainConfig.from_options(None, data="d", out="o", backbone="tinycnn,resnet-small")
    assert ensemble.backbones == ["tinycnn", "resnet-small"]
    with pytest.raises(BcsubError, match="unknown backbone 'vgg99'"):
        TrainConfig.from_options(None, data="d", out="o", backbone="vgg99")
    with pytest.raises(BcsubError, match="unknown preset"):
        TrainConfig.from_options("tpu", data="d", out="o")


def test_preprocessing_option_reaches_the_model_spec():
    """--preprocessing fold is recorded in the spec the network is rebuilt from (training, package, zip);
    pretrained backbones keep their own, and an unknown choice names the choices."""
    assert TrainConfig.from_options("cpu", data="d", out="o").model_spec()["preprocessing"] == "standardize"
    folded = TrainConfig.from_options("cpu", data="d", out="o", preprocessing="fold")
    assert folded.model_spec()["preprocessing"] == "fold"
    with pytest.raises(BcsubError, match="choose one of: standardize, fold"):
        TrainConfig.from_options("cpu", data="d", out="o", preprocessing="invert")
    with pytest.raises(BcsubError, match="efficientnetv2s keeps the preprocessing"):
        TrainConfig.from_options("gpu", data="d", out="o", preprocessing="fold")


MIRRORED_RUN = """
import sys
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import train.fit
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
train.fit.make_strategy = lambda multi_worker: strategy  # what several GPUs get
from train.config import TrainConfig
from train.trainer import run_training
cfg = TrainConfig(data=sys.argv[1], out=sys.argv[2], backbone="tinycnn", weights="none", image_size=32, batch_size=8,
                  epochs=2, augment="hybrid", polish_epochs=1, polish_augment="v3ef", balance=8, limit=64,
                  precision="mixed_float16", ema_momentum=0.9, members=2)
print("replicas", strategy.num_replicas_in_sync, "members", len(run_training(cfg)))
"""


def test_several_gpus_train_with_mirrored_strategy_in_mixed_precision(tmp_path):
    """The several-GPU path on two logical CPUs: MirroredStrategy, mixed_float16, hybrid augmentation, weight
    averaging, polish and two members; every shipped network is the training graph (`bcsub check`)."""
    script = tmp_path / "mirrored.py"
    script.write_text(MIRRORED_RUN)
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, str(script), str(SAMPLE_TRAIN), str(out)], cwd=ROOT, capture_output=True,
                          text=True, timeout=900, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0 and "replicas 2 members 2" in proc.stdout, proc.stdout + proc.stderr[-3000:]
    assert len(find_members(out)) == 4  # two members, each with its unpolished and polished snapshot
    checked = run_cli("check", str(out))
    assert checked.returncode == 0 and "passed" in checked.stdout, checked.stdout + checked.stderr


def test_the_gpu_recipe_on_a_machine_without_a_gpu_says_so_at_once(capsys):
    """A notebook whose GPU runtime is off: `--preset gpu` warns before loading any data (this machine has no
    GPU, so the real detection warns); with a GPU, or another recipe, nothing is said."""
    from train.trainer import warn_gpu_recipe_on_cpu

    gpu = TrainConfig.from_options("gpu", data="d", out="o")
    assert warn_gpu_recipe_on_cpu(gpu)
    assert "TensorFlow sees no GPU" in capsys.readouterr().err
    assert not warn_gpu_recipe_on_cpu(gpu, gpus=1)
    assert not warn_gpu_recipe_on_cpu(TrainConfig.from_options("cpu", data="d", out="o"), gpus=0)
    assert capsys.readouterr().err == ""


def test_a_run_without_a_budget_is_told_how_long_its_schedule_takes():
    """After the step probe, a run with no --time-budget gets its epochs x the probed epoch time; over an hour,
    with the option that plans them to fit."""
    from train.fit import Stage, schedule_message

    stages = [Stage("head", 10, 1e-3, 0, 0.0, "hybrid"), Stage("fine_tune", 20, 1e-4, 120, 0.0, "hybrid")]
    long = schedule_message(stages, 1800.0)
    assert "30 epochs at about 1800 s" in long and "about 15.0 h" in long and "--time-budget" in long
    assert "--time-budget" not in schedule_message(stages, 60.0)
