"""`bcsub train` from a ``TrainConfig``: check every input and plan the members and their splits (nothing
written yet), then write the run dir: config, cleaning record, split, and one network, K members (seeds or
backbones), K folds or one fold (``--fold I``), each with ``fit_member``, and the ensemble."""

from __future__ import annotations

import dataclasses
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from submission.model import NUM_CLASSES
from train.atomic import write_json
from train.backbones import resolve_weights
from train.config import TrainConfig
from train.data import Dataset, load_dataset, stratified_split, stratified_subsample
from train.devices import gpu_count
from train.errors import BcsubError
from train.fit import fit_member
from train.metrics import score
from train.multiworker import lost_workers_fail_clearly, read_tf_config, worker_out
from train.planner import BudgetShare
from train.runs import CLEANING_FILE, CONFIG_FILE, OOF_PREDICTIONS_FILE, MemberResult, read_val_probs, write_ensemble
from train.splits import DataFile, Split, check_same_split, write_fold_splits, write_split


@dataclass
class PreparedData:
    """The training data (cleaned and subsampled as asked), the validation data when --val gave it, the
    files they came from, and what cleaning removed."""

    train: Dataset
    val: Dataset | None
    data_file: DataFile
    val_file: DataFile | None
    cleaning: dict | None = None


@dataclass
class MemberPlan:
    """One network to fit: its folder (relative to the run dir), backbone, seed and split."""

    name: str
    backbone: str
    seed: int
    train: Dataset
    val: Dataset
    split: Split
    val_positions: np.ndarray | None = None  # a fold's validation images, as positions in the training data


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
    budget = BudgetShare(cfg.time_budget_minutes)  # the members share the time budget (data preparation too)
    check_resumable(cfg, out)
    for backbone in cfg.backbones:
        resolve_weights(cfg.weights, backbone)
    warn_gpu_recipe_on_cpu(cfg)
    data = prepare_data(cfg)
    plans = plan_members(cfg, data)
    for plan in plans:
        check_same_split(out / plan.name, plan.split)
    write_json(out / CONFIG_FILE, cfg.to_json())
    if data.cleaning is not None:
        write_json(out / CLEANING_FILE, data.cleaning)
    if cfg.folds and cfg.fold is None:
        write_fold_splits(out, [plan.split for plan in plans])
    else:
        write_split(out, plans[0].split)
    results = []
    for k, plan in enumerate(plans):
        results.append(_fit(cfg, out, plan, budget.next(len(plans) - k)))
        budget.keep(out / plan.name)
    if cfg.folds and cfg.fold is None:
        _write_oof(out, data.train, plans, results)
    elif len(plans) > 1:
        write_ensemble(out, results)
    return results


def warn_gpu_recipe_on_cpu(cfg: TrainConfig, gpus: int | None = None) -> bool:
    """Say at once when `--preset gpu` starts on a machine without a GPU (e.g. a notebook whose GPU runtime is
    off): its EfficientNetV2S ensemble at 224 px would train for more than a day. Returns whether it warned."""
    if cfg.preset != "gpu" or (gpus if gpus is not None else gpu_count()):
        return False
    print("warning: --preset gpu, but TensorFlow sees no GPU: this recipe would train for more than a day on a CPU "
          "(fine-tuning EfficientNetV2S at 224 px ran at 6 images/s on 2 cores). In a notebook, switch the runtime "
          "to a GPU (Colab: Runtime > Change runtime type) and restart; on a CPU, --preset cpu trains from scratch "
          "in 30 minutes", file=sys.stderr, flush=True)
    return True


def check_resumable(cfg: TrainConfig, out: Path) -> None:
    """Refuse an --out that is a file, or a run dir that was made with a different configuration."""
    if out.exists() and not out.is_dir():
        raise BcsubError(f"--out {out}: is a file; pass a folder for the run")
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


