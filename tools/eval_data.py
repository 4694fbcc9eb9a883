"""The validation images `bcsub package` chooses TTA on: --val, else the images the members recorded as
their validation split (``split.json``), loaded from the recorded file and refused when its content changed.
Never re-derived from the settings."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from train.data import Dataset, load_dataset, stratified_sample
from train.planner import PLAN_FILE
from train.runs import Member
from train.splits import read_split

MAX_EVAL_IMAGES = 800
MIN_EVAL_IMAGES = 200  # a time plan's share never leaves fewer (to a few: the sample rounds per class)


@dataclass
class EvalData:
    """Labelled images, where they came from, and ``usable`` (members, n): whether member m never trained
    on image i (None: every member may predict every image)."""

    data: Dataset
    source: str
    usable: np.ndarray | None = None

    def capped(self, limit: int, seed: int) -> EvalData:
        """A stratified sample of at most ``limit`` images (the mask follows)."""
        pick = stratified_sample(self.data.labels, limit, seed)
        usable = None if self.usable is None else self.usable[:, pick]
        return EvalData(self.data.subset(pick), self.source, usable)


def validation_data(members: list[Member], val: str | None, seed: int,
                    share: float = 1.0) -> tuple[EvalData | None, str | None]:
    """The data to choose TTA on (a stratified ``share`` of at most ``MAX_EVAL_IMAGES``, never fewer than
    ``MIN_EVAL_IMAGES``), or None and the reason (a note for the user)."""
    if val:
        found: EvalData | None = EvalData(load_dataset(val, require_all_classes=False), f"--val {val}")
        reason = None
    else:
        found, reason = recorded_validation(members)
    if found is None:
        return None, reason
    limit = min(len(found.data), MAX_EVAL_IMAGES)
    return found.capped(max(MIN_EVAL_IMAGES, round(share * limit)), seed), reason


def planned_selection_share(run_dirs: list[str]) -> float:
    """The share of the validation images the runs' time plans (``plan.json``, ``tta_selection_share``) left
    time to choose the TTA on: the smallest over the runs, 1.0 without a plan."""
    shares = [float(json.loads(path.read_text()).get("tta_selection_share", 1.0))
              for run_dir in run_dirs for path in Path(run_dir).glob(f"**/{PLAN_FILE}")]
    return min(shares, default=1.0)


def recorded_validation(members: list[Member]) -> tuple[EvalData | None, str | None]:
    """The union of the members' recorded validation images, each usable by the members that did not train
    on it (a --folds run: the one member whose fold it is)."""
    splits = [read_split(member.run_dir) for member in members]
    missing = [str(m.run_dir) for m, split in zip(members, splits) if split is None]
    if missing:
        return None, (f"{missing[0]} recorded no validation split (trained before bcsub recorded one): pass --val "
                      "VAL.npz to choose TTA on validation data")
    files = {split.val_file for split in splits}
    if len(files) > 1:
        return None, ("the members were validated on different data files: pass --val VAL.npz to choose TTA on "
                      "one set")
    val_file = files.pop()
    positions = np.unique(np.concatenate([split.val for split in splits]))
    usable = np.stack([~np.isin(positions, split.train) if split.data == val_file else np.ones(len(positions), bool)
                       for split in splits])
    data = val_file.load().subset(positions)
    return EvalData(data, f"the recorded validation split ({val_file.path})", None if usable.all() else usable), None
