"""Fit one network into a run dir: two-stage fine-tuning (or one stage from scratch), resumable."""

from __future__ import annotations

import functools
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from submission.model import IMAGE_SHAPE, TTAEnsemble, build_network, network_input_size, save_weights
from train.atomic import atomic_output, write_json, write_weights
from train.backbones import build_pretrained_network, set_backbone_trainable, set_head_l2
from train.config import TrainConfig
from train.data import Dataset
from train.keras_internals import AtomicBackupAndRestore
from train.metrics import score
from train.pipeline import evaluation_dataset, prior_logit_offsets, training_dataset
from train.plots import plot_confusion, plot_curves
from train.runs import (
    HISTORY_FILE,
    METRICS_FILE,
    MODEL_SPEC_FILE,
    VAL_PREDICTIONS_FILE,
    WEIGHTS_FILE,
    MemberResult,
    is_complete_run,
    read_val_probs,
    write_ensemble,
)


@dataclass
class Stage:
    """One call of ``model.fit`` with its own trainable layers and learning-rate schedule."""

    name: str
    epochs: int
    learning_rate: float
    trainable_top: int | None  # 0: backbone frozen; N: top N layers; None: everything
    l2: float
    augment: str
    warmup_epochs: int = 1


def plan_stages(cfg: TrainConfig) -> list[Stage]:
    """Pretrained: frozen backbone, then the top layers at a lower rate. Scratch: one full stage.
    Either way, ``--polish-epochs`` adds a last stage with milder augmentation at a lower rate."""
    if not cfg.pretrained:
        stages = [Stage("full", cfg.epochs, cfg.learning_rate, None, cfg.l2, cfg.augment, cfg.warmup_epochs)]
    else:
        stages = [Stage("head", cfg.epochs, cfg.learning_rate, 0, cfg.l2, cfg.augment, cfg.warmup_epochs)]
        if cfg.fine_tune_epochs > 0:
            stages.append(Stage("fine_tune", cfg.fine_tune_epochs, cfg.fine_tune_learning_rate,
                                cfg.fine_tune_layers, cfg.fine_tune_l2, cfg.augment, cfg.warmup_epochs))
    if cfg.polish_epochs > 0:
        last = stages[-1]
        stages.append(Stage("polish", cfg.polish_epochs, last.learning_rate * cfg.polish_learning_rate_factor,
                            last.trainable_top, last.l2, cfg.polish_augment, warmup_epochs=0))
    return stages


@functools.cache
def make_strategy(multi_worker: bool) -> tf.distribute.Strategy:
    """MultiWorkerMirrored from TF_CONFIG when asked, Mirrored on several GPUs, else the default."""
    if multi_worker:
        return tf.distribute.MultiWorkerMirroredStrategy()
    if len(tf.config.list_physical_devices("GPU")) > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


class PersistentCheckpoint(keras.callbacks.Callback):
    """Keep the weights of the epoch with the best validation accuracy. The best score lives in a side
    file, so a resumed run keeps it; both are replaced atomically."""

    def __init__(self, filepath: Path):
        super().__init__()
        self.filepath = Path(filepath)
        self.best_file = Path(str(filepath) + ".best.json")
        self.best = -np.inf
        if self.best_file.exists() and self.filepath.exists():
            self.best = json.loads(self.best_file.read_text())["best"]

    def on_epoch_end(self, epoch, logs=None):
        score = (logs or {}).get("val_accuracy")
        if score is None or score <= self.best:
            return
        write_weights(self.model, self.filepath)
        self.best = float(score)
        write_json(self.best_file, {"best": self.best, "epoch": epoch + 1})


class TimeBudget(keras.callbacks.Callback):
    """Stop before an epoch that would end after ``deadline`` (time.monotonic seconds)."""

    def __init__(self, deadline: float):
        super().__init__()
        self.deadline = deadline
        self.epoch_start = time.monotonic()

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch_start = time.monotonic()

    def on_epoch_end(self, epoch, logs=None):
        now = time.monotonic()
        if now + (now - self.epoch_start) > self.deadline:
            self.model.stop_training = True


