"""A MedMNIST-C-style corruption set for blood smears: eleven corruptions at severities 1..5.

Parameters follow MedMNIST-C's ``bloodmnist`` table (Di Salvo et al., 2024), which was tuned
for 224 px images; spatial sizes here are rescaled for 96 px. Everything runs on whole batches
with numpy/scipy; only JPEG (PIL encode/decode) and contrast (a 256-entry LUT) loop over images.

All random draws are made at full size before the severity is looked at, so severities are
*coupled*: severity 5 uses the same bubble positions or blur angles as severity 1, only larger.
That keeps "more severe = more change" true image by image.
"""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
from PIL import Image
from scipy import ndimage

from tools.shift.ops import (
    LUMA,
    bilinear_sampler,
    check_images,
    check_level,
    chunked,
    dct_conv,
    disk_kernel,
    f32,
    fft_conv,
    flat_rows,
    image_rows,
    mean_rgb,
    motion_kernels,
    patches,
    to_uint8,
)
from train.errors import BcsubError

SEVERITIES: tuple[int, ...] = (1, 2, 3, 4, 5)
# A corruption: (uint8 chunk (n,H,W,3), severity 1..5, the chunk's generator) -> the corrupted chunk.
Corruption = Callable[[np.ndarray, int, np.random.Generator], np.ndarray]

# ---- severity tables (index = severity - 1) -------------------------------------------------
# MedMNIST-C bloodmnist values where they are scale-free; spatial ones rescaled for 96 px.
_PIXELATE = (0.6, 0.5, 0.4, 0.3, 0.25)  # resize factor
_JPEG = (50, 30, 15, 10, 7)  # quality
_DEFOCUS = (1.0, 1.4, 1.8, 2.3, 2.8)  # disk radius, px (224 px: 2..6)
_MOTION = ((1.5, 1.5), (2.5, 2.5), (4.5, 2.5), (4.5, 3.5), (5.5, 4.5))  # (trail px, sigma px)
_BRIGHT_UP = (1.1, 1.2, 1.3, 1.35, 1.4)
_BRIGHT_DOWN = (0.9, 0.8, 0.7, 0.6, 0.5)
_CONTRAST_UP = (1.1, 1.15, 1.2, 1.25, 1.3)
_CONTRAST_DOWN = (0.9, 0.8, 0.7, 0.6, 0.5)
_SATURATE = (0.05, 0.10, 0.15, 0.17, 0.20)  # added to HSV saturation
# stain deposit: (blobs, blob radius px, specks)
_STAIN = ((1, 3.0, 6), (2, 3.5, 12), (3, 4.0, 18), (4, 4.5, 26), (5, 5.0, 34))
_STAIN_MAX_BLOBS, _STAIN_MAX_SPECKS = 5, 34
# absorbance per unit density: at density 1 the deposit passes 25% R, 8% G, 45% B (purple)
_STAIN_ABSORB = -np.log(np.array([0.25, 0.08, 0.45], np.float32))
# bubble: (count, max radius px); radius drawn in [2, max]
_BUBBLE = ((5, 3.0), (6, 4.5), (8, 6.0), (10, 7.5), (12, 9.0))
_BUBBLE_MAX = 12


# ---- corruptions -----------------------------------------------------------------------------


def _pixelate(x: np.ndarray, s: int, rng: np.random.Generator) -> np.ndarray:
    """Area-average down (PIL BOX) by the severity factor, then blocky nearest-neighbour up."""
    _, h, w, _ = x.shape
    f = _PIXELATE[s - 1]
    small = (max(1, round(w * f)), max(1, round(h * f)))
    out = np.empty_like(x)
    for i, img in enumerate(x):  # PIL's C resize beats any numpy formulation here
        im = Image.fromarray(img).resize(small, Image.Resampling.BOX)
        out[i] = np.asarray(im.resize((w, h), Image.Resampling.NEAREST))
    return out


def _jpeg(x: np.ndarray, s: int, rng: np.random.Generator) -> np.ndarray:
    q = _JPEG[s - 1]
    out = np.empty_like(x)
    for i, img in enumerate(x):
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="JPEG", quality=q)
        buf.seek(0)
        with Image.open(buf) as im:
            out[i] = np.asarray(im.convert("RGB"))
    return out


def _defocus_blur(x: np.ndarray, s: int, rng: np.random.Generator) -> np.ndarray:
    return dct_conv(f32(x), disk_kernel(_DEFOCUS[s - 1]))


def _motion_blur(x: np.ndarray, s: int, rng: np.random.Generator) -> np.ndarray:
    angles = rng.uniform(0, np.pi, len(x))  # same angles for every severity
    trail, sigma = _MOTION[s - 1]
    return fft_conv(f32(x), motion_kernels(angles, trail, sigma))


