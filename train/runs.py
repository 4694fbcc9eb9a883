"""Run dirs: what a finished run holds, and how packaging finds the members in one."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from train.atomic import write_json
from train.errors import BcsubError

CONFIG_FILE = "config.json"
HISTORY_FILE = "history.csv"
MODEL_SPEC_FILE = "model.json"
WEIGHTS_FILE = "weights.npz"
METRICS_FILE = "metrics.json"
ENSEMBLE_FILE = "ensemble.json"
VAL_PREDICTIONS_FILE = "val_predictions.npz"
OOF_PREDICTIONS_FILE = "oof_predictions.npz"
CLEANING_FILE = "cleaning.json"
# Runs written before model.json recorded the preprocessing: the from-scratch nets then scaled to [0, 1].
LEGACY_PREPROCESSING = {"tinycnn": "unit", "resnet-small": "unit"}


def is_complete_run(path: Path) -> bool:
    """A run is complete once its model spec is written (the last file ``train`` writes), a snapshot
    ensemble once its ``ensemble.json`` is."""
    if (path / ENSEMBLE_FILE).is_file() and (path / METRICS_FILE).is_file():
        return True
    return all((path / name).is_file() for name in (MODEL_SPEC_FILE, WEIGHTS_FILE, METRICS_FILE))


def read_val_probs(run_dir: Path) -> np.ndarray:
    """The validation softmax (n, classes) a finished run saved."""
    with np.load(run_dir / VAL_PREDICTIONS_FILE, allow_pickle=False) as saved:
        return saved["probs"]


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
    metrics = json.loads((path / METRICS_FILE).read_text())
    return [Member(path, spec, float(metrics.get("accuracy", 0.0)))]
