"""The AN2DL-style hidden-set shift at strengths 1..3: per image a random flip/90-degree rotation,
affine zoom/shift/small rotation (reflect fill), stain (HED) and colour jitter, two RandAugment-like
ops, occasional gaussian blur and gaussian noise.

All random draws are made before the strength is looked at, so strengths are *coupled*: strength 3
uses the same flips and op choices as strength 1, only larger.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
from scipy import ndimage

from tools.shift.ops import LUMA, bilinear_sampler, check_images, check_level, chunked, f32, mean_rgb, to_uint8

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

# RGB <-> haematoxylin/eosin/DAB optical density (Ruifrok & Johnston), rows = stains
_HED = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
_HED = _HED / np.linalg.norm(_HED, axis=1, keepdims=True)
_HED_INV = np.linalg.inv(_HED)
_YIQ = np.array([[0.299, 0.596, 0.211], [0.587, -0.274, -0.523], [0.114, -0.322, 0.312]])
_YIQ_INV = np.linalg.inv(_YIQ)  # x_row @ _YIQ -> yiq_row


def _dihedral(k: np.ndarray) -> np.ndarray:
    """(n,2,2) exact integer matrices for the 8 flips/90-degree rotations."""
    rot = np.array([[[1, 0], [0, 1]], [[0, -1], [1, 0]], [[-1, 0], [0, -1]], [[0, 1], [-1, 0]]])
    flip = np.array([[[1, 0], [0, 1]], [[1, 0], [0, -1]]])
    return rot[k % 4] @ flip[k // 4]


def _rotation(theta: np.ndarray) -> np.ndarray:
    c, s = np.cos(theta), np.sin(theta)
    return np.stack([np.stack([c, -s], -1), np.stack([s, c], -1)], -2)


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
    colour = _ColourMap(x)
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
    mat = _dihedral(dih) @ _rotation(theta) @ shear / zoom[:, None, None]
    centre = np.array([(h - 1) / 2, (w - 1) / 2])
    shift = u_geo[2:].T * _AN_SHIFT[i] * np.array([h, w])
    gy, gx = np.mgrid[0:h, 0:w].astype(np.float32)
    grid = np.stack([gy - centre[0], gx - centre[1]], 0).reshape(2, -1)  # (2,HW)
    src = mat.astype(np.float32) @ grid + (centre + shift).astype(np.float32)[:, :, None]
    xf = bilinear_sampler(x8)(src[:, 0].reshape(n, h, w), src[:, 1].reshape(n, h, w))

    # --- RA non-linear ops on the images that drew them ---
    _subset(xf, op["autocontrast"], lambda z: _blend(z, _autocontrast(z), _RA_BLEND[i]))
    _subset(xf, op["equalize"], lambda z: _blend(z, _equalize(z), _RA_BLEND[i]))
    q = 2.0 ** (8 - _RA_POSTERIZE[i])
    _subset(xf, op["posterize"], lambda z: np.floor(np.rint(z) / q) * q)
    sharp = 1 + sgn["sharpness"][op["sharpness"]] * _RA_SHARP[i]
    _subset(xf, op["sharpness"], lambda z: _sharpness(z, sharp))

    # --- occasional blur, then sensor noise ---
    p_blur, sigma = _AN_BLUR[i]
    _subset(xf, v_blur < p_blur, lambda z: ndimage.gaussian_filter(z, (0, sigma, sigma, 0)))
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


_OD_LUT = -np.log((np.arange(256) + 1.0) / 256).astype(np.float32)


class _ColourMap:
    """Per-image pointwise colour transform: an optional HED stain jitter in optical density,
    then a chain of affine RGB maps (x_row @ A + t) composed into one, applied in one pass."""

    def __init__(self, x: np.ndarray) -> None:
        self.x = x
        n = len(x)
        self.od: tuple[np.ndarray, np.ndarray] | None = None
        self.a = np.tile(np.eye(3), (n, 1, 1))
        self.t = np.zeros((n, 3))
        self.mean = mean_rgb(x)  # (n,3) image mean, tracked through the maps

    def stain(self, scale: np.ndarray, offset: np.ndarray) -> None:
        """Scale/offset each stain's concentration (Ruifrok-Johnston HED, Tellez-style)."""
        m = np.einsum("ij,nj,jk->nik", _HED_INV, scale, _HED)
        self.od = (m.astype(np.float32), (offset @ _HED).astype(np.float32))
        od_mean = _OD_LUT[np.clip(np.rint(self.mean), 0, 255).astype(int)]
        self.mean = 256 * np.exp(-(np.einsum("nj,njk->nk", od_mean, m) + offset @ _HED)) - 1

    def _compose(self, m: np.ndarray, t: np.ndarray) -> None:
        self.a = self.a @ m
        self.t = np.einsum("nj,njk->nk", self.t, m) + t
        self.mean = np.einsum("nj,njk->nk", self.mean, m) + t

    def brightness(self, f: np.ndarray) -> None:
        self._compose(f[:, None, None] * np.eye(3), np.zeros((len(f), 3)))

    def contrast(self, f: np.ndarray) -> None:
        grey = (self.mean @ LUMA)[:, None]
        self._compose(f[:, None, None] * np.eye(3), (1 - f)[:, None] * grey * np.ones(3))

    def saturation(self, f: np.ndarray) -> None:
        m = f[:, None, None] * np.eye(3) + (1 - f)[:, None, None] * np.outer(LUMA, np.ones(3))
        self._compose(m, np.zeros((len(f), 3)))

    def hue(self, turns: np.ndarray) -> None:
        c, s = np.cos(2 * np.pi * turns), np.sin(2 * np.pi * turns)
        r = np.zeros((len(turns), 3, 3))
        r[:, 0, 0] = 1
        r[:, 1, 1], r[:, 1, 2], r[:, 2, 1], r[:, 2, 2] = c, s, -s, c
        self._compose(_YIQ @ r @ _YIQ_INV, np.zeros((len(turns), 3)))

    def apply(self) -> np.ndarray:
        # channels-first (n,3,HW): per-image 3x3 maps are batched matmuls and per-channel
        # offsets broadcast along the long axis (broadcasting over a last axis of 3 is slow)
        n, h, w, _ = self.x.shape
        y = np.ascontiguousarray(f32(self.x).reshape(n, h * w, 3).transpose(0, 2, 1))
        if self.od is not None:
            od_m, od_t = self.od
            y += 1
            np.log(y, out=y)  # = log(256) - optical density; the constant is folded in below
            y = np.matmul(od_m.transpose(0, 2, 1), y)
            y += (np.log(256) * (1 - od_m.sum(axis=1)) - od_t)[:, :, None]
            np.exp(y, out=y)
            y -= 1
        y = np.matmul(self.a.astype(np.float32).transpose(0, 2, 1), y)
        y += self.t.astype(np.float32)[:, :, None]
        return y.transpose(0, 2, 1).reshape(n, h, w, 3)