def _scale(factors: tuple[float, ...]) -> Callable:
    def fn(x: np.ndarray, s: int, rng: np.random.Generator) -> np.ndarray:
        lut = to_uint8(np.arange(256, dtype=np.float32) * factors[s - 1])
        return lut[x]  # PIL ImageEnhance.Brightness

    return fn


def _contrast(factors: tuple[float, ...]) -> Callable:
    def fn(x: np.ndarray, s: int, rng: np.random.Generator) -> np.ndarray:
        mean = np.floor(mean_rgb(x) @ LUMA + 0.5)  # (n,) grey mean, as PIL rounds it
        f = factors[s - 1]
        luts = to_uint8(mean[:, None] + f * (np.arange(256) - mean[:, None]))
        out = np.empty_like(x)
        for i in range(len(x)):  # one 256-entry LUT per image (PIL ImageEnhance.Contrast)
            out[i] = luts[i][x[i]]
        return out

    return fn


def _saturate(x: np.ndarray, s: int, rng: np.random.Generator) -> np.ndarray:
    """Add to HSV saturation keeping hue and value (grey pixels stay grey)."""
    v = np.maximum(np.maximum(x[..., 0], x[..., 1]), x[..., 2]).astype(np.float32)
    mn = np.minimum(np.minimum(x[..., 0], x[..., 1]), x[..., 2]).astype(np.float32)
    sat = np.divide(v - mn, v, out=np.zeros_like(v), where=v > 0)
    new = np.minimum(sat + np.float32(_SATURATE[s - 1]), 1)
    ratio = np.divide(new, sat, out=np.ones_like(v), where=sat > 0)
    out = np.empty(x.shape, np.float32)
    for c in range(3):  # c' = v - (v - c) * S'/S keeps hue and value
        out[..., c] = v - (v - x[..., c]) * ratio
    return out


def _stain_deposit(x: np.ndarray, s: int, rng: np.random.Generator) -> np.ndarray:
    """Dark purple dye precipitate: irregular soft blobs with mottled density, plus specks.

    The dye absorbs light: deposits add up to a density map D (Beer-Lambert), and each channel
    is multiplied by exp(-D * absorbance), so overlapping deposits darken further.
    """
    n, h, w, _ = x.shape
    nb, radius, ns = _STAIN[s - 1]
    half_max = int(np.ceil(_STAIN[-1][1] * 1.3 * 1.5)) + 3
    half, half_s = int(np.ceil(radius * 1.3 * 1.5)) + 3, 3
    # draws at full size, independent of severity (coupled severities)
    m = _STAIN_MAX_BLOBS
    by, bx = rng.uniform(6, h - 7, (m, n)), rng.uniform(6, w - 7, (m, n))
    bsize = rng.uniform(0.6, 1.3, (m, n))
    bphase = rng.uniform(0, 2 * np.pi, (2, m, n))
    bamp = rng.uniform(0.05, 0.25, (2, m, n))
    bdens = rng.uniform(0.75, 0.95, (m, n))
    ms = _STAIN_MAX_SPECKS
    sy, sx = rng.uniform(2, h - 3, (ms, n)), rng.uniform(2, w - 3, (ms, n))
    sr, sd = rng.uniform(0.5, 1.3, (ms, n)), rng.uniform(0.5, 0.9, (ms, n))
    p_max = 2 * half_max + 1
    texture = rng.standard_normal((m, n, p_max, p_max), dtype=np.float32)
    crop = slice(half_max - half, half_max + half + 1)
    texture = ndimage.gaussian_filter(texture[:nb], sigma=(0, 0, 1.2, 1.2))[:, :, crop, crop]
    texture = 0.8 + 0.2 * np.tanh(texture / 0.235)  # 0.235: std of white noise blurred by 1.2 px

    def cols(v: np.ndarray, k: int) -> np.ndarray:  # (k,n) -> (k,n,1,1) float32
        return v[:k, :, None, None].astype(np.float32)

    iy, ix, dy, dx = patches(by[:nb], bx[:nb], half)  # (nb,n,P,*)
    ang = np.arctan2(dy, dx)
    wobble = 1 + cols(bamp[0], nb) * np.cos(2 * ang + cols(bphase[0], nb))
    wobble += cols(bamp[1], nb) * np.cos(3 * ang + cols(bphase[1], nb))
    d = np.sqrt(dy**2 + dx**2) - cols(radius * bsize, nb) * wobble
    a_blob = cols(bdens, nb) / (1 + np.exp(d / 0.7)) * texture
    siy, six, sdy, sdx = patches(sy[:ns], sx[:ns], half_s)
    a_speck = cols(sd, ns) * np.exp(-(sdy**2 + sdx**2) / (2 * cols(sr, ns) ** 2))

    hc, wc = h + 2 * half, w + 2 * half
    rows = np.concatenate(
        [flat_rows(n, hc, wc, half, iy, ix), flat_rows(n, hc, wc, half, siy, six)]
    )
    dens = np.concatenate([a_blob.ravel(), a_speck.ravel()])
    total = np.bincount(rows, dens, n * hc * wc).reshape(n, hc, wc)
    total = total[:, half : half + h, half : half + w].astype(np.float32)
    out = np.empty(x.shape, np.float32)
    for c in range(3):
        out[..., c] = x[..., c] * np.exp(-_STAIN_ABSORB[c] * total)
    return out


