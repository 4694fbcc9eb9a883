"""The split a run trained and validated on, recorded as nnU-Net records ``splits_final.json``: which images
of which data file (named by path and identified by a hash of its content) were training and which were
validation images. `bcsub package` uses exactly those images, and refuses data that changed since."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from train.atomic import write_text
from train.data import Dataset, load_dataset
from train.errors import BcsubError

SPLIT_FILE = "split.json"
SPLIT_FORMAT = "bcsub-split-v1"


def content_sha256(dataset: Dataset) -> str:
    """A hash of the images and labels as loaded (the same for a re-saved or moved copy of the data)."""
    digest = hashlib.sha256()
    digest.update(json.dumps([list(dataset.images.shape), str(dataset.images.dtype)]).encode())
    digest.update(np.ascontiguousarray(dataset.images).data)
    digest.update(np.ascontiguousarray(dataset.labels, dtype="<i8").data)
    return digest.hexdigest()


@dataclass(frozen=True)
class DataFile:
    """A data file (or class-folder tree) as it was when a run used it."""

    path: str
    sha256: str
    n: int

    @classmethod
    def of(cls, dataset: Dataset) -> DataFile:
        """``dataset`` as loaded whole from its file (before cleaning or subsampling)."""
        return cls(str(Path(dataset.source).resolve()), content_sha256(dataset), len(dataset))

    def load(self) -> Dataset:
        """The data again; a clear error when it is gone or its content changed."""
        if not Path(self.path).exists():
            raise BcsubError(f"{self.path}: the data this run was split from is gone; restore it, or pass "
                             "--val VAL.npz (or an explicit --tta) to `bcsub package`")
        dataset = load_dataset(self.path, require_all_classes=False)
        if len(dataset) != self.n or content_sha256(dataset) != self.sha256:
            raise BcsubError(f"{self.path}: changed since the run was trained ({len(dataset)} images now, {self.n} "
                             "then, or other content): its recorded validation images are no longer the ones it "
                             "validated on; restore the original file, or pass --val VAL.npz to `bcsub package`")
        return dataset

    def to_json(self) -> dict:
        return {"path": self.path, "sha256": self.sha256, "n": self.n}


@dataclass
class Split:
    """Positions of the training images in ``data`` and of the validation images in ``val_data`` (a
    separate validation file) or, when that is None, in ``data`` (a held-out part or a fold). A fold
    of a k-fold split also records its number and every fold's validation positions (``folds``), which
    are the same for every fold of the split, on any machine."""

    data: DataFile
    val_data: DataFile | None
    train: np.ndarray
    val: np.ndarray
    fold: int | None = None
    folds: list[np.ndarray] | None = None

    @property
    def val_file(self) -> DataFile:
        return self.val_data or self.data

    def to_json(self) -> dict:
        raw = {"format": SPLIT_FORMAT, "data": self.data.to_json(),
               "val_data": self.val_data.to_json() if self.val_data else None,
               "train": self.train.tolist(), "val": self.val.tolist()}
        if self.folds is not None:
            raw |= {"fold": self.fold, "folds": [f.tolist() for f in self.folds]}
        return raw

    @classmethod
    def from_json(cls, raw: dict) -> Split:
        folds = [np.asarray(f, np.int64) for f in raw["folds"]] if raw.get("folds") is not None else None
        return cls(DataFile(**raw["data"]), DataFile(**raw["val_data"]) if raw.get("val_data") else None,
                   np.asarray(raw["train"], np.int64), np.asarray(raw["val"], np.int64), raw.get("fold"), folds)

    def same_as(self, other: Split) -> bool:
        return self.to_json() == other.to_json()


def _write(path: Path, raw: dict) -> Path:
    """One key a line (the index lists stay on theirs)."""
    return write_text(path, "{\n" + ",\n".join(f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in raw.items()) + "\n}\n")


def write_split(folder: Path, split: Split) -> Path:
    return _write(folder / SPLIT_FILE, split.to_json())


def write_fold_splits(folder: Path, splits: list[Split]) -> Path:
    """The run dir of a ``--folds`` run: every fold's validation positions (each fold folder has its split)."""
    return _write(folder / SPLIT_FILE, {"format": SPLIT_FORMAT, "data": splits[0].data.to_json(), "val_data": None,
                                        "folds": [s.val.tolist() for s in splits]})


def read_split(folder: Path) -> Split | None:
    """The split recorded in ``folder`` (a member's folder), or None for a run trained before bcsub
    recorded member splits."""
    path = folder / SPLIT_FILE
    raw = json.loads(path.read_text()) if path.is_file() else {}
    return Split.from_json(raw) if raw.get("format") == SPLIT_FORMAT and "val" in raw else None


def split_key(folder: Path) -> str | None:
    """A short name of the split recorded in ``folder`` (run dir or member): the same for every run on
    the same data and validation images, and for every fold of one k-fold split; None without one."""
    path = folder / SPLIT_FILE
    raw = json.loads(path.read_text()) if path.is_file() else {}
    if raw.get("format") != SPLIT_FORMAT:
        return None
    held_out = raw.get("folds") if raw.get("folds") is not None else raw.get("val")
    key = json.dumps([raw["data"]["sha256"], (raw.get("val_data") or {}).get("sha256"), held_out])
    return hashlib.sha256(key.encode()).hexdigest()[:8]


def check_same_split(folder: Path, split: Split) -> None:
    """Refuse to resume a run on a split other than the one it started on (the data changed)."""
    recorded = read_split(folder) if (folder / SPLIT_FILE).is_file() else None
    if recorded is not None and not recorded.same_as(split):
        raise BcsubError(f"{folder}: was started on other data or another split ({folder / SPLIT_FILE}); restore "
                         "the data it was started on, or choose another --out")
