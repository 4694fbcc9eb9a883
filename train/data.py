"""Load, validate, subsample and split blood-cell datasets.

Accepted inputs:
- AN2DL npz: ``images`` uint8 (N, 96, 96, 3), ``labels`` (N, 1);
- PBC96 npz (``../shared/data``): the same with ``labels`` (N,);
- a folder with one sub-folder per class (``0``..``7`` or class names) of PNG/JPG files.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from submission.model import CLASS_NAMES, IMAGE_SHAPE, NUM_CLASSES, pixel_problem
from train.atomic import atomic_output
from train.errors import BcsubError

LABEL_RANGE = f"0..{NUM_CLASSES - 1}"
# Folder names seen in PBC and AN2DL copies, mapped to labels.
FOLDER_ALIASES = {
    **{str(i): i for i in range(NUM_CLASSES)},
    **{name: i for i, name in enumerate(CLASS_NAMES)},
    "ig": 3,
    "immature_granulocyte": 3,
    "immature granulocytes": 3,
}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}


@dataclass
class Dataset:
    """Images (N, 96, 96, 3) uint8 with labels (N,) int64; ``index``: where each image is in ``source``
    (kept through ``subset``, so a split can be recorded as positions in the file)."""

    images: np.ndarray
    labels: np.ndarray
    source: str
    index: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.index is None:
            self.index = np.arange(len(self.labels))

    def __len__(self) -> int:
        return len(self.labels)

    def class_counts(self) -> np.ndarray:
        return np.bincount(self.labels, minlength=NUM_CLASSES)

    def subset(self, index: np.ndarray) -> Dataset:
        return Dataset(self.images[index], self.labels[index], self.source, self.index[index])


def load_dataset(path: str | Path, require_all_classes: bool = True) -> Dataset:
    """Load an npz file or a class-folder tree and validate it."""
    path = Path(path)
    if not path.exists():
        raise BcsubError(f"{path}: no such file or folder; check the path (e.g. ../shared/data/pbc96_train.npz)")
    if path.is_dir():
        images, labels = _load_folder(path)
    else:
        images, labels = _load_npz(path)
    dataset = Dataset(images, labels, str(path))
    validate(dataset, require_all_classes=require_all_classes)
    return dataset


def _load_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as data:
            keys = set(data.files)
            if not {"images", "labels"} <= keys:
                raise BcsubError(
                    f"{path}: npz has keys {sorted(keys)}, expected 'images' and 'labels'; "
                    "save it with np.savez(path, images=X, labels=y)"
                )
            images, labels = data["images"], data["labels"]
    except BcsubError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
        raise BcsubError(
            f"{path}: not a readable npz file ({err.__class__.__name__}: {err}); "
            "re-download or re-create it with np.savez"
        ) from None
    return images, labels


def _load_folder(path: Path) -> tuple[np.ndarray, np.ndarray]:
    images: list[np.ndarray] = []
    labels: list[int] = []
    class_dirs = sorted(p for p in path.iterdir() if p.is_dir())
    if not class_dirs:
        raise BcsubError(
            f"{path}: folder has no class sub-folders; use one sub-folder per class ({LABEL_RANGE} or class names)"
        )
    for class_dir in class_dirs:
        label = FOLDER_ALIASES.get(class_dir.name.lower())
        if label is None:
            raise BcsubError(
                f"{class_dir}: unknown class folder '{class_dir.name}'; name it {LABEL_RANGE} or one of "
                f"{', '.join(CLASS_NAMES)}"
            )
        for file in sorted(class_dir.iterdir()):
            if file.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            try:
                with Image.open(file) as img:
                    rgb = img.convert("RGB")
                    if rgb.size != IMAGE_SHAPE[:2]:
                        rgb = rgb.resize(IMAGE_SHAPE[:2], Image.LANCZOS)
                    images.append(np.asarray(rgb, dtype=np.uint8))
            except OSError as err:
                raise BcsubError(f"{file}: cannot read image ({err}); remove or replace the file") from None
            labels.append(label)
    if not images:
        raise BcsubError(f"{path}: no PNG/JPG images found in the class folders; add images or fix the path")
    return np.stack(images), np.asarray(labels, dtype=np.int64)


def validate_images(images: np.ndarray, where: str) -> None:
    """Check an image array is (N, 96, 96, 3) uint8 (or integer/float in 0..255)."""
    problem = pixel_problem(images)
    if problem:
        raise BcsubError(f"{where}: {problem}; pass raw 0..255 RGB pixels (resize/convert them first)")


def validate(dataset: Dataset, require_all_classes: bool = True) -> None:
    """Validate images and labels in place; converts labels to (N,) int64 and images to uint8."""
    where = dataset.source
    validate_images(dataset.images, where)
    labels = np.asarray(dataset.labels)
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1 or len(labels) != len(dataset.images):
        raise BcsubError(
            f"{where}: labels have shape {labels.shape} for {len(dataset.images)} images, "
            "expected (N,) or (N, 1)"
        )
    if labels.dtype.kind not in "iu" and not (
        labels.dtype.kind == "f" and np.all(np.mod(labels, 1) == 0)
    ):
        raise BcsubError(f"{where}: labels have dtype {labels.dtype}, expected integers {LABEL_RANGE}")
    labels = labels.astype(np.int64)
    if len(labels) and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
        bad = sorted(set(labels[(labels < 0) | (labels >= NUM_CLASSES)].tolist()))[:5]
        raise BcsubError(f"{where}: labels {bad} outside {LABEL_RANGE}; map classes to {LABEL_RANGE} (see README)")
    if len(labels) == 0:
        raise BcsubError(f"{where}: the dataset is empty; pass a file with images")
    if require_all_classes:
        missing = [CLASS_NAMES[c] for c in range(NUM_CLASSES) if not np.any(labels == c)]
        if missing:
            raise BcsubError(
                f"{where}: no images of class {', '.join(missing)}; every class {LABEL_RANGE} needs images "
                "(raise --limit or add data)"
            )
    dataset.labels = labels
    if dataset.images.dtype != np.uint8:
        dataset.images = np.clip(np.rint(dataset.images), 0, 255).astype(np.uint8)


def stratified_sample(labels: np.ndarray, limit: int, seed: int) -> np.ndarray:
    """Sorted positions of about ``limit`` images with the class proportions of ``labels`` (at least 2 per
    class); all positions when ``limit`` is not below their number."""
    if limit >= len(labels):
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    counts = np.bincount(labels, minlength=NUM_CLASSES)
    quota = np.maximum(np.minimum(counts, 2), np.floor(counts / counts.sum() * limit).astype(int))
    keep = [rng.permutation(np.flatnonzero(labels == c))[: quota[c]] for c in range(NUM_CLASSES)]
    return np.sort(np.concatenate(keep))


def stratified_subsample(dataset: Dataset, limit: int, seed: int) -> Dataset:
    """Keep about ``limit`` images with the class proportions of ``dataset`` (at least 2 per class)."""
    if limit >= len(dataset):
        return dataset
    return dataset.subset(stratified_sample(dataset.labels, limit, seed))


def stratified_split(dataset: Dataset, val_fraction: float, seed: int) -> tuple[Dataset, Dataset]:
    """Hold out ``val_fraction`` of each class (at least one image per class) as validation."""
    rng = np.random.default_rng(seed)
    train_idx, val_idx = [], []
    for c in range(NUM_CLASSES):
        idx = rng.permutation(np.flatnonzero(dataset.labels == c))
        if len(idx) < 2:
            raise BcsubError(
                f"{dataset.source}: class {CLASS_NAMES[c]} has {len(idx)} image(s), too few to hold out "
                "validation; pass --val VAL.npz or add images"
            )
        n_val = max(1, int(round(len(idx) * val_fraction)))
        val_idx.append(idx[:n_val])
        train_idx.append(idx[n_val:])
    return (
        dataset.subset(np.sort(np.concatenate(train_idx))),
        dataset.subset(np.sort(np.concatenate(val_idx))),
    )


def save_npz(path: str | Path, images: np.ndarray, labels: np.ndarray) -> Path:
    """Write images (N,96,96,3) uint8 and labels (N,) to an npz, atomically."""
    with atomic_output(path) as tmp, open(tmp, "wb") as handle:
        np.savez_compressed(handle, images=images.astype(np.uint8), labels=labels.astype(np.uint8))
    return Path(path)
