"""`bcsub augment-preview`: a grid PNG of what an augmentation preset does to real images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tensorflow as tf
from matplotlib.figure import Figure  # the object API renders with Agg, no pyplot/backend state

from train.augment import check_preset, image_augmenter
from train.config import AUGMENT_PRESETS
from train.errors import BcsubError
from train.plots import save_figure


def preview_grid(
    images: np.ndarray,
    preset: str,
    out_png: Path,
    n_images: int = 8,
    n_views: int = 6,
    seed: int = 0,
) -> Path:
    """Grid PNG: each row one image: original then ``n_views`` augmented views (per-image part only;
    CutMix/MixUp not shown). Atomic write. Returns ``out_png``."""
    check_preset(preset)
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3 or len(images) == 0:
        raise BcsubError(
            f"preview_grid needs a non-empty (N, H, W, 3) image array, got shape {images.shape}; "
            "pass e.g. the 'images' array of a dataset npz"
        )
    batch = images[:n_images].astype(np.float32)
    augment = image_augmenter(preset, seed=seed)
    views = [
        batch if augment is None else augment(tf.constant(batch)).numpy() for _ in range(n_views)
    ]
    rows, cols = len(batch), n_views + 1
    fig = Figure(figsize=(1.3 * cols, 1.3 * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    for r in range(rows):
        for c in range(cols):
            img = batch[r] if c == 0 else views[c - 1][r]
            ax = axes[r, c]
            ax.imshow(np.clip(img, 0, 255).astype(np.uint8))
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title("original" if c == 0 else f"view {c}", fontsize=7)
    fig.suptitle(f"preset {preset!r}: {AUGMENT_PRESETS[preset].doc}", fontsize=7)
    fig.tight_layout()
    return save_figure(fig, out_png, dpi=100, bbox_inches=None)