def compile_for(model: keras.Model, stage: Stage, cfg: TrainConfig, steps: int) -> None:
    total = max(1, stage.epochs * steps)
    warmup = min(total // 2, stage.warmup_epochs * steps)
    schedule = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=stage.learning_rate / 10 if warmup else stage.learning_rate,
        decay_steps=max(1, total - warmup),
        warmup_target=stage.learning_rate if warmup else None,
        warmup_steps=warmup,
        alpha=0.01,
    )
    model.compile(
        optimizer=keras.optimizers.AdamW(schedule, weight_decay=cfg.weight_decay, use_ema=cfg.ema_momentum > 0,
                                         ema_momentum=cfg.ema_momentum),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=cfg.label_smoothing),
        metrics=["accuracy"],
    )


def class_weight_for(labels: np.ndarray) -> dict[int, float]:
    from sklearn.utils.class_weight import compute_class_weight

    classes = np.unique(labels)
    weights = compute_class_weight("balanced", classes=classes, y=labels)
    return {int(c): float(w) for c, w in zip(classes, weights)}


def fit_member(cfg: TrainConfig, train: Dataset, val: Dataset, out: Path, backbone: str | None = None,
               seed: int | None = None) -> dict:
    """Train one network into ``out`` and return its validation metrics. Re-running resumes."""
    out.mkdir(parents=True, exist_ok=True)
    backbone = backbone or cfg.backbone
    seed = cfg.seed if seed is None else seed
    if is_complete_run(out):
        return json.loads((out / METRICS_FILE).read_text())
    strategy = make_strategy(cfg.multi_worker)  # first: multi-worker set-up must precede other TF work
    keras.utils.set_random_seed(seed)
    gpus = tf.config.list_physical_devices("GPU")
    if cfg.mixed_precision if cfg.mixed_precision is not None else bool(gpus):
        keras.mixed_precision.set_global_policy("mixed_float16")
    batch_size = cfg.batch_size * strategy.num_replicas_in_sync
    spec = cfg.model_spec(backbone)
    size = training_input_size(spec)

    @functools.cache
    def train_batches(augment: str) -> tuple[tf.data.Dataset, int]:
        return training_dataset(train.images, train.labels, batch_size, augment, cfg.balance, seed, size)

    val_ds = evaluation_dataset(val.images, val.labels, batch_size, size)
    with strategy.scope():
        model = build_pretrained_network(spec, cfg.weights, cfg.l2, input_size=size)
    stages = plan_stages(cfg)
    started = time.monotonic()
    wall_start = time.time()
    unpolished = None
    for k, stage in enumerate(stages):
        if stage.name == "polish" and cfg.snapshot_ensemble:
            unpolished = model.get_weights()  # the previous stage's best epoch
        deadline = None
        if cfg.time_budget_minutes:
            # Share what is left of the budget among the remaining stages, by epochs.
            left = started + cfg.time_budget_minutes * 60 - time.monotonic()
            deadline = time.monotonic() + left * stage.epochs / sum(s.epochs for s in stages[k:])
        run_stage(model, stage, cfg, strategy, *train_batches(stage.augment), val_ds, out,
                  class_weight_for(train.labels) if cfg.class_weights else None, deadline)
    keras.mixed_precision.set_global_policy("float32")
    if cfg.corrects_prior:
        spec = {**spec, "logit_offsets": prior_logit_offsets(train.labels)}
    seconds = time.time() - wall_start
    if unpolished is None:
        return finish_run(model, spec, val, out, train_seconds=seconds)
    snapshots = {"unpolished": unpolished, "polished": model.get_weights()}
    return finish_snapshot_run(model, snapshots, spec, val, out, train_seconds=seconds, seed=seed)


