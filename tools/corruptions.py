"""Deterministic image shifts for ``bcsub local-score``: a MedMNIST-C-style corruption set for
blood smears and an AN2DL-style hidden-set shift (flips, affine, colour/stain jitter, noise, blur,
RandAugment-like op pairs).

Parameters follow MedMNIST-C's ``bloodmnist`` table (Di Salvo et al., 2024), which was tuned
for 224 px images; spatial sizes here are rescaled for 96 px. Everything runs on whole batches
with numpy/scipy; only JPEG (PIL encode/decode) and contrast (a 256-entry LUT) loop over images.

Randomness: each chunk of images gets ``np.random.default_rng`` seeded from
``(seed, crc32(name), chunk index)``. All random draws are made at full size before the severity
is looked at, so severities are *coupled*: severity 5 uses the same bubble positions, blur angles
or an2dl flips as severity 1, only larger. That keeps "more severe = more change" true image by
image, and every (name, severity, seed) output reproducible and independent of call order.
"""

from __future__ import annotations

import io
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image
from scipy import fft as sfft
from scipy import ndimage

from submission.model import pixel_problem
from train.errors import BcsubError

CORRUPTIONS: tuple[str, ...] = (
    "pixelate",
    "jpeg",
    "defocus_blur",
    "motion_blur",
    "brightness_up",
    "brightness_down",
    "contrast_up",
    "contrast_down",
    "saturate",
    "stain_deposit",
    "bubble",
)
SEVERITIES: tuple[int, ...] = (1, 2, 3, 4, 5)
AN2DL_STRENGTHS: tuple[int, ...] = (1, 2, 3)
SUITES: tuple[str, ...] = ("clean", "corruptions", "an2dl")

_MIN_SIDE = 8  # the stain and bubble corruptions place blobs inside a margin of about this size
_CHUNK = 64  # images processed at once (cache-friendly; part of the seeding)
_FFT_WORKERS = 1  # the per-chunk transforms are small; threads only add contention

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

_LUMA = np.array([0.299, 0.587, 0.114], np.float32)


# ---- public API -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Variant:
    """One shifted copy of the data."""

    name: str  # "clean", "pixelate@3", "an2dl@2"
    suite: str  # "clean" | "corruptions" | "an2dl"
    kind: str  # "clean", corruption name, or "an2dl"
    severity: int  # 0 for clean


def corrupt(images: np.ndarray, name: str, severity: int, seed: int = 0) -> np.ndarray:
    """Apply corruption ``name`` at ``severity`` (1..5) to a (n,H,W,3) uint8 batch."""
    _check_images(images)
    if name not in CORRUPTIONS:
        raise BcsubError(f"unknown corruption {name!r}; use one of {', '.join(CORRUPTIONS)}")
    _check_level(severity, SEVERITIES, "severity")
    fn = _FUNCS[name]
    return _chunked(images, lambda x, rng: fn(x, int(severity), rng), seed, name)


def an2dl_shift(images: np.ndarray, strength: int, seed: int = 0) -> np.ndarray:
    """AN2DL-style hidden-set shift at ``strength`` 1..3 on a (n,H,W,3) uint8 batch.

    Per image: a random flip/90-degree rotation, affine zoom/shift/small rotation (reflect fill),
    stain (HED) and colour jitter (brightness, contrast, saturation, hue), two RandAugment-like
    ops, occasional gaussian blur and gaussian noise.
    """
    _check_images(images)
    _check_level(strength, AN2DL_STRENGTHS, "an2dl strength")
    return _chunked(images, lambda x, rng: _an2dl(x, int(strength), rng), seed, "an2dl")


