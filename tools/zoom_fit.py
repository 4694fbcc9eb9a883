"""Fit the zoom estimate of the zip's ``ZoomUndo`` on training images (``bcsub package --tta auto``).

Training images get the training augmentation's colour, degradation, RandAugment, tone and erasing layers
(``train.augment.PARTS``: the nuisances the estimate must see through), then a known zoom and rotation
(scipy, about the centre, reflected at the border: not the runtime's or the shift suite's code); a ridge
regression, its strength chosen by cross-validation, reads the log zoom off one member's stage statistics.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import tensorflow as tf
from scipy import ndimage
from sklearn.linear_model import RidgeCV

from submission.model import ImageRepair, ZoomUndo, network_input
from train.augment import parts_pipeline
from train.errors import BcsubError
from train.runs import Member
from train.splits import read_split

FIT_IMAGES = 4000
MIN_FIT_IMAGES = 1000  # where the TTA is chosen on a share of the validation images, the fit takes that share
MAX_LOG_ZOOM = 0.55  # zooms x0.58..x1.73: past the calibrated shift's x0.71..x1.4 (level 2) and x0.63..x1.6 (level 3)
MAX_ROTATION_DEG = 45.0
NUISANCE_PARTS = ("colour", "degrade", "randaugment", "tone", "erase")
RIDGE_ALPHAS = np.logspace(-2, 4, 13)


def zoom_rotate(image: np.ndarray, log_zoom: float, degrees: float) -> np.ndarray:
    """One float (H, W, 3) image magnified by exp(log_zoom) and rotated about its centre (bilinear, reflect)."""
    t = np.deg2rad(degrees)
    matrix = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]]) / np.exp(log_zoom)
    centre = (np.array(image.shape[:2]) - 1) / 2.0
    offset = centre - matrix @ centre
    return np.stack([ndimage.affine_transform(image[..., c], matrix, offset, order=1, mode="reflect")
                     for c in range(image.shape[-1])], axis=-1)


def zoomed_training_images(images: np.ndarray, seed: int = 0, n: int = FIT_IMAGES,
                           batch: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """``n`` augmented, zoomed and rotated copies of ``images`` (drawn without replacement where there are
    enough) and their log zooms, uniform in +-``MAX_LOG_ZOOM``."""
    rng = np.random.default_rng(seed)
    picked = rng.choice(len(images), n, replace=n > len(images))
    pipeline = parts_pipeline(NUISANCE_PARTS, seed + 17, "zoom_fit_nuisances")
    augmented = np.concatenate([
        np.clip(np.asarray(pipeline(tf.constant(images[picked[i:i + batch]], tf.float32), training=True)), 0, 255)
        for i in range(0, n, batch)])
    log_zoom = rng.uniform(-MAX_LOG_ZOOM, MAX_LOG_ZOOM, n)
    degrees = rng.uniform(-MAX_ROTATION_DEG, MAX_ROTATION_DEG, n)
    zoomed = np.stack([zoom_rotate(x, z, d) for x, z, d in zip(augmented, log_zoom, degrees)]).astype(np.float32)
    return zoomed, log_zoom


def fit_zoom_undo(model, images: np.ndarray, seed: int = 0, n: int | None = None, repair=None,
                  threshold: float = ZoomUndo.THRESHOLD) -> tuple[ZoomUndo, float]:
    """The ``ZoomUndo`` of ``model`` fitted on ``n`` zoomed copies of the training ``images``, and its mean
    absolute error (log zoom) on the fifth of them it did not fit on (``n``: ``FIT_IMAGES``, fewer for
    small data). ``repair``: the ``ImageRepair`` the
    zip runs first (the estimate sees what it will see)."""
    n = n or min(FIT_IMAGES, max(256, 2 * len(images)))
    zoomed, log_zoom = zoomed_training_images(images, seed, n)
    undo = ZoomUndo(model, np.zeros(1), 0.0, threshold)
    features = np.concatenate([undo.features(network_input(zoomed[i:i + 256], 1.0, repair))
                               for i in range(0, len(zoomed), 256)])
    cut = int(0.8 * len(features))
    held_out = RidgeCV(alphas=RIDGE_ALPHAS).fit(features[:cut], log_zoom[:cut])
    error = float(np.abs(held_out.predict(features[cut:]) - log_zoom[cut:]).mean())
    ridge = RidgeCV(alphas=RIDGE_ALPHAS).fit(features, log_zoom)
    undo.coef, undo.intercept = ridge.coef_.astype(np.float32), float(ridge.intercept_)
    return undo, error


def training_images(members: list[Member]) -> tuple[np.ndarray | None, str | None]:
    """The first member's training images (its recorded split), or None and why not."""
    split = read_split(members[0].run_dir)
    if split is None:
        return None, f"{members[0].run_dir} recorded no training split (trained before bcsub recorded one)"
    try:
        return split.data.load().subset(split.train).images, None
    except BcsubError as err:
        return None, str(err)


def zoom_fitter(model, members: list[Member], seed: int = 0, progress=print,
                share: float = 1.0) -> tuple[Callable[[ImageRepair | None], ZoomUndo] | None, str | None]:
    """What ``choose_tta`` calls to fit the zoom undo of ``model`` (on the members' training images; on
    ``share`` of ``FIT_IMAGES`` of them, at least ``MIN_FIT_IMAGES``), or None and a note saying why the zoom
    undo is not tried."""
    images, reason = training_images(members)
    if images is None:
        return None, f"zoom undo not tried: {reason}"

    def fit(repair: ImageRepair | None) -> ZoomUndo:
        progress(f"fitting the zoom estimate on zoomed copies of {len(images)} training images")
        n = None if share >= 1.0 else max(MIN_FIT_IMAGES, round(share * FIT_IMAGES))
        undo, error = fit_zoom_undo(model, images, seed, n, repair=repair)
        progress(f"zoom estimate: mean error {error:.3f} (log zoom) on held-out zoomed images")
        return undo

    return fit, None