def _subset(x: np.ndarray, mask: np.ndarray, fn: Callable[[np.ndarray], np.ndarray]) -> None:
    """In place: x[mask] = fn(x[mask]) when any image is selected."""
    if mask.any():
        x[mask] = np.clip(fn(x[mask]), 0, 255)


def _blend(a: np.ndarray, b: np.ndarray, t: float) -> np.ndarray:
    return a + t * (b - a)


def _autocontrast(x: np.ndarray) -> np.ndarray:
    chans = np.ascontiguousarray(x.reshape(len(x), -1, 3).transpose(0, 2, 1))  # fast reductions
    lo = chans.min(axis=2)[:, None, None, :]
    hi = chans.max(axis=2)[:, None, None, :]
    span = hi - lo
    return np.where(span > 0, (x - lo) * 255 / np.maximum(span, 1e-6), x)


def _equalize(x: np.ndarray) -> np.ndarray:
    """Per-image, per-channel histogram equalisation (vectorised via one bincount)."""
    n, h, w, c = x.shape
    v = np.clip(np.rint(x), 0, 255).astype(np.int64)
    key = (np.arange(n)[:, None, None, None] * c + np.arange(c)) * 256 + v
    hist = np.bincount(key.ravel(), minlength=n * c * 256).reshape(n, c, 256)
    cdf = hist.cumsum(axis=-1)
    first = np.take_along_axis(cdf, (hist > 0).argmax(axis=-1)[..., None], axis=-1)
    denom = h * w - first
    lut = np.where(denom > 0, (cdf - first) * 255.0 / np.maximum(denom, 1), np.arange(256))
    return lut.reshape(-1)[key].astype(np.float32)


def _sharpness(x: np.ndarray, f: np.ndarray) -> np.ndarray:
    """PIL-style sharpness: blend with the 3x3 'smooth' filter by per-image factor ``f``."""
    k = np.array([[1, 1, 1], [1, 5, 1], [1, 1, 1]], np.float32) / 13
    smooth = ndimage.correlate(x, k[None, :, :, None], mode="nearest")
    return smooth + f.astype(np.float32)[:, None, None, None] * (x - smooth)


def an2dl_shift(images: np.ndarray, strength: int, seed: int = 0) -> np.ndarray:
    """AN2DL-style hidden-set shift at ``strength`` 1..3 on a (n,H,W,3) uint8 batch (see the module)."""
    check_images(images)
    check_level(strength, AN2DL_STRENGTHS, "an2dl strength")
    return chunked(images, lambda x, rng: _an2dl(x, int(strength), rng), seed, "an2dl")


def strengths_for(severities: Iterable[int]) -> list[int]:
    """The strengths that stand for corruption severities 1..5: 1-2 -> 1, 3 -> 2, 4-5 -> 3."""
    return sorted({1 if v <= 2 else (2 if v == 3 else 3) for v in severities})
