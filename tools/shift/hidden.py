"""The calibrated hidden-set shift: the local stand-in for CodaBench's hidden AN2DL 2024 test set.

Teams' reports describe that set as images passed through several layers of heavy augmentation, and
their scores say how heavy: a CNN with no augmentation that scores 0.94 locally scored about 0.2 there;
overlaying unrelated pictures on the training images and RandAugment moved a team from 0.25 to 0.71;
RandAugment + CutMix on a 1.9M-weight CNN reached 0.88. So every image gets, in this order:

1. colour: stain (HED), saturation and hue jitter (strength ``colour``), brightness and contrast jitter
   (strength ``tone``);
2. geometry (strength ``geometry``): a random flip/90-degree rotation, then rotation, zoom, shear and
   shift (reflect fill);
3. ``ops_per_image`` RandAugment-style pixel ops drawn from ``PIXEL_OPS`` (strength ``magnitude``);
4. with ``overlay_prob``: a blend with an unrelated picture (flower-photo crops and drawn shapes; not the
   photo the calibration's overlay recipe trained with);
5. with ``cutout_prob``: an erased rectangle.

``CALIBRATED`` holds the values chosen by ``bench/calibration.py`` so that
the accuracy on this shift predicts the published CodaBench scores of re-trained 2024 recipes; the
levels 1..3 of the suite scale it by ``LEVEL_FACTORS`` (level 2 is the calibrated shift itself). All
random draws are made before the level is looked at, so levels are coupled image by image.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, replace
from functools import lru_cache

import numpy as np
from PIL import Image
from scipy import ndimage

from tools.shift.ops import (
    LUMA,
    ColourMap,
    autocontrast,
    check_images,
    check_level,
    chunked,
    dihedral,
    equalize,
    rotation,
    sharpness,
    to_uint8,
    warp_affine,
)
from train.errors import check_choices

HIDDEN_LEVELS: tuple[int, ...] = (1, 2, 3)
CALIBRATED_LEVEL = 2
LEVEL_FACTORS = {1: 0.5, 2: 1.0, 3: 1.5}
PIXEL_OPS: tuple[str, ...] = (
    "autocontrast", "equalize", "posterize", "solarize", "sharpness", "grayscale", "blur", "noise", "jpeg",
    "pixelate",
)  # fmt: skip


# The geometry at strength 1.0: rotation up to +-45 degrees, shear up to +-0.3, zoom x(1 + 0.4)^[-1, 1], shift up
# to +-15% of the side; a strength g scales each (the zoom's 0.4 too).
MAX_ROTATION_DEG, MAX_SHEAR, MAX_ZOOM, MAX_SHIFT = 45.0, 0.3, 0.4, 0.15

# The HiddenShift fields in 0..1 that a suite level multiplies (ops_per_image is rounded instead).
SCALED_STRENGTHS = ("magnitude", "colour", "tone", "geometry", "overlay_prob", "cutout_prob")


@dataclass(frozen=True)
class HiddenShift:
    """How strong the hidden-set shift is (see the module docstring)."""

    magnitude: float  # 0..1: strength of the pixel ops
    ops_per_image: int
    overlay_prob: float
    overlay_alpha: tuple[float, float]  # weight of the unrelated picture in the blend
    cutout_prob: float
    colour: float = 0.8  # 0..1: strength of the stain/saturation/hue jitter
    tone: float = 0.8  # 0..1: strength of the brightness/contrast jitter
    geometry: float = 0.8  # 0..1: strength of rotation, zoom, shear and shift

    def at_level(self, level: int) -> HiddenShift:
        """The shift of suite level 1..3: every strength and probability times ``LEVEL_FACTORS[level]``."""
        f = LEVEL_FACTORS[level]
        scaled = {name: min(1.0, getattr(self, name) * f) for name in SCALED_STRENGTHS}
        return replace(self, **scaled, ops_per_image=max(1, min(len(PIXEL_OPS), round(self.ops_per_image * f))))


# Chosen by bench/calibration.py's search on pbc96_val (see bench/results/calibration.json and the README):
# among its best (MAE 0.11-0.13 on 300 val images), the one that puts the overlay recipe above the
# no-augmentation ones by more than the noise. Not yet a good predictor: the strong recipes could not be
# re-trained in full on a CPU (README, "Expected hidden score").
CALIBRATED = HiddenShift(magnitude=1.0, ops_per_image=1, overlay_prob=0.0, overlay_alpha=(0.1, 0.3),
                         cutout_prob=0.6, colour=0.1, tone=0.1, geometry=1.0)
# Its error against published CodaBench scores (bench/results/calibration.json): mean absolute error over
# the tuning recipes, and the error on the recipe kept out of the tuning. local-score reports them.
CALIBRATION = {"mae": 0.196, "held_out": "course-simple-randaugment", "held_out_error": -0.192, "points": 5}


def hidden_shift(images: np.ndarray, level: int = CALIBRATED_LEVEL, seed: int = 0,
                 shift: HiddenShift | None = None, ops: tuple[str, ...] = PIXEL_OPS) -> np.ndarray:
    """The hidden-set shift at suite ``level`` 1..3 (or exactly ``shift``) on a (n,H,W,3) uint8 batch;
    the pixel ops are drawn from ``ops`` (a subset of ``PIXEL_OPS``: to measure one op's share)."""
    check_images(images)
    check_level(level, HIDDEN_LEVELS, "hidden-shift level")
    check_choices(ops, PIXEL_OPS, "pixel ops")
    params = shift or CALIBRATED.at_level(level)
    return chunked(images, lambda x, rng: _hidden(x, params, rng, ops), seed, "hidden")


@lru_cache(maxsize=1)
def unrelated_pictures(n: int = 256, seed: int = 1234) -> np.ndarray:
    """``n`` 96x96 pictures with nothing to do with blood cells: crops of scikit-learn's bundled flower
    photo (offline) and drawn shapes (colour gradients, discs, stripes), alternating."""
    from sklearn.datasets import load_sample_image

    photo = load_sample_image("flower.jpg")
    rng = np.random.default_rng(seed)
    h, w, _ = photo.shape
    yy, xx = np.mgrid[0:96, 0:96].astype(np.float32)
    out = np.empty((n, 96, 96, 3), np.uint8)
    for i in range(n):
        if i % 2 == 0:
            side = int(rng.uniform(0.25, 1.0) * min(h, w))
            y, x = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
            crop = Image.fromarray(photo[y:y + side, x:x + side]).resize((96, 96), Image.Resampling.BILINEAR)
            out[i] = np.asarray(crop)
            continue
        angle = rng.uniform(0, np.pi)
        t = ((np.cos(angle) * xx + np.sin(angle) * yy) / 135.0)[..., None]
        img = rng.uniform(0, 255, 3) * (1 - t) + rng.uniform(0, 255, 3) * t
        for _ in range(rng.integers(2, 7)):
            cy, cx, r = rng.uniform(0, 96), rng.uniform(0, 96), rng.uniform(6, 30)
            img[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = rng.uniform(0, 255, 3)
        if rng.random() < 0.5:
            img = np.where((np.sin(2 * np.pi * xx / rng.uniform(6, 20)) > 0)[..., None], img, img * 0.6)
        out[i] = np.clip(img, 0, 255).astype(np.uint8)
    return out


def _hidden(x: np.ndarray, p: HiddenShift, rng: np.random.Generator, ops: tuple[str, ...]) -> np.ndarray:
    n, h, w, _ = x.shape
    m = p.magnitude
    # --- every draw first (levels are coupled) ---
    u_col = rng.uniform(-1, 1, (4, n))
    u_stain = rng.uniform(-1, 1, (n, 2, 3))
    dih = rng.integers(0, 8, n)
    u_geo = rng.uniform(-1, 1, (5, n))  # rotation, zoom, shear, shift y, shift x
    order = np.argsort(rng.random((n, len(ops))), axis=1)  # each image's op preference
    u_op = rng.uniform(0, 1, (n, len(ops)))
    u_overlay, alpha = rng.random(n), rng.uniform(*p.overlay_alpha, n)
    picture = rng.integers(0, 1 << 30, n)
    u_cut, cut = rng.random(n), rng.uniform(0, 1, (5, n))
    noise_seed = int(rng.integers(0, 1 << 31))

    c, t, g = p.colour, p.tone, p.geometry
    colour = ColourMap(x)
    colour.stain(1 + u_stain[:, 0] * 0.4 * c, u_stain[:, 1] * 0.08 * c)
    colour.brightness(1 + u_col[0] * 0.5 * t)
    colour.contrast(1 + u_col[1] * 0.6 * t)
    colour.saturation(1 + u_col[2] * 0.9 * c)
    colour.hue(u_col[3] * 0.15 * c)
    x8 = to_uint8(colour.apply())

    shear = np.tile(np.eye(2), (n, 1, 1))
    shear[:, 0, 1] = u_geo[2] * MAX_SHEAR * g
    mat = (dihedral(dih) @ rotation(np.deg2rad(u_geo[0] * MAX_ROTATION_DEG * g)) @ shear
           / ((1 + MAX_ZOOM * g) ** u_geo[1])[:, None, None])
    xf = warp_affine(x8, mat, u_geo[3:].T * MAX_SHIFT * g * np.array([h, w]))

    drawn = np.zeros((n, len(ops)), bool)
    drawn[np.arange(n)[:, None], order[:, :p.ops_per_image]] = True
    noise_rng = np.random.default_rng(noise_seed)
    for j, name in enumerate(ops):
        if drawn[:, j].any():
            xf[drawn[:, j]] = np.clip(_pixel_op(name, xf[drawn[:, j]], m * u_op[drawn[:, j], j], noise_rng), 0, 255)

    overlay = u_overlay < p.overlay_prob
    if overlay.any():
        bank = unrelated_pictures()
        a = alpha[overlay][:, None, None, None].astype(np.float32)
        xf[overlay] = (1 - a) * xf[overlay] + a * bank[picture[overlay] % len(bank)]
    for i in np.flatnonzero(u_cut < p.cutout_prob):
        sh, sw = int(h * (0.2 + 0.3 * cut[0, i])), int(w * (0.2 + 0.3 * cut[1, i]))
        y0, x0 = int((h - sh) * cut[2, i]), int((w - sw) * cut[3, i])
        xf[i, y0:y0 + sh, x0:x0 + sw] = 255 * cut[4, i]
    return xf


def _pixel_op(name: str, z: np.ndarray, s: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One RandAugment-style op on float (k,H,W,3) images at per-image strengths ``s`` in 0..1."""
    col = s[:, None, None, None].astype(np.float32)
    if name == "autocontrast":
        return autocontrast(z)
    if name == "equalize":
        return equalize(z)
    if name == "posterize":
        step = 2.0 ** np.rint(4 * col)  # keeps 8..4 bits
        return np.floor(np.rint(z) / step) * step
    if name == "solarize":
        threshold = 255 - 160 * col
        return np.where(z >= threshold, 255 - z, z)
    if name == "sharpness":
        return sharpness(z, 1 + (2 * rng.random(len(z)) - 1) * 2.5 * s)
    if name == "grayscale":
        return z + col * ((z @ LUMA)[..., None] - z)
    if name == "blur":
        return np.stack([ndimage.gaussian_filter(img, (sigma, sigma, 0)) for img, sigma in zip(z, 0.3 + 2 * s)])
    if name == "noise":
        return z + rng.standard_normal(z.shape, dtype=np.float32) * 25 * col
    if name == "jpeg":
        return np.stack([_jpeg(img, int(75 - 65 * v)) for img, v in zip(to_uint8(z.copy()), s)])
    if name == "pixelate":
        return np.stack([_pixelate(img, 1 - 0.6 * v) for img, v in zip(to_uint8(z.copy()), s)])
    raise ValueError(f"unknown pixel op {name!r}")


def _jpeg(img: np.ndarray, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=max(5, quality))
    buf.seek(0)
    with Image.open(buf) as decoded:
        return np.asarray(decoded.convert("RGB"), np.float32)


def _pixelate(img: np.ndarray, factor: float) -> np.ndarray:
    h, w, _ = img.shape
    small = Image.fromarray(img).resize((max(8, round(w * factor)), max(8, round(h * factor))),
                                        Image.Resampling.BOX)
    return np.asarray(small.resize((w, h), Image.Resampling.NEAREST), np.float32)
