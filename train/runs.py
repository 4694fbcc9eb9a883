"""Run dirs: the files a finished run holds (``finish_run`` writes them, the ones that mark completion
last), how to tell a finished run, and how packaging finds the members in one."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from submission.model import WEIGHTS_FORMAT, TTAEnsemble, assign_weights, build_network, save_weights
from train.atomic import atomic_output, write_json, write_text
from train.callbacks import write_png_summary
from train.data import Dataset
from train.errors import BcsubError
from train.metrics import score
from train.pipeline import resize_batch
from train.plots import plot_confusion, plot_curves
from train.precision import float32_compute
from train.splits import SPLIT_FILE

CONFIG_FILE = "config.json"
HISTORY_FILE = "history.csv"
MODEL_SPEC_FILE = "model.json"
WEIGHTS_FILE = "weights.npz"
METRICS_FILE = "metrics.json"
ENSEMBLE_FILE = "ensemble.json"
VAL_PREDICTIONS_FILE = "val_predictions.npz"
OOF_PREDICTIONS_FILE = "oof_predictions.npz"
CLEANING_FILE = "cleaning.json"
SIDE_FILE = "side.json"  # --auto-image-size: the probe and the side it chose (train/side.py)
TENSORBOARD_DIR = "tb"
EQUIVALENCE_FILE = "equivalence.npz"
# Validation images whose training-graph probabilities a run keeps (with the images) for `bcsub package`.
EQUIVALENCE_IMAGES = 128
# Runs written before model.json recorded the preprocessing: the from-scratch nets then scaled to [0, 1].
LEGACY_PREPROCESSING = {"tinycnn": "unit", "resnet-small": "unit"}


def is_complete_run(path: Path) -> bool:
    """A run is complete once its model spec is written (the last file ``train`` writes), a snapshot
    ensemble once its ``ensemble.json`` is."""
    if (path / ENSEMBLE_FILE).is_file() and (path / METRICS_FILE).is_file():
        return True
    return all((path / name).is_file() for name in (MODEL_SPEC_FILE, WEIGHTS_FILE, METRICS_FILE))


def read_metrics(run_dir: Path) -> dict:
    """The validation metrics a finished run saved."""
    return json.loads((run_dir / METRICS_FILE).read_text())


def read_val_probs(run_dir: Path) -> np.ndarray:
    """The validation softmax (n, classes) a finished run saved."""
    with np.load(run_dir / VAL_PREDICTIONS_FILE, allow_pickle=False) as saved:
        return saved["probs"]


def read_equivalence(run_dir: Path) -> dict[str, np.ndarray] | None:
    """What ``write_equivalence`` saved (images, labels, probs, index), or None for a run trained before."""
    path = run_dir / EQUIVALENCE_FILE
    if not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as saved:
        return {key: saved[key] for key in saved.files}


def write_equivalence(trained: keras.Model, val: Dataset, out: Path, logit_offsets: list[float] | None = None) -> Path:
    """The training graph's own softmax (the identity view, at the input size it trained on, in float32) on
    up to ``EQUIVALENCE_IMAGES`` validation images spread over the set, saved with those images: `bcsub
    package` checks that the network it ships computes the same. ``logit_offsets``: the prior correction
    the shipped spec adds to the logits, applied here exactly (softmax(z + o) = p * exp(o), renormalised)."""
    pick = np.unique(np.linspace(0, len(val) - 1, min(len(val), EQUIVALENCE_IMAGES)).round().astype(int))
    images = val.images[pick]
    x = resize_batch(images, trained.input_shape[1])
    with float32_compute(trained):  # called directly, not through predict: no distribution strategy involved
        probs = np.concatenate([np.asarray(trained(x[k:k + 64], training=False), np.float64)
                                for k in range(0, len(images), 64)])
    if logit_offsets:
        probs = probs * np.exp(np.asarray(logit_offsets, np.float64))
        probs /= probs.sum(axis=1, keepdims=True)
    with atomic_output(out / EQUIVALENCE_FILE) as tmp, open(tmp, "wb") as handle:
        np.savez_compressed(handle, images=images, labels=val.labels[pick], probs=probs.astype(np.float32),
                            index=val.index[pick])
    return out / EQUIVALENCE_FILE


@dataclass
class MemberResult:
    """One trained member of a run: its folder (relative to the run dir) and validation metrics."""

    name: str
    backbone: str
    seed: int
    metrics: dict


def write_ensemble(out: Path, results: list[MemberResult], oof_metrics: dict | None = None) -> None:
    """``ensemble.json`` (the complete members and their scores), written last: it marks completion."""
    members = [r.name for r in results if is_complete_run(out / r.name)]
    summary = {"members": members,
               "member_metrics": {r.name: {"backbone": r.backbone, "seed": r.seed,
                                           "accuracy": r.metrics["accuracy"],
                                           "macro_f1": r.metrics["macro_f1"]} for r in results}}
    if oof_metrics:
        summary["oof_metrics"] = oof_metrics
        write_json(out / METRICS_FILE, oof_metrics)
    write_json(out / ENSEMBLE_FILE, summary)


def finish_run(trained: keras.Model, spec: dict, val: Dataset, out: Path, train_seconds: float) -> dict:
    """Write metrics, plots and the training graph's reference probabilities, then the weights and model
    spec last (their presence marks completion)."""
    out.mkdir(parents=True, exist_ok=True)
    write_equivalence(trained, val, out, spec.get("logit_offsets"))
    model = build_network(spec)  # the shipping network (96 px input), with the trained weights
    assign_weights(model, trained.get_weights())
    metrics = write_validation(TTAEnsemble([model]).predict_proba(val.images), val, out, train_seconds,
                               spec["backbone"])
    with atomic_output(out / WEIGHTS_FILE) as tmp:
        save_weights(model, str(tmp))
    write_json(out / MODEL_SPEC_FILE, {**spec, "format": WEIGHTS_FORMAT, "keras_version": keras.__version__})
    return metrics


def finish_snapshot_run(trained: keras.Model, snapshots: dict[str, list], spec: dict, val: Dataset, out: Path,
                        train_seconds: float, seed: int) -> dict:
    """A snapshot ensemble: one complete run per set of weights in a sub-folder, the metrics of their
    average here, and ``ensemble.json`` last (it marks completion; ``bcsub package`` reads it)."""
    members = []
    for name, weights in snapshots.items():
        assign_weights(trained, weights)
        if (out / SPLIT_FILE).is_file():  # each snapshot is a complete run, with the split it trained on
            write_text(out / name / SPLIT_FILE, (out / SPLIT_FILE).read_text())
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
    confusion = plot_confusion(metrics["confusion"], out / "confusion.png",
                               f"{title} validation: acc {metrics['accuracy']:.3f}")
    write_png_summary(out / TENSORBOARD_DIR / "final", "validation confusion matrix", confusion)
    if (out / HISTORY_FILE).exists():
        plot_curves(out / HISTORY_FILE, out / "curves.png")
    return metrics


@dataclass(frozen=True)
class Member:
    """One trained network: where its weights are and how to rebuild it."""

    run_dir: Path
    spec: dict
    val_accuracy: float

    @property
    def weights_path(self) -> Path:
        return self.run_dir / WEIGHTS_FILE


def find_members(run_dir: str | Path) -> list[Member]:
    """The members of a single run or of an ensemble dir (``ensemble.json``)."""
    path = Path(run_dir)
    if not path.is_dir():
        raise BcsubError(f"{path}: not a folder; pass the --out folder of `bcsub train`")
    if (path / ENSEMBLE_FILE).is_file():
        names = json.loads((path / ENSEMBLE_FILE).read_text())["members"]
        return [member for name in names for member in find_members(path / name)]
    if not is_complete_run(path):
        if (path / CONFIG_FILE).is_file():
            raise BcsubError(
                f"{path}: the training run did not finish (no {MODEL_SPEC_FILE}/{WEIGHTS_FILE}); "
                "re-run the same `bcsub train` command to resume it"
            )
        raise BcsubError(f"{path}: not a bcsub run dir (no {MODEL_SPEC_FILE}); pass the --out folder of "
                         "`bcsub train`")
    spec = json.loads((path / MODEL_SPEC_FILE).read_text())
    if "preprocessing" not in spec and spec.get("backbone") in LEGACY_PREPROCESSING:
        spec["preprocessing"] = LEGACY_PREPROCESSING[spec["backbone"]]
    return [Member(path, spec, float(read_metrics(path).get("accuracy", 0.0)))]