def prepare_data(cfg: TrainConfig) -> PreparedData:
    """Load and check the training data (then clean and subsample it) and the validation data."""
    full = load_dataset(cfg.data)
    train, cleaning = clean_dataset(full) if cfg.clean else (full, None)
    if cfg.limit:
        train = stratified_subsample(train, cfg.limit, cfg.seed)
    val = val_file = None
    if cfg.val:
        val = load_dataset(cfg.val, require_all_classes=False)
        val_file = DataFile.of(val)
        if cfg.limit:
            val = stratified_subsample(val, max(64, cfg.limit // 4), cfg.seed)
    return PreparedData(train, val, DataFile.of(full), val_file, cleaning)


def clean_dataset(dataset: Dataset) -> tuple[Dataset, dict]:
    """Drop outliers and duplicate copies (see `bcsub inspect`); returns what was kept and a record of
    what was removed (written to the run dir once every input is checked)."""
    from train.cleaning import inspect_arrays, plan_cleaning

    result = inspect_arrays(dataset.images, dataset.labels)
    plan = plan_cleaning(result, dataset.labels, len(dataset.labels))
    record = {"source": dataset.source, "kept": int(plan.keep.sum()), "removed": plan.removed}
    return dataset.subset(np.flatnonzero(plan.keep)), record


def plan_members(cfg: TrainConfig, data: PreparedData) -> list[MemberPlan]:
    """The networks to fit and the split of each: K folds (or fold I alone, in the run dir, seed + I as in
    the whole run), or one split shared by one network or K members."""
    if cfg.folds:
        folds = fold_splits(data.train.labels, cfg.folds, cfg.seed)
        partition = [data.train.index[val_idx] for _, val_idx in folds]  # the same on every machine
        plans = []
        for k, (train_idx, val_idx) in enumerate(folds):
            train, val = data.train.subset(train_idx), data.train.subset(val_idx)
            name = "." if cfg.fold is not None else f"fold_{k}"
            plans.append(MemberPlan(name, cfg.backbones[k % len(cfg.backbones)], cfg.seed + k, train, val,
                                    Split(data.data_file, None, train.index, val.index, k, partition), val_idx))
        return plans if cfg.fold is None else [plans[cfg.fold]]
    train, val = data.train, data.val
    if val is None:
        train, val = stratified_split(train, cfg.val_fraction, cfg.seed)
    split = Split(data.data_file, data.val_file, train.index, val.index)
    n_members = max(cfg.members, len(cfg.backbones))
    if n_members == 1:
        return [MemberPlan(".", cfg.backbone, cfg.seed, train, val, split)]
    return [MemberPlan(f"member_{k}", cfg.backbones[k % len(cfg.backbones)], cfg.seed + k, train, val, split)
            for k in range(n_members)]


def _fit(cfg: TrainConfig, out: Path, plan: MemberPlan, budget_s: float | None = None) -> MemberResult:
    """Fit one member into ``out / plan.name``; a member folder gets its own ``config.json`` (its backbone
    and seed) and ``split.json``, the run dir's are written once by ``run_training``."""
    member_dir = out / plan.name
    if plan.name != ".":
        write_json(member_dir / CONFIG_FILE, {**cfg.to_json(), "backbone": plan.backbone, "seed": plan.seed})
        write_split(member_dir, plan.split)
    metrics = fit_member(cfg, plan.train, plan.val, member_dir, backbone=plan.backbone, seed=plan.seed,
                         budget_s=budget_s)
    return MemberResult(plan.name, plan.backbone, plan.seed, metrics)


def fold_splits(labels: np.ndarray, folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified k-fold (train, validation) index pairs; every image is validated exactly once."""
    from sklearn.model_selection import StratifiedKFold

    if np.bincount(labels).min() < folds:
        raise BcsubError(f"--folds {folds}: a class has fewer than {folds} images; use fewer folds or more data")
    splitter = StratifiedKFold(folds, shuffle=True, random_state=seed)
    return list(splitter.split(np.zeros(len(labels)), labels))


def _write_oof(out: Path, data: Dataset, plans: list[MemberPlan], results: list[MemberResult]) -> None:
    """Out-of-fold predictions (member k predicts fold k) and the ensemble with their metrics."""
    oof = np.zeros((len(data), NUM_CLASSES), np.float32)
    for plan in plans:
        oof[plan.val_positions] = read_val_probs(out / plan.name)
    np.savez(out / OOF_PREDICTIONS_FILE, probs=oof, labels=data.labels)
    write_ensemble(out, results, oof_metrics=score(data.labels, oof.argmax(axis=1)))
