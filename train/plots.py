"""Training plots: learning curves and confusion matrices (matplotlib, written atomically)."""

from __future__ import annotations

import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from submission.model import CLASS_NAMES  # noqa: E402
from train.atomic import atomic_output  # noqa: E402


def save_figure(fig, path: str | Path, dpi: int = 110, bbox_inches: str | None = "tight") -> Path:
    """Write ``fig`` as a PNG atomically and close it."""
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, bbox_inches=bbox_inches)
    plt.close(fig)
    return Path(path)


def plot_confusion(confusion: list[list[int]], path: str | Path, title: str = "Confusion matrix") -> Path:
    matrix = np.asarray(confusion, dtype=float)
    normalised = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(7, 6))
    ax.imshow(normalised, cmap="Blues", vmin=0, vmax=1)
    short = [name.split()[-1][:8] for name in CLASS_NAMES]
    ax.set_xticks(range(len(short)), short, rotation=45, ha="right")
    ax.set_yticks(range(len(short)), short)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    for i in range(matrix.shape[0]):
        for j in range(matrix.shape[1]):
            if matrix[i, j]:
                colour = "white" if normalised[i, j] > 0.5 else "black"
                ax.text(j, i, int(matrix[i, j]), ha="center", va="center", fontsize=8, color=colour)
    return save_figure(fig, path)


def read_history(path: str | Path) -> dict[str, list[float]]:
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    return {key: [float(row[key]) for row in rows if row.get(key) not in (None, "")] for key in rows[0]} if rows else {}


def plot_curves(history_csv: str | Path, path: str | Path) -> Path:
    """Loss and accuracy per epoch (train and val), stages concatenated."""
    history = read_history(history_csv)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, metric in zip(axes, ("loss", "accuracy")):
        for key, style in ((metric, "-"), (f"val_{metric}", "--")):
            if history.get(key):
                ax.plot(range(1, len(history[key]) + 1), history[key], style, label=key)
        ax.set_xlabel("epoch")
        ax.set_title(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    return save_figure(fig, path)