def plan_variants(
    suites: Sequence[str] = SUITES, severities: Sequence[int] = SEVERITIES
) -> list[Variant]:
    """List the variants of the requested suites (clean first if asked), validating names."""
    suites = (suites,) if isinstance(suites, str) else tuple(suites)
    severities = (severities,) if isinstance(severities, int) else tuple(severities)
    for s in suites:
        if s not in SUITES:
            raise BcsubError(f"unknown suite {s!r}; use one of {', '.join(SUITES)}")
    for v in severities:
        _check_level(v, SEVERITIES, "severity")
    suites = tuple(dict.fromkeys(suites))
    if not suites:
        raise BcsubError(f"no suite given; use one or more of {', '.join(SUITES)}")
    sevs = sorted({int(v) for v in severities})
    if not sevs and any(s != "clean" for s in suites):
        raise BcsubError(f"no severity given; use one or more of {SEVERITIES}")
    if tuple(severities) == SEVERITIES:
        strengths = list(AN2DL_STRENGTHS)
    else:
        strengths = sorted({_severity_to_strength(v) for v in sevs})
    out: list[Variant] = []
    for suite in suites:
        if suite == "clean":
            out.append(Variant("clean", "clean", "clean", 0))
        elif suite == "corruptions":
            out += [Variant(f"{c}@{v}", suite, c, v) for c in CORRUPTIONS for v in sevs]
        else:
            out += [Variant(f"an2dl@{k}", suite, "an2dl", k) for k in strengths]
    return out


def apply_variant(images: np.ndarray, variant: Variant, seed: int = 0) -> np.ndarray:
    """Return ``images`` shifted as ``variant`` says (a copy for "clean")."""
    if variant.suite == "clean":
        _check_images(images)
        return images.copy()
    if variant.suite == "corruptions":
        return corrupt(images, variant.kind, variant.severity, seed)
    if variant.suite == "an2dl":
        return an2dl_shift(images, variant.severity, seed)
    raise BcsubError(f"unknown suite {variant.suite!r} in variant; use one of {', '.join(SUITES)}")


# ---- plumbing -------------------------------------------------------------------------------


def _severity_to_strength(severity: int) -> int:
    return 1 if severity <= 2 else (2 if severity == 3 else 3)


def _check_images(images: object) -> None:
    problem = pixel_problem(images, side=None, uint8_only=True)
    if not problem and min(images.shape[1:3]) < _MIN_SIDE:
        problem = f"images have shape {images.shape}, expected sides of at least {_MIN_SIDE} px"
    if problem:
        raise BcsubError(f"{problem}; pass a batch of RGB images (convert with .astype(np.uint8))")


def _check_level(value: object, allowed: tuple[int, ...], what: str) -> None:
    ok = isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value in allowed
    if not ok:
        raise BcsubError(f"bad {what} {value!r}; use one of {', '.join(map(str, allowed))}")


def _rng(seed: int, name: str, chunk: int) -> np.random.Generator:
    return np.random.default_rng([int(seed) & (2**64 - 1), zlib.crc32(name.encode()), chunk])


def _chunked(
    images: np.ndarray,
    fn: Callable[[np.ndarray, np.random.Generator], np.ndarray],
    seed: int,
    name: str,
) -> np.ndarray:
    out = np.empty_like(images)
    for i, start in enumerate(range(0, len(images), _CHUNK)):
        part = np.ascontiguousarray(images[start : start + _CHUNK])
        out[start : start + len(part)] = _to_uint8(fn(part, _rng(seed, name, i)))
    return out


def _to_uint8(x: np.ndarray) -> np.ndarray:
    if x.dtype == np.uint8:
        return x
    x = np.clip(x, 0, 255, out=x if x.flags.writeable else None)
    return np.rint(x, out=x).astype(np.uint8)


def _f32(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float32)


def _mean_rgb(x: np.ndarray) -> np.ndarray:
    """(n,3) float64 per-image channel means (a BLAS product: uint8 reductions are slow)."""
    flat = _f32(x).reshape(len(x), -1, 3)
    return (np.ones(flat.shape[1], np.float32) @ flat).astype(np.float64) / flat.shape[1]


# ---- filters --------------------------------------------------------------------------------


def _fft_len(n: int) -> int:
    """Smallest m >= n with no prime factor above 5 (pocketfft is fastest on those)."""
    m = n
    while True:
        r = m
        for p in (2, 3, 5):
            while r % p == 0:
                r //= p
        if r == 1:
            return m
        m += 1