def _bubble(x: np.ndarray, s: int, rng: np.random.Generator) -> np.ndarray:
    """Air bubbles: magnified bright interior, bright inner rim, thin dark refraction edge."""
    n, h, w, _ = x.shape
    count, rmax = _BUBBLE[s - 1]
    cy = rng.uniform(0, h - 1, (_BUBBLE_MAX, n))[:count]
    cx = rng.uniform(0, w - 1, (_BUBBLE_MAX, n))[:count]
    ru = rng.uniform(0, 1, (_BUBBLE_MAX, n))[:count]
    half = int(np.ceil(rmax)) + 3
    iy, ix, dy, dx = patches(cy, cx, half)  # (count,n,P,*)
    r = (2.0 + (rmax - 2.0) * ru)[:, :, None, None].astype(np.float32)
    d = np.sqrt(dy**2 + dx**2) - r  # signed distance to the rim
    inside = 1 / (1 + np.exp(d / 0.5))
    hl = np.exp(-((dy + 0.35 * r) ** 2 + (dx + 0.35 * r) ** 2) / (2 * (0.2 * r) ** 2))
    rim = np.exp(-(((d + 0.9) / 0.7) ** 2))
    a_white = np.clip(0.28 * inside + 0.45 * rim + 0.35 * hl, 0, 0.9)
    keep = 1 - 0.6 * 0.45 * np.exp(-(((d - 0.4) / 0.6) ** 2))  # thin dark refraction edge
    # lens: inside the bubble, show the original magnified about the centre
    lens = inside > 0.01
    inside = np.where(lens, inside, np.float32(0))
    img = np.broadcast_to(np.arange(n)[:, None, None], lens.shape)[lens]
    sy = np.broadcast_to(iy - 0.2 * dy * inside, lens.shape)[lens]
    sx = np.broadcast_to(ix - 0.2 * dx * inside, lens.shape)[lens]
    seen = np.zeros(lens.shape + (3,), np.float32)
    seen[lens] = bilinear_sampler(x)(sy, sx, img)
    # new = ((old*(1-in) + in*seen) * keep) * (1-white) + 250*white  ==  old*mul + add
    mul = ((1 - inside) * keep * (1 - a_white))[..., None]
    add = (inside * keep * (1 - a_white))[..., None] * seen + (250.0 * a_white)[..., None]
    flat = np.empty((n * h * w + 1, 3), np.float32)  # last row: sink for off-image pixels
    flat[:-1] = x.reshape(-1, 3)
    for b in range(count):  # in order: later bubbles lie on top of earlier ones
        rows = image_rows(n, h, w, iy[b], ix[b])
        flat[rows] = flat[rows] * mul[b].reshape(-1, 1) + add[b].reshape(-1, 3)
    return flat[:-1].reshape(n, h, w, 3)


# Every corruption of the suite, in report order; adding one is its function above and one line here.
CORRUPTION_FUNCTIONS: dict[str, Corruption] = {
    "pixelate": _pixelate,
    "jpeg": _jpeg,
    "defocus_blur": _defocus_blur,
    "motion_blur": _motion_blur,
    "brightness_up": _scale(_BRIGHT_UP),
    "brightness_down": _scale(_BRIGHT_DOWN),
    "contrast_up": _contrast(_CONTRAST_UP),
    "contrast_down": _contrast(_CONTRAST_DOWN),
    "saturate": _saturate,
    "stain_deposit": _stain_deposit,
    "bubble": _bubble,
}
CORRUPTIONS: tuple[str, ...] = tuple(CORRUPTION_FUNCTIONS)


def corrupt(images: np.ndarray, name: str, severity: int, seed: int = 0) -> np.ndarray:
    """Apply corruption ``name`` at ``severity`` (1..5) to a (n,H,W,3) uint8 batch."""
    check_images(images)
    if name not in CORRUPTION_FUNCTIONS:
        raise BcsubError(f"unknown corruption {name!r}; use one of {', '.join(CORRUPTIONS)}")
    check_level(severity, SEVERITIES, "severity")
    fn = CORRUPTION_FUNCTIONS[name]
    return chunked(images, lambda x, rng: fn(x, int(severity), rng), seed, name)
