"""`bcsub train` from a ``TrainConfig``: check the run dir, prepare the data, then fit one network, K
members (seeds or backbones) or K folds, each with ``fit_member``, and write the ensemble."""

from __future__ import annotations

import dataclasses
import hashlib
import shutil
from pathlib import Path

import numpy as np

from submission.model import NUM_CLASSES
from train.atomic import write_json
from train.config import TrainConfig
from train.data import Dataset, load_dataset, stratified_split, stratified_subsample
from train.errors import BcsubError
from train.fit import fit_member
from train.metrics import score
from train.multiworker import lost_workers_fail_clearly, read_tf_config, worker_out
from train.planner import BudgetShare
from train.runs import (
    CLEANING_FILE,
    CONFIG_FILE,
    OOF_PREDICTIONS_FILE,
    SPLIT_FILE,
    MemberResult,
    read_val_probs,
    write_ensemble,
)


def run_training(cfg: TrainConfig) -> list[MemberResult]:
    """Train what ``cfg`` asks for into ``cfg.out``; re-running the same command resumes. With
    ``--multi-worker`` only the chief writes ``cfg.out``; another worker trains in a scratch folder next to
    it (see ``train/multiworker.py``) and deletes it once done."""
    if not cfg.multi_worker:
        return _train(cfg)
    task = read_tf_config()
    with lost_workers_fail_clearly():
        if task.is_chief:
            return _train(cfg)
        scratch = worker_out(cfg.out, task)
        results = _train(dataclasses.replace(cfg, out=scratch))
    shutil.rmtree(scratch, ignore_errors=True)
    return results


def _train(cfg: TrainConfig) -> list[MemberResult]:
    out = Path(cfg.out)
    check_resumable(cfg, out)
    write_json(out / CONFIG_FILE, cfg.to_json())
    train, val = prepare_data(cfg)
    if cfg.folds:
        return _train_folds(cfg, train, out)
    if val is None:
        train, val = stratified_split(train, cfg.val_fraction, cfg.seed)
    n_members = max(cfg.members, len(cfg.backbones))
    budget = BudgetShare(cfg.time_budget_minutes)
    if n_members == 1:
        return [_fit(cfg, out, ".", cfg.backbone, cfg.seed, train, val, budget.next(1))]
    results = [_fit(cfg, out, f"member_{k}", cfg.backbones[k % len(cfg.backbones)], cfg.seed + k, train, val,
                    budget.next(n_members - k))
               for k in range(n_members)]
    write_ensemble(out, results)
    return results


def check_resumable(cfg: TrainConfig, out: Path) -> None:
    """Refuse to resume into a run dir that was made with a different configuration."""
    saved = out / CONFIG_FILE
    if not saved.is_file():
        return
    previous = TrainConfig.load(saved).to_json()
    current = cfg.to_json()
    differing = sorted(k for k in current if k not in ("backbone", "seed") and previous.get(k) != current[k])
    if differing:
        raise BcsubError(
            f"{out}: holds a run with other settings ({', '.join(differing)}); choose another --out "
            "or delete the folder"
        )


def prepare_data(cfg: TrainConfig) -> tuple[Dataset, Dataset | None]:
    """Load (and optionally clean and subsample) the training data and the validation data."""
    train = load_dataset(cfg.data)
    if cfg.clean:
        train = clean_dataset(train, Path(cfg.out))
    if cfg.limit:
        train = stratified_subsample(train, cfg.limit, cfg.seed)
    val = None
    if cfg.val:
        val = load_dataset(cfg.val, require_all_classes=False)
        if cfg.limit:
            val = stratified_subsample(val, max(64, cfg.limit // 4), cfg.seed)
    return train, val


def clean_dataset(dataset: Dataset, out: Path) -> Dataset:
    """Drop outliers and duplicate copies (see `bcsub inspect`), writing what was removed."""
    from train.cleaning import inspect_arrays, plan_cleaning

    result = inspect_arrays(dataset.images, dataset.labels)
    plan = plan_cleaning(result, dataset.labels, len(dataset.labels))
    write_json(out / CLEANING_FILE, {"source": dataset.source, "kept": int(plan.keep.sum()),
                                     "removed": plan.removed})
    return dataset.subset(np.flatnonzero(plan.keep))


def _fit(cfg: TrainConfig, out: Path, name: str, backbone: str, seed: int, train: Dataset,
         val: Dataset, budget_s: float | None = None) -> MemberResult:
    """Fit one member into ``out / name``; a member folder gets its own ``config.json`` (its backbone
    and seed), the run dir's is written once by ``run_training``."""
    member_dir = out / name
    if name != ".":
        write_json(member_dir / CONFIG_FILE, {**cfg.to_json(), "backbone": backbone, "seed": seed})
    metrics = fit_member(cfg, train, val, member_dir, backbone=backbone, seed=seed, budget_s=budget_s)
    return MemberResult(name, backbone, seed, metrics)


def fold_splits(labels: np.ndarray, folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified k-fold (train, validation) index pairs; every image is validated exactly once."""
    from sklearn.model_selection import StratifiedKFold

    if np.bincount(labels).min() < folds:
        raise BcsubError(f"--folds {folds}: a class has fewer than {folds} images; use fewer folds or more data")
    splitter = StratifiedKFold(folds, shuffle=True, random_state=seed)
    return list(splitter.split(np.zeros(len(labels)), labels))


def split_record(data: Dataset, splits: list[tuple[np.ndarray, np.ndarray]], cfg: TrainConfig) -> dict:
    """``split.json``: what makes two k-fold runs (e.g. one fold per machine) share one split."""
    return {"folds": cfg.folds, "fold": cfg.fold, "seed": cfg.seed, "data": data.source, "n_images": len(data),
            "labels_sha256": hashlib.sha256(np.ascontiguousarray(data.labels, np.int64).tobytes()).hexdigest(),
            "val_indices": [val.tolist() for _, val in splits]}


def _train_folds(cfg: TrainConfig, data: Dataset, out: Path) -> list[MemberResult]:
    """Stratified k-fold: member k validates on fold k; out-of-fold predictions are saved. With ``--fold I``
    the run dir is fold I alone (seed + I, like fold I of the whole run)."""
    splits = fold_splits(data.labels, cfg.folds, cfg.seed)
    write_json(out / SPLIT_FILE, split_record(data, splits, cfg))
    if cfg.fold is not None:
        train_idx, val_idx = splits[cfg.fold]
        return [_fit(cfg, out, ".", cfg.backbones[cfg.fold % len(cfg.backbones)], cfg.seed + cfg.fold,
                     data.subset(train_idx), data.subset(val_idx))]
    oof = np.zeros((len(data), NUM_CLASSES), np.float32)
    results = []
    budget = BudgetShare(cfg.time_budget_minutes)
    for k, (train_idx, val_idx) in enumerate(splits):
        result = _fit(cfg, out, f"fold_{k}", cfg.backbones[k % len(cfg.backbones)], cfg.seed + k,
                      data.subset(train_idx), data.subset(val_idx), budget.next(cfg.folds - k))
        oof[val_idx] = read_val_probs(out / result.name)
        results.append(result)
    np.savez(out / OOF_PREDICTIONS_FILE, probs=oof, labels=data.labels)
    write_ensemble(out, results, oof_metrics=score(data.labels, oof.argmax(axis=1)))
    return results