def _fft_conv(x: np.ndarray, kernels: np.ndarray) -> np.ndarray:
    """Convolve (n,H,W,3) float32 with one (k,k) kernel or one per image (n,k,k); k odd.

    Symmetric (reflect) padding, so no dark borders.
    """
    k = kernels.shape[-1]
    p = k // 2
    n, h, w, _ = x.shape
    hp, wp = _fft_len(h + 2 * p), _fft_len(w + 2 * p)
    xt = np.ascontiguousarray(x.transpose(0, 3, 1, 2))  # pocketfft is slow on strided data
    xp = np.pad(xt, ((0, 0), (0, 0), (p, hp - h - p), (p, wp - w - p)), mode="symmetric")
    kb = kernels.reshape(-1, k, k).astype(np.float32)
    kp = np.zeros((len(kb), hp, wp), np.float32)
    kp[:, :k, :k] = kb
    fx = sfft.rfft2(xp, workers=_FFT_WORKERS)
    fk = sfft.rfft2(kp, workers=_FFT_WORKERS)[:, None]
    y = sfft.irfft2(fx * fk, s=(hp, wp), workers=_FFT_WORKERS)
    return y[:, :, 2 * p : 2 * p + h, 2 * p : 2 * p + w].transpose(0, 2, 3, 1)