def run_stage(model, stage: Stage, cfg: TrainConfig, strategy, train_ds, steps: int, val_ds, out: Path,
              class_weight: dict | None, deadline: float | None = None) -> None:
    best = out / f".{stage.name}.best.weights.h5"
    done = out / f".{stage.name}.done"
    if done.exists() and best.exists():
        model.load_weights(str(best))
        return
    set_backbone_trainable(model, stage.trainable_top)
    set_head_l2(model, stage.l2)
    with strategy.scope():
        compile_for(model, stage, cfg, steps)
    callbacks = [
        AtomicBackupAndRestore(str(out / ".backup" / stage.name)),  # first: raw weights + EMA state
        keras.callbacks.CSVLogger(str(out / HISTORY_FILE), append=True),
    ]
    if cfg.ema_momentum:  # validation and the best checkpoint see the averaged weights
        callbacks.append(keras.callbacks.SwapEMAWeights(swap_on_epoch=True))
    callbacks.append(PersistentCheckpoint(best))
    if cfg.patience:
        callbacks.append(keras.callbacks.EarlyStopping(monitor="val_accuracy", mode="max", patience=cfg.patience))
    if deadline is not None:
        callbacks.append(TimeBudget(deadline))
    model.fit(train_ds, steps_per_epoch=steps, epochs=stage.epochs, validation_data=val_ds,
              callbacks=callbacks, class_weight=class_weight, shuffle=False, verbose=1 if sys.stdout.isatty() else 2)
    model.load_weights(str(best))
    done.touch()


def training_input_size(spec: dict) -> int | None:
    """Train on images already shrunk to the network's input side when it is below 96 px (cheaper
    augmentation, same weights); None (the 96 px input) otherwise."""
    size = network_input_size(spec)
    return size if size < IMAGE_SHAPE[0] else None


def finish_run(trained: keras.Model, spec: dict, val: Dataset, out: Path, train_seconds: float) -> dict:
    """Write metrics and plots, then the weights and model spec last (their presence marks completion)."""
    out.mkdir(parents=True, exist_ok=True)
    model = build_network(spec)  # the shipping network (96 px input), with the trained weights
    model.set_weights(trained.get_weights())
    metrics = write_validation(TTAEnsemble([model]).predict_proba(val.images), val, out, train_seconds,
                               spec["backbone"])
    with atomic_output(out / WEIGHTS_FILE) as tmp:
        save_weights(model, str(tmp))
    write_json(out / MODEL_SPEC_FILE, {**spec, "format": "bcsub-weights-v1",
                                        "keras_version": keras.__version__})
    return metrics


def finish_snapshot_run(trained: keras.Model, snapshots: dict[str, list], spec: dict, val: Dataset, out: Path,
                        train_seconds: float, seed: int) -> dict:
    """A snapshot ensemble: one complete run per set of weights in a sub-folder, the metrics of their
    average here, and ``ensemble.json`` last (it marks completion; ``bcsub package`` reads it)."""
    members = []
    for name, weights in snapshots.items():
        trained.set_weights(weights)
        members.append(MemberResult(name, spec["backbone"], seed, finish_run(trained, spec, val, out / name,
                                                                            train_seconds)))
    probs = np.mean([read_val_probs(out / name) for name in snapshots], axis=0)
    metrics = write_validation(probs, val, out, train_seconds, f"{spec['backbone']} snapshot ensemble")
    write_ensemble(out, members)
    return metrics


def write_validation(probs: np.ndarray, val: Dataset, out: Path, train_seconds: float, title: str) -> dict:
    """Metrics, validation predictions, confusion matrix and learning curves of a finished run."""
    metrics = {**score(val.labels, probs.argmax(axis=1)), "train_seconds": train_seconds}
    write_json(out / METRICS_FILE, metrics)
    with atomic_output(out / VAL_PREDICTIONS_FILE) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, probs=probs, labels=val.labels)
    plot_confusion(metrics["confusion"], out / "confusion.png", f"{title} validation: acc {metrics['accuracy']:.3f}")
    if (out / HISTORY_FILE).exists():
        plot_curves(out / HISTORY_FILE, out / "curves.png")
    return metrics
