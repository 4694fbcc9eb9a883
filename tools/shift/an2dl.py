"""The AN2DL-style hidden-set shift at strengths 1..3: per image a random flip/90-degree rotation,
affine zoom/shift/small rotation (reflect fill), stain (HED) and colour jitter, two RandAugment-like
ops, occasional gaussian blur and gaussian noise.

All random draws are made before the strength is looked at, so strengths are *coupled*: strength 3
uses the same flips and op choices as strength 1, only larger.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from scipy import ndimage

from tools.shift.ops import (
    ColourMap,
    apply_to,
    autocontrast,
    blend,
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

AN2DL_STRENGTHS: tuple[int, ...] = (1, 2, 3)

# index = strength - 1
_AN_ROT = (5.0, 10.0, 20.0)  # degrees, small affine rotation
_AN_ZOOM = (0.05, 0.10, 0.20)  # zoom factor in [1/(1+z), 1+z]
_AN_SHIFT = (0.04, 0.08, 0.12)  # fraction of the side
_AN_BRIGHT = (0.10, 0.20, 0.30)
_AN_CONTRAST = (0.10, 0.20, 0.30)
_AN_SAT = (0.15, 0.30, 0.45)
_AN_HUE = (0.02, 0.04, 0.07)  # turns
_AN_STAIN = ((0.05, 0.01), (0.10, 0.02), (0.20, 0.04))  # HED (scale, offset) jitter
_AN_BLUR = ((0.15, 0.6), (0.25, 0.9), (0.35, 1.2))  # (probability, sigma px)
_AN_NOISE = (4.0, 8.0, 12.0)  # max gaussian sigma, 0..255 units
# RandAugment-like pool; each image gets two distinct ops
_RA_OPS = (
    "shear_x", "shear_y", "rotate", "brightness", "contrast", "color",
    "autocontrast", "equalize", "posterize", "sharpness",
)  # fmt: skip
_RA_SHEAR = (0.1, 0.2, 0.3)
_RA_ROTATE = (10.0, 20.0, 30.0)
_RA_ENHANCE = (0.15, 0.30, 0.45)  # brightness / contrast / color factor deviation
_RA_BLEND = (0.33, 0.66, 1.0)  # autocontrast / equalize strength
_RA_POSTERIZE = (6, 5, 4)  # bits kept
_RA_SHARP = (0.5, 1.0, 1.5)  # sharpness factor deviation (sign random)

def _an2dl(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    n, h, w, _ = x.shape
    i = k - 1
    # --- all draws first, the same for every strength (coupled) ---
    dih = rng.integers(0, 8, n)
    u_geo = rng.uniform(-1, 1, (4, n))  # rotation, zoom, shift y, shift x
    u_col = rng.uniform(-1, 1, (4, n))  # brightness, contrast, saturation, hue
    u_stain = rng.uniform(-1, 1, (n, 2, 3))  # scale, offset per stain
    ra = np.argsort(rng.random((n, len(_RA_OPS))), axis=1)[:, :2]
    ra_sign = rng.choice([-1.0, 1.0], (n, len(_RA_OPS)))
    v_blur = rng.uniform(0, 1, n)
    u_noise = rng.uniform(0.3, 1.0, n)
    noise = _noise(rng, x.shape)
    has = np.zeros((n, len(_RA_OPS)), bool)
    has[np.arange(n)[:, None], ra] = True
    op = {name: has[:, j] for j, name in enumerate(_RA_OPS)}
    sgn = {name: ra_sign[:, j] * has[:, j] for j, name in enumerate(_RA_OPS)}  # 0 if not drawn

    # --- pointwise colour first (commutes with the warp): stain, jitter, RA colour ops ---
    colour = ColourMap(x)
    colour.stain(1 + u_stain[:, 0] * _AN_STAIN[i][0], u_stain[:, 1] * _AN_STAIN[i][1])
    colour.brightness(1 + u_col[0] * _AN_BRIGHT[i])
    colour.contrast(1 + u_col[1] * _AN_CONTRAST[i])
    colour.saturation(1 + u_col[2] * _AN_SAT[i])
    colour.hue(u_col[3] * _AN_HUE[i])
    colour.brightness(1 + sgn["brightness"] * _RA_ENHANCE[i])
    colour.contrast(1 + sgn["contrast"] * _RA_ENHANCE[i])
    colour.saturation(1 + sgn["color"] * _RA_ENHANCE[i])
    x8 = to_uint8(colour.apply())

    # --- geometry: one affine per image (output -> source), bilinear, reflect fill ---
    theta = np.deg2rad(u_geo[0] * _AN_ROT[i] + sgn["rotate"] * _RA_ROTATE[i])
    zoom = (1 + _AN_ZOOM[i]) ** u_geo[1]
    shear = np.tile(np.eye(2), (n, 1, 1))
    shear[:, 0, 1] = sgn["shear_y"] * _RA_SHEAR[i]
    shear[:, 1, 0] = sgn["shear_x"] * _RA_SHEAR[i]
    mat = dihedral(dih) @ rotation(theta) @ shear / zoom[:, None, None]
    xf = warp_affine(x8, mat, u_geo[2:].T * _AN_SHIFT[i] * np.array([h, w]))

    # --- RA non-linear ops on the images that drew them ---
    apply_to(xf, op["autocontrast"], lambda z: blend(z, autocontrast(z), _RA_BLEND[i]))
    apply_to(xf, op["equalize"], lambda z: blend(z, equalize(z), _RA_BLEND[i]))
    q = 2.0 ** (8 - _RA_POSTERIZE[i])
    apply_to(xf, op["posterize"], lambda z: np.floor(np.rint(z) / q) * q)
    sharp = 1 + sgn["sharpness"][op["sharpness"]] * _RA_SHARP[i]
    apply_to(xf, op["sharpness"], lambda z: sharpness(z, sharp))

    # --- occasional blur, then sensor noise ---
    p_blur, sigma = _AN_BLUR[i]
    apply_to(xf, v_blur < p_blur, lambda z: ndimage.gaussian_filter(z, (0, sigma, sigma, 0)))
    noise *= (u_noise * _AN_NOISE[i]).astype(np.float32)[:, None, None, None]
    xf += noise
    return xf


def _noise(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Standard-normal float32 noise for a batch: each image takes a random window of a small
    shared bank of normals (generating a fresh normal per value costs ~5x more)."""
    n, size = shape[0], int(np.prod(shape[1:]))
    bank = rng.standard_normal((8, size), dtype=np.float32)
    bank = np.concatenate([bank, bank[:, :size]], axis=1)
    pick, start = rng.integers(0, 8, n), rng.integers(0, size, n)
    return np.stack([bank[p, o : o + size] for p, o in zip(pick, start)]).reshape(shape)


def an2dl_shift(images: np.ndarray, strength: int, seed: int = 0) -> np.ndarray:
    """AN2DL-style hidden-set shift at ``strength`` 1..3 on a (n,H,W,3) uint8 batch (see the module)."""
    check_images(images)
    check_level(strength, AN2DL_STRENGTHS, "an2dl strength")
    return chunked(images, lambda x, rng: _an2dl(x, int(strength), rng), seed, "an2dl")


def strengths_for(severities: Iterable[int]) -> list[int]:
    """The strengths that stand for corruption severities 1..5: 1-2 -> 1, 3 -> 2, 4-5 -> 3."""
    return sorted({1 if v <= 2 else (2 if v == 3 else 3) for v in severities})