def _dct_conv(x: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Convolve (n,H,W,3) float32 with one (k,k) kernel that is even in both axes, with
    symmetric padding: a pointwise product in the DCT-II domain (no padding, ~2x an FFT)."""
    n, h, w, _ = x.shape
    a = np.arange(kernel.shape[0]) - kernel.shape[0] // 2
    ch = np.cos(np.pi * np.arange(h)[:, None] * a[None, :] / h)
    cw = np.cos(np.pi * np.arange(w)[:, None] * a[None, :] / w)
    gain = (ch @ kernel @ cw.T).astype(np.float32)  # (H,W) response of the kernel
    xt = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    spec = sfft.dctn(xt, type=2, axes=(2, 3), workers=_FFT_WORKERS)
    spec *= gain
    return sfft.idctn(spec, type=2, axes=(2, 3), workers=_FFT_WORKERS).transpose(0, 2, 3, 1)


@lru_cache(maxsize=16)
def _disk_kernel(radius: float) -> np.ndarray:
    """Anti-aliased disk (8x8 supersampled coverage), normalised to sum 1."""
    half = int(np.ceil(radius)) + 1
    sub = (np.arange(8) + 0.5) / 8 - 0.5
    c = np.arange(-half, half + 1)
    fine = (c[:, None] + sub[None, :]).reshape(-1)
    inside = (fine[:, None] ** 2 + fine[None, :] ** 2) <= radius**2
    k = inside.reshape(2 * half + 1, 8, 2 * half + 1, 8).mean(axis=(1, 3)).astype(np.float32)
    return k / k.sum()


def _motion_kernels(angles: np.ndarray, trail: float, sigma: float) -> np.ndarray:
    """Per-image line kernels (n,k,k): a gaussian-weighted trail, centred on its centroid."""
    t = np.arange(0.0, trail + 1e-6, 0.5)
    w = np.exp(-(t**2) / (2 * sigma**2))
    t = t - (w * t).sum() / w.sum()
    half = int(np.ceil(np.abs(t).max())) + 1
    k = 2 * half + 1
    n = len(angles)
    py = half + np.sin(angles)[:, None] * t[None, :]  # (n,T)
    px = half + np.cos(angles)[:, None] * t[None, :]
    y0, x0 = np.floor(py).astype(np.int64), np.floor(px).astype(np.int64)
    fy, fx = py - y0, px - x0
    out = np.zeros((n, k, k), np.float64)
    img = np.broadcast_to(np.arange(n)[:, None], py.shape)
    for dy, wy in ((0, 1 - fy), (1, fy)):
        for dx, wx in ((0, 1 - fx), (1, fx)):
            np.add.at(out, (img, y0 + dy, x0 + dx), wy * wx * w[None, :])
    return (out / out.sum(axis=(1, 2), keepdims=True)).astype(np.float32)


def _reflect(c: np.ndarray, size: int) -> np.ndarray:
    """Map continuous pixel coordinates into [-0.5, size-0.5] by half-sample reflection."""
    u = np.abs(c.astype(np.float32) + np.float32(0.5))
    if u.size and u.max() >= 2 * size:
        u = np.mod(u, np.float32(2 * size))
    u -= size
    np.abs(u, out=u)
    return np.float32(size - 0.5) - u


def _bilinear_sampler(x: np.ndarray) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """Return ``sample(sy, sx, img=None)``: bilinear values of uint8 (n,H,W,3) at source
    coordinates of shape (n, ...) (or any shape, with image indices ``img`` of that shape),
    reflect fill, float32 (..., 3) out.

    RGB is packed into one uint32 per pixel so each bilinear tap is a single gather.
    """
    n, h, w, _ = x.shape
    packed = np.zeros((n, h + 2, w + 2, 4), np.uint8)  # 1-px edge pad: taps -1..H all valid
    packed[:, 1:-1, 1:-1, :3] = x
    packed[:, 0], packed[:, -1] = packed[:, 1], packed[:, -2]
    packed[:, :, 0], packed[:, :, -1] = packed[:, :, 1], packed[:, :, -2]
    flat = packed.view(np.uint32).reshape(-1)
    wp = w + 2
    base = np.arange(n, dtype=np.int64) * (h + 2) * wp

    def sample(sy: np.ndarray, sx: np.ndarray, img: np.ndarray | None = None) -> np.ndarray:
        sy, sx = _reflect(sy, h), _reflect(sx, w)
        y0, x0 = np.floor(sy), np.floor(sx)
        fy, fx = (sy - y0)[..., None], (sx - x0)[..., None]
        idx = (y0.astype(np.int64) + 1) * wp + (x0.astype(np.int64) + 1)
        idx += base.reshape((n,) + (1,) * (idx.ndim - 1)) if img is None else base[img]

        def g(offset: int) -> np.ndarray:  # all 4 bytes: contiguous casts are much faster
            return flat[idx + offset].view(np.uint8).reshape(idx.shape + (4,)).astype(np.float32)

        top = g(0)
        top += (g(1) - top) * fx
        bot = g(wp)
        bot += (g(wp + 1) - bot) * fx
        bot -= top
        bot *= fy
        top += bot
        return np.ascontiguousarray(top[..., :3])

    return sample


def _patches(cy: np.ndarray, cx: np.ndarray, half: int):
    """Square patches of side P = 2*half+1 around centres of any shape S: absolute pixel
    coords iy (S,P,1), ix (S,1,P) and float32 offsets dy, dx from the exact centre."""
    offs = np.arange(-half, half + 1)
    iy = (np.rint(cy).astype(np.int64)[..., None] + offs)[..., :, None]
    ix = (np.rint(cx).astype(np.int64)[..., None] + offs)[..., None, :]
    dy = (iy - cy[..., None, None]).astype(np.float32)
    dx = (ix - cx[..., None, None]).astype(np.float32)
    return iy, ix, dy, dx


def _image_rows(n: int, h: int, w: int, iy: np.ndarray, ix: np.ndarray) -> np.ndarray:
    """Flat pixel indices (raveled) into (n,h,w) for patch coords iy (n,P,1), ix (n,1,P);
    pixels off the image map to the extra row n*h*w."""
    rows = (np.arange(n).reshape(n, 1, 1) * h + iy) * w + ix
    off = (iy < 0) | (iy >= h) | (ix < 0) | (ix >= w)
    return np.where(off, n * h * w, rows).ravel()


def _flat_rows(n: int, hc: int, wc: int, pad: int, iy: np.ndarray, ix: np.ndarray) -> np.ndarray:
    """Flat pixel indices (raveled) into an (n,hc,wc) canvas padded by ``pad``, for patch
    coords iy (..., n, P, 1), ix (..., n, 1, P)."""
    img = np.arange(n).reshape(n, 1, 1)
    return ((img * hc + iy + pad) * wc + ix + pad).ravel()


# ---- corruptions ----------------------------------------------------------------------------


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
    return _dct_conv(_f32(x), _disk_kernel(_DEFOCUS[s - 1]))


def _motion_blur(x: np.ndarray, s: int, rng: np.random.Generator) -> np.ndarray:
    angles = rng.uniform(0, np.pi, len(x))  # same angles for every severity
    trail, sigma = _MOTION[s - 1]
    return _fft_conv(_f32(x), _motion_kernels(angles, trail, sigma))


def _scale(factors: tuple[float, ...]) -> Callable:
    def fn(x: np.ndarray, s: int, rng: np.random.Generator) -> np.ndarray:
        lut = _to_uint8(np.arange(256, dtype=np.float32) * factors[s - 1])
        return lut[x]  # PIL ImageEnhance.Brightness

    return fn


def _contrast(factors: tuple[float, ...]) -> Callable:
    def fn(x: np.ndarray, s: int, rng: np.random.Generator) -> np.ndarray:
        mean = np.floor(_mean_rgb(x) @ _LUMA + 0.5)  # (n,) grey mean, as PIL rounds it
        f = factors[s - 1]
        luts = _to_uint8(mean[:, None] + f * (np.arange(256) - mean[:, None]))
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

    iy, ix, dy, dx = _patches(by[:nb], bx[:nb], half)  # (nb,n,P,*)
    ang = np.arctan2(dy, dx)
    wobble = 1 + cols(bamp[0], nb) * np.cos(2 * ang + cols(bphase[0], nb))
    wobble += cols(bamp[1], nb) * np.cos(3 * ang + cols(bphase[1], nb))
    d = np.sqrt(dy**2 + dx**2) - cols(radius * bsize, nb) * wobble
    a_blob = cols(bdens, nb) / (1 + np.exp(d / 0.7)) * texture
    siy, six, sdy, sdx = _patches(sy[:ns], sx[:ns], half_s)
    a_speck = cols(sd, ns) * np.exp(-(sdy**2 + sdx**2) / (2 * cols(sr, ns) ** 2))

    hc, wc = h + 2 * half, w + 2 * half
    rows = np.concatenate(
        [_flat_rows(n, hc, wc, half, iy, ix), _flat_rows(n, hc, wc, half, siy, six)]
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
    iy, ix, dy, dx = _patches(cy, cx, half)  # (count,n,P,*)
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
    seen[lens] = _bilinear_sampler(x)(sy, sx, img)
    # new = ((old*(1-in) + in*seen) * keep) * (1-white) + 250*white  ==  old*mul + add
    mul = ((1 - inside) * keep * (1 - a_white))[..., None]
    add = (inside * keep * (1 - a_white))[..., None] * seen + (250.0 * a_white)[..., None]
    flat = np.empty((n * h * w + 1, 3), np.float32)  # last row: sink for off-image pixels
    flat[:-1] = x.reshape(-1, 3)
    for b in range(count):  # in order: later bubbles lie on top of earlier ones
        rows = _image_rows(n, h, w, iy[b], ix[b])
        flat[rows] = flat[rows] * mul[b].reshape(-1, 1) + add[b].reshape(-1, 3)
    return flat[:-1].reshape(n, h, w, 3)


_FUNCS: dict[str, Callable[[np.ndarray, int, np.random.Generator], np.ndarray]] = {
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


# ---- AN2DL-style shift ----------------------------------------------------------------------

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
    x8 = _to_uint8(colour.apply())

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
    xf = _bilinear_sampler(x8)(src[:, 0].reshape(n, h, w), src[:, 1].reshape(n, h, w))

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
        self.mean = _mean_rgb(x)  # (n,3) image mean, tracked through the maps

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
        grey = (self.mean @ _LUMA)[:, None]
        self._compose(f[:, None, None] * np.eye(3), (1 - f)[:, None] * grey * np.ones(3))

    def saturation(self, f: np.ndarray) -> None:
        m = f[:, None, None] * np.eye(3) + (1 - f)[:, None, None] * np.outer(_LUMA, np.ones(3))
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
        y = np.ascontiguousarray(_f32(self.x).reshape(n, h * w, 3).transpose(0, 2, 1))
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
