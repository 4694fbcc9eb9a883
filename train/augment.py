"""Augmentation from Keras 3 preprocessing layers, for batched ``tf.data`` pipelines: the layers, the
``PARTS`` the presets are made of, and a preset's per-image augmenter and per-batch mixer.

Images are float32 ``(b, 96, 96, 3)`` in ``[0, 255]``; every Keras layer gets
``value_range=(0, 255)``. Apply to batches (parameters are drawn per image)::

    aug = image_augmenter("v2", seed=0)
    ds = ds.batch(64).map(lambda x, y: (aug(x), y), num_parallel_calls=tf.data.AUTOTUNE)
    mix = batch_mixer("hybrid", seed=0)  # 'hybrid' only; labels one-hot float32
    ds = ds.map(mix, num_parallel_calls=tf.data.AUTOTUNE)

Presets are named in ``train/config.py`` (``AUGMENT_PRESETS``: which ``PARTS``, in which order). Keras 3.15
quirks handled here:
- ``RandomFlip("horizontal_and_vertical")`` flips both axes with ONE coin (identity or 180 degrees
  only); ``RandomDihedral`` gives all 8 flips/90-degree rotations exactly.
- ``RandAugment`` evaluates all its ops and keeps one with ``where`` (11x the work);
  ``FastRandAugment`` runs only the chosen op.
- ``AugMix`` picks its op chains with Python's ``random`` at trace time, so in ``tf.data`` (traced
  once) it repeats one chain structure forever; ``ChunkedVariants`` gives each quarter of the
  AugMix share its own structure.
- ``Equalization`` takes each channel's histogram over the whole batch, not per image; ``equalize``
  is PIL's per-image op, batched.
- Layers given the same seed draw identical random numbers, so each layer gets its own seed.
- Strong factors make ``RandAugment``/``AugMix`` ops destroy cells (1-bit posterization, negative
  solarization, black equalized nuclei); those ops are left out (see ``RANDAUG_OPS``).
Requires the TensorFlow Keras backend (the project default).
"""

from __future__ import annotations

import functools
import random
from collections.abc import Callable, Iterator, Sequence

import keras
import numpy as np
import tensorflow as tf

from train.config import AUGMENT_PRESETS
from train.errors import BcsubError, check_choices
from train.keras_internals import op_layer, op_names, randaugment_draws, restrict_ops
from train.precision import float32_policy

VALUE_RANGE = (0.0, 255.0)

# Strengths (value_range units are 0..255). Contrast x[0.45, 1.55]; saturation x[0.33, 2.33]
# (keras maps factor f to f / (1 - f)); hue +-0.08 of the colour circle (shift = factor / 2).
ROTATION_FACTOR = 0.125  # +-45 degrees; with the 90-degree steps of v1 this covers every angle
ZOOM_FACTOR = (-0.2, 0.2)  # negative zooms in
SHIFT_FACTOR = 0.08
# "geometry_wide": zoom x[0.7, 1.4] and +-15% shifts (what the calibrated hidden shift applies to every image).
WIDE_ZOOM_FACTOR = (-0.3, 0.4)
WIDE_SHIFT_FACTOR = 0.15
BRIGHTNESS_FACTOR = 0.15
CONTRAST_FACTOR = 0.55  # keras sorts a (lower, upper) tuple, so asymmetric ranges are not possible
SATURATION_FACTOR = (0.25, 0.70)
HUE_FACTOR = 0.16
CHANNEL_GAIN = 0.08  # per-channel x[0.92, 1.08] stain/white-balance cast
CHANNEL_SHIFT = 8.0  # per-channel +-8 offset
# Exposure: a global gain, clipped at 255. The from-scratch nets standardise each image, so a gain
# alone changes nothing for them; what it teaches is the blown-out background of an over-exposed slide.
EXPOSURE_GAIN = (0.7, 1.45)
JPEG_PROB = 0.3
JPEG_QUALITY = (8, 75)  # the shift suite's JPEG corruption spans quality 50..7
BLUR_PROB = 0.25
BLUR_SIGMA = (0.3, 1.5)
NOISE_PROB = 0.3
NOISE_MAX_STD = 12.0
# Ops dropped after looking at previews of real cells: Keras's factor->magnitude map makes
# posterization 1-bit and solarization a near-negative; per-channel equalization turns nuclei black
# and the background to noise. RandAugment's rotation/translation (RandomAffine covers them; at
# +-30 % shift the cell leaves the frame) and brightness (+-76 on top of the jitter: black nuclei)
# are dropped too.
RANDAUG_FACTOR = 0.25
RANDAUG_NUM_OPS = 2
RANDAUG_OPS = (
    "random_shear",
    "random_color_degeneration",
    "random_contrast",
    "random_sharpness",
    "auto_contrast",
)
# "randaugment_strong" (what the best from-scratch 2024 team found moved its CodaBench score: 3 ops per
# image at magnitude 0.5, colour-destroying ops included, at a factor that keeps the cell readable).
STRONG_RANDAUG_FACTOR = 0.5
STRONG_RANDAUG_NUM_OPS = 3
STRONG_RANDAUG_OPS = RANDAUG_OPS + ("equalization", "random_posterization", "solarization")
# "overlay": blend a picture unrelated to blood cells into the image (a 2024 team: 0.25 -> 0.53 on CodaBench).
OVERLAY_PROB = 0.5
OVERLAY_ALPHA = (0.15, 0.6)
# "tone": the RandAugment ops the "randaugment" part leaves out, each chosen image gets one of them:
# solarization (pixels at or above a threshold in 95..255 inverted, PIL's op), per-image per-channel histogram
# equalisation (PIL's op), greyscale. Alone, solarization took the CPU recipe's validation accuracy from 0.99 to
# 0.26 and equalisation to 0.71; training with them ("v3t") did not pay in 20 CPU epochs (bench/ablate_shift.py).
TONE_PROB = 0.3
TONE_OPS = ("solarize", "equalize", "grayscale")
SOLARIZE_THRESHOLD = (95.0, 255.0)
LUMA = (0.299, 0.587, 0.114)
# "dark_fold": what the runtime's tone repair (submission/model.py ToneRepair) leaves of an image solarised at a
# threshold t >= 128: the bright values come back, the values at most 255 - t come out mirrored (v -> 255 - v).
# Training on it teaches the network the repaired images without teaching it solarisation itself.
DARK_FOLD_PROB = 0.15
DARK_FOLD_MAX = 127.0
# "erase": one rectangle of a random grey per chosen image (cutout; a 2024 team: 0.87 -> 0.90).
ERASE_PROB = 0.3
ERASE_SIDE = (0.2, 0.5)  # fraction of the image side
AUGMIX_FACTOR = 0.2
AUGMIX_OPS = (
    "random_shear",
    "random_translation",
    "random_rotation",
    "auto_contrast",
    "random_brightness",
    "random_color_degeneration",
    "random_contrast",
    "random_sharpness",
)
AUGMIX_DEPTH = 2  # keras picks op-or-nothing per slot: mean 1.8 ops/chain (paper: 1-3, mean 2)
AUGMIX_CHUNKS = 4  # chain structures per batch (see ChunkedVariants)
AUGMIX_FRACTION = 0.25  # share of each hybrid batch given AugMix (~5x the cost of RandAugment)
MIXUP_ALPHA = 0.4
CUTMIX_FACTOR = 1.0


class RandomDihedral(keras.layers.Layer):
    """Each image gets one of the 8 flips/90-degree rotations, uniformly (exact, one gather pass).

    Same distribution as two single-axis ``RandomFlip`` layers plus a random transpose, ~4x faster
    (no Keras layer gives exact 90-degree rotations). Non-square images get the 4 flips only.
    """

    def __init__(self, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.generator = keras.random.SeedGenerator(seed)

    @staticmethod
    def index_maps(height: int, width: int) -> np.ndarray:
        """(k, height*width) flat source index of each output pixel, for each transform k."""
        idx = np.arange(height * width, dtype=np.int32).reshape(height, width)
        bases = (idx, idx.T) if height == width else (idx,)
        return np.stack(
            [m.reshape(-1) for t in bases for m in (t, t[::-1], t[:, ::-1], t[::-1, ::-1])]
        )

    def call(self, images, training=True):
        if not training:
            return images
        _, height, width, channels = images.shape
        maps = tf.constant(self.index_maps(height, width))
        n = tf.shape(images)[0]
        k = keras.random.randint((n,), 0, maps.shape[0], seed=self.generator)
        flat = tf.reshape(images, (n, height * width, channels))
        out = tf.gather(flat, tf.gather(maps, k), batch_dims=1)
        return tf.reshape(out, tf.shape(images))


class RandomAffine(keras.layers.Layer):
    """Rotation, zoom and shift fused into ONE resampling (``keras.ops.image.affine_transform``).

    Same ranges as ``RandomRotation(rotation)``, ``RandomZoom(zoom)`` and
    ``RandomTranslation(shift, shift)`` in a row, at a third of the cost and one interpolation.
    """

    def __init__(
        self,
        rotation: float,
        zoom: tuple[float, float],
        shift: float,
        fill_mode: str = "reflect",
        seed: int | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.rotation, self.zoom, self.shift, self.fill_mode = rotation, zoom, shift, fill_mode
        self.generator = keras.random.SeedGenerator(seed)

    def call(self, images, training=True):
        if not training:
            return images
        _, height, width, _ = images.shape
        n = tf.shape(images)[0]
        u = keras.random.uniform((n, 4), -1.0, 1.0, seed=self.generator)
        angle = u[:, 0] * self.rotation * 2.0 * np.pi
        lo, hi = self.zoom
        scale = 1.0 + lo + (u[:, 1] + 1.0) * 0.5 * (hi - lo)  # < 1 zooms in
        tx, ty = u[:, 2] * self.shift * width, u[:, 3] * self.shift * height
        cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
        cos, sin = tf.cos(angle) * scale, tf.sin(angle) * scale
        # output (x, y) -> input: scale * R(angle) @ (p - c) + c - t
        a2 = cx - cos * cx + sin * cy - tx
        b2 = cy - sin * cx - cos * cy - ty
        zeros = tf.zeros_like(cos)
        transform = tf.stack([cos, -sin, a2, sin, cos, b2, zeros, zeros], axis=1)
        return keras.ops.image.affine_transform(
            images, transform, interpolation="bilinear", fill_mode=self.fill_mode
        )


class FastRandAugment(keras.layers.RandAugment):
    """``keras.layers.RandAugment`` restricted to ``ops``, running only the chosen op.

    Keras draws the ops once per batch but evaluates all of them and selects with ``where``; here
    ``tf.switch_case`` runs only the chosen one (same output for the same random transformation).
    """

    def __init__(self, ops: tuple[str, ...] = RANDAUG_OPS, **kwargs):
        super().__init__(**kwargs)
        check_choices(ops, op_names(self), "RandAugment ops")
        restrict_ops(self, ops)

    def transform_images(self, images, transformation, training=True):
        images = tf.cast(images, self.compute_dtype)
        if not training:
            return images
        transforms, chosen = randaugment_draws(transformation)
        names = list(transforms)
        for i in range(self.num_ops):
            branches = [
                functools.partial(_apply_op, self, name, images, transforms[name]) for name in names
            ]
            images = tf.switch_case(chosen[i], branches)
        return images


class CellAugMix(keras.layers.AugMix):
    """``keras.layers.AugMix`` restricted to ``ops``.

    Keras picks each chain's ops with Python's ``random`` while tracing, so in a traced graph the
    chain structure is fixed (magnitudes and mixing weights stay random); see ``ChunkedVariants``.
    """

    def __init__(self, ops: tuple[str, ...] = AUGMIX_OPS, **kwargs):
        super().__init__(all_ops=True, **kwargs)
        check_choices(ops, op_names(self), "AugMix ops")
        restrict_ops(self, ops)


def _apply_op(parent: keras.layers.Layer, name: str, images, transform):
    """``parent``'s sub-layer ``name`` applied with a drawn ``transform``; dtype and shape kept."""
    out = op_layer(parent, name).transform_images(images, transform)
    return tf.ensure_shape(tf.cast(out, parent.compute_dtype), images.shape)


class RandomChannelCast(keras.layers.Layer):
    """Per-image exposure (one gain in ``exposure``), then a per-channel gain and offset: a stain /
    white-balance cast; clipped to 0..255."""

    def __init__(self, gain: float, shift: float, exposure: tuple[float, float] = (1.0, 1.0),
                 seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.gain, self.shift, self.exposure = gain, shift, exposure
        self.generator = keras.random.SeedGenerator(seed)

    def call(self, images, training=True):
        if not training:
            return images
        n = tf.shape(images)[0]
        shape = (n, 1, 1, 3)
        g = keras.random.uniform(shape, 1.0 - self.gain, 1.0 + self.gain, seed=self.generator)
        g *= keras.random.uniform((n, 1, 1, 1), *self.exposure, seed=self.generator)
        b = keras.random.uniform(shape, -self.shift, self.shift, seed=self.generator)
        return tf.clip_by_value(images * g + b, *VALUE_RANGE)


class RandomPerImage(keras.layers.Layer):
    """Base for layers that change each image with probability ``rate``: draws which images, and for
    each chosen one a strength in [0, 1), then calls ``change_chosen`` on just those."""

    def __init__(self, rate: float, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.rate = rate
        self.generator = keras.random.SeedGenerator(seed)

    def call(self, images, training=True):
        if not training:
            return images
        u = keras.random.uniform((tf.shape(images)[0], 2), seed=self.generator)
        chosen = tf.where(u[:, 0] < self.rate)  # (m, 1) indices
        return self.change_chosen(images, chosen, tf.gather(u[:, 1], chosen[:, 0]))

    def change_chosen(self, images, chosen, strength):
        raise NotImplementedError


class RandomJPEG(RandomPerImage):
    """With probability ``rate`` per image, JPEG-compress it at a quality drawn from ``quality``
    (TensorFlow's encoder, 4:2:0 chroma subsampling). Only the chosen images are encoded."""

    def __init__(self, rate: float, quality: tuple[int, int], seed: int | None = None, **kwargs):
        super().__init__(rate, seed, **kwargs)
        self.quality = quality

    def change_chosen(self, images, chosen, strength):
        lo, hi = self.quality
        quality = tf.cast(lo + strength * (hi - lo + 1), tf.int32)
        pixels = tf.gather_nd(images, chosen) / 255.0
        compressed = tf.map_fn(lambda a: tf.image.adjust_jpeg_quality(a[0], a[1]), (pixels, quality),
                               fn_output_signature=tf.TensorSpec(images.shape[1:], tf.float32))
        return tf.tensor_scatter_nd_update(images, chosen, compressed * 255.0)


class RandomGaussianNoise(RandomPerImage):
    """With probability ``rate`` per image, add N(0, s^2) noise with s ~ U(0, max_std).

    Noise is drawn only for the chosen images (normal draws are the costly part).
    """

    def __init__(self, rate: float, max_std: float, seed: int | None = None, **kwargs):
        super().__init__(rate, seed, **kwargs)
        self.max_std = max_std

    def change_chosen(self, images, chosen, strength):
        shape = tf.concat([tf.shape(chosen)[:1], tf.shape(images)[1:]], axis=0)
        noise = keras.random.normal(shape, seed=self.generator) * (strength * self.max_std)[:, None, None, None]
        return tf.clip_by_value(tf.tensor_scatter_nd_add(images, chosen, noise), *VALUE_RANGE)


class RandomToneOp(RandomPerImage):
    """With probability ``rate`` per image, one of ``TONE_OPS`` (equally likely): solarize above a threshold
    drawn from ``threshold``, equalise each channel's histogram, or make the image grey."""

    def __init__(self, rate: float, threshold: tuple[float, float] = SOLARIZE_THRESHOLD, seed: int | None = None,
                 **kwargs):
        super().__init__(rate, seed, **kwargs)
        self.threshold = threshold

    def change_chosen(self, images, chosen, strength):
        picked = tf.gather_nd(images, chosen)
        op = tf.cast(tf.minimum(strength * len(TONE_OPS), len(TONE_OPS) - 1), tf.int32)[:, None, None, None]
        level = (strength * len(TONE_OPS) - tf.cast(op[:, 0, 0, 0], tf.float32))[:, None, None, None]  # 0..1
        lo, hi = self.threshold
        solarized = tf.where(picked >= lo + level * (hi - lo), 255.0 - picked, picked)
        grey = tf.broadcast_to(tf.reduce_sum(picked * tf.constant(LUMA), axis=-1, keepdims=True), tf.shape(picked))
        changed = tf.where(op == 0, solarized, tf.where(op == 1, equalize(picked), grey))
        return tf.tensor_scatter_nd_update(images, chosen, changed)


class RandomDarkFold(RandomPerImage):
    """With probability ``rate`` per image, mirror every value at most f (v -> 255 - v), f drawn from
    0..``max_fold``: a solarised image as the runtime's tone repair returns it (``DARK_FOLD_PROB``)."""

    def __init__(self, rate: float, max_fold: float = DARK_FOLD_MAX, seed: int | None = None, **kwargs):
        super().__init__(rate, seed, **kwargs)
        self.max_fold = max_fold

    def change_chosen(self, images, chosen, strength):
        picked = tf.gather_nd(images, chosen)
        fold = (strength * self.max_fold)[:, None, None, None]
        return tf.tensor_scatter_nd_update(images, chosen, tf.where(picked <= fold, 255.0 - picked, picked))


def equalize(images):
    """Per-image, per-channel histogram equalisation of float (m,H,W,C) images in 0..255: PIL's
    ``ImageOps.equalize`` (RandAugment's op), batched. The brightest level's pixels are left out of the step."""
    shape = tf.shape(images)
    m, c = shape[0], shape[3]
    levels = tf.cast(tf.clip_by_value(tf.round(images), 0.0, 255.0), tf.int32)
    rows = tf.reshape(tf.transpose(levels, (0, 3, 1, 2)), (m * c, -1))  # one row per image channel
    hist = tf.math.bincount(rows, minlength=256, maxlength=256, axis=-1)
    brightest = 255 - tf.argmax(tf.reverse(tf.cast(hist > 0, tf.int32), axis=[-1]), axis=-1, output_type=tf.int32)
    step = (tf.shape(rows)[1] - tf.gather(hist, brightest, batch_dims=1)) // 255
    below = tf.cumsum(hist, axis=-1, exclusive=True)  # pixels darker than each level
    lut = tf.minimum(255, (step[:, None] // 2 + below) // tf.maximum(step, 1)[:, None])
    lut = tf.where(step[:, None] > 0, lut, tf.range(256)[None, :])  # one level only: unchanged
    out = tf.cast(tf.gather(lut, rows, batch_dims=1), images.dtype)
    return tf.transpose(tf.reshape(out, (m, c, shape[1], shape[2])), (0, 2, 3, 1))


def overlay_pictures(n: int = 256, seed: int = 4321) -> np.ndarray:
    """``n`` 96x96 pictures unrelated to blood cells for the "overlay" part: crops of scikit-learn's bundled
    china photo and smooth colour noise (deliberately not the flower crops and drawn shapes the
    local-score hidden shift overlays, so training does not see the test's pictures)."""
    from PIL import Image
    from sklearn.datasets import load_sample_image

    photo = load_sample_image("china.jpg")
    rng = np.random.default_rng(seed)
    h, w, _ = photo.shape
    out = np.empty((n, 96, 96, 3), np.uint8)
    for i in range(n):
        if i % 2 == 0:
            side = int(rng.uniform(0.25, 1.0) * min(h, w))
            y, x = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
            out[i] = np.asarray(Image.fromarray(photo[y:y + side, x:x + side]).resize((96, 96)))
        else:
            coarse = rng.uniform(0, 255, (int(rng.integers(2, 9)),) * 2 + (3,)).astype(np.uint8)
            out[i] = np.asarray(Image.fromarray(coarse).resize((96, 96), Image.Resampling.BICUBIC))
    return out


class RandomOverlay(RandomPerImage):
    """With probability ``rate`` per image, blend in one of ``pictures`` (resized to the image) with a
    weight drawn from ``alpha``."""

    def __init__(self, rate: float, alpha: tuple[float, float], pictures: np.ndarray, seed: int | None = None,
                 **kwargs):
        super().__init__(rate, seed, **kwargs)
        self.alpha = alpha
        self.pictures = tf.constant(pictures, tf.float32)

    def change_chosen(self, images, chosen, strength):
        m = tf.shape(chosen)[0]
        pick = keras.random.randint((m,), 0, int(self.pictures.shape[0]), seed=self.generator)
        pictures = tf.image.resize(tf.gather(self.pictures, pick), tf.shape(images)[1:3])
        lo, hi = self.alpha
        a = (lo + strength * (hi - lo))[:, None, None, None]
        blended = (1 - a) * tf.gather_nd(images, chosen) + a * pictures
        return tf.tensor_scatter_nd_update(images, chosen, blended)


class RandomErase(RandomPerImage):
    """With probability ``rate`` per image, fill one rectangle (sides a fraction ``side`` of the image's)
    at a random place with a random grey."""

    def __init__(self, rate: float, side: tuple[float, float], seed: int | None = None, **kwargs):
        super().__init__(rate, seed, **kwargs)
        self.side = side

    def change_chosen(self, images, chosen, strength):
        m = tf.shape(chosen)[0]
        h, w = tf.cast(tf.shape(images)[1], tf.float32), tf.cast(tf.shape(images)[2], tf.float32)
        u = keras.random.uniform((m, 5), seed=self.generator)
        lo, hi = self.side
        sh, sw = (lo + u[:, 0] * (hi - lo)) * h, (lo + strength * (hi - lo)) * w
        y0, x0 = u[:, 1] * (h - sh), u[:, 2] * (w - sw)
        ys = tf.range(h)[None, :, None]
        xs = tf.range(w)[None, None, :]
        inside = ((ys >= y0[:, None, None]) & (ys < (y0 + sh)[:, None, None])
                  & (xs >= x0[:, None, None]) & (xs < (x0 + sw)[:, None, None]))[..., None]
        grey = (u[:, 3] * 255.0)[:, None, None, None]
        erased = tf.where(inside, grey, tf.gather_nd(images, chosen))
        return tf.tensor_scatter_nd_update(images, chosen, erased)


class ChunkedVariants(keras.layers.Layer):
    """Split the batch into ``n`` chunks and trace ``layer`` separately for each.

    For layers (AugMix) that draw their structure with Python's ``random`` at trace time: ``n``
    chunks get ``n`` different structures (a ``tf.switch_case`` over traced variants costs far
    more per batch on CPU). Python's ``random`` is seeded per chunk and restored afterwards, so the
    structures depend on ``seed`` only.
    """

    def __init__(self, layer: keras.layers.Layer, n: int, seed: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.inner, self.n, self.seed = layer, n, seed

    def build(self, input_shape):  # building children avoids Keras's extra symbolic trace
        self.inner.build(input_shape)

    def call(self, images, training=True):
        if not training:
            return images
        size = tf.shape(images)[0]
        bounds = [size * i // self.n for i in range(self.n + 1)]
        parts = []
        for i in range(self.n):
            state = random.getstate()
            random.seed(self.seed * 1000 + i)
            try:
                parts.append(_maybe(self.inner, images[bounds[i] : bounds[i + 1]]))
            finally:
                random.setstate(state)
        return tf.concat(parts, axis=0)


def _maybe(layer: keras.layers.Layer, images):
    """``layer(images)``, skipped for an empty slice (AutoContrast fails on one)."""
    return tf.cond(
        tf.shape(images)[0] > 0,
        lambda: tf.ensure_shape(layer(images, training=True), images.shape),
        lambda: images,
    )


class SplitApply(keras.layers.Layer):
    """The first ``fraction`` of the batch goes through ``first``, the rest through ``second``.

    A per-image choice when the dataset is shuffled before batching; each image pays for one layer.
    """

    def __init__(
        self, first: keras.layers.Layer, second: keras.layers.Layer, fraction: float, **kwargs
    ):
        super().__init__(**kwargs)
        self.first, self.second, self.fraction = first, second, fraction

    def build(self, input_shape):  # building children avoids Keras's extra symbolic trace
        self.first.build(input_shape)
        self.second.build(input_shape)

    def call(self, images, training=True):
        if not training:
            return images
        n = tf.shape(images)[0]
        cut = tf.cast(tf.round(tf.cast(n, tf.float32) * self.fraction), tf.int32)
        a = _maybe(self.first, images[:cut])
        b = _maybe(self.second, images[cut:])
        return tf.concat([a, b], axis=0)


def check_preset(preset: str) -> None:
    """Raise the error naming the presets when ``preset`` is not one of them."""
    if preset not in AUGMENT_PRESETS:
        raise BcsubError(
            f"unknown augmentation preset {preset!r}; use one of: {', '.join(AUGMENT_PRESETS)}"
        )


def _seeds(seed: int) -> Iterator[int]:
    """Distinct per-layer seeds (layers with equal seeds draw identical random numbers)."""
    i = 0
    while True:
        i += 1
        yield seed * 1000 + i


def _dihedral(s: Iterator[int]) -> list[keras.layers.Layer]:
    return [RandomDihedral(seed=next(s))]


def _geometry(s: Iterator[int]) -> list[keras.layers.Layer]:
    return [RandomAffine(ROTATION_FACTOR, ZOOM_FACTOR, SHIFT_FACTOR, seed=next(s))]


def _colour(s: Iterator[int]) -> list[keras.layers.Layer]:
    return [
        keras.layers.RandomColorJitter(
            value_range=VALUE_RANGE,
            brightness_factor=BRIGHTNESS_FACTOR,
            contrast_factor=CONTRAST_FACTOR,
            saturation_factor=SATURATION_FACTOR,
            hue_factor=HUE_FACTOR,
            seed=next(s),
        ),
        RandomChannelCast(CHANNEL_GAIN, CHANNEL_SHIFT, EXPOSURE_GAIN, seed=next(s)),
    ]


def _degrade(s: Iterator[int]) -> list[keras.layers.Layer]:
    return [
        keras.layers.RandomGaussianBlur(
            factor=(BLUR_PROB, BLUR_PROB),
            kernel_size=5,
            sigma=BLUR_SIGMA,
            value_range=VALUE_RANGE,
            seed=next(s),
        ),
        RandomGaussianNoise(NOISE_PROB, NOISE_MAX_STD, seed=next(s)),
        RandomJPEG(JPEG_PROB, JPEG_QUALITY, seed=next(s)),
    ]


def _randaugment_layer(s: Iterator[int]) -> keras.layers.Layer:
    return FastRandAugment(
        value_range=VALUE_RANGE, num_ops=RANDAUG_NUM_OPS, factor=RANDAUG_FACTOR, seed=next(s)
    )


def _strong_randaugment_layer(s: Iterator[int]) -> keras.layers.Layer:
    return FastRandAugment(ops=STRONG_RANDAUG_OPS, value_range=VALUE_RANGE, num_ops=STRONG_RANDAUG_NUM_OPS,
                           factor=STRONG_RANDAUG_FACTOR, seed=next(s))


@functools.cache
def _overlay_bank() -> np.ndarray:
    return overlay_pictures()


def _augmix_layer(s: Iterator[int]) -> keras.layers.Layer:
    layer = CellAugMix(
        value_range=VALUE_RANGE, factor=AUGMIX_FACTOR, chain_depth=AUGMIX_DEPTH, seed=next(s)
    )
    return ChunkedVariants(layer, AUGMIX_CHUNKS, seed=next(s))


# The layer groups the presets (``AUGMENT_PRESETS``) are made of: name -> builder taking the per-layer seeds.
PARTS: dict[str, Callable[[Iterator[int]], list[keras.layers.Layer]]] = {
    "dihedral": _dihedral,
    "geometry": _geometry,
    "geometry_wide": lambda s: [RandomAffine(ROTATION_FACTOR, WIDE_ZOOM_FACTOR, WIDE_SHIFT_FACTOR, seed=next(s))],
    "randaugment": lambda s: [_randaugment_layer(s)],
    "augmix_or_randaugment": lambda s: [SplitApply(_augmix_layer(s), _randaugment_layer(s), AUGMIX_FRACTION)],
    "colour": _colour,
    "degrade": _degrade,
    "randaugment_strong": lambda s: [_strong_randaugment_layer(s)],
    "overlay": lambda s: [RandomOverlay(OVERLAY_PROB, OVERLAY_ALPHA, _overlay_bank(), seed=next(s))],
    "tone": lambda s: [RandomToneOp(TONE_PROB, seed=next(s))],
    "dark_fold": lambda s: [RandomDarkFold(DARK_FOLD_PROB, seed=next(s))],
    "erase": lambda s: [RandomErase(ERASE_PROB, ERASE_SIDE, seed=next(s))],
}


def parts_pipeline(parts: Sequence[str], seed: int, name: str) -> keras.layers.Pipeline | None:
    """The per-image layers of ``parts`` (``PARTS``), each with its own seed drawn from ``seed``, built, in one
    Pipeline that computes in float32 under a mixed-precision training policy too; None for no layers."""
    with float32_policy():
        s = _seeds(seed)
        layers = [layer for part in parts for layer in PARTS[part](s)]
        if not layers:
            return None
        for layer in layers:  # built now, Keras does not trace each container symbolically first
            layer.build((None, None, None, 3))
        return keras.layers.Pipeline(layers, name=name)


def image_augmenter(preset: str, seed: int = 0) -> Callable[[tf.Tensor], tf.Tensor] | None:
    """Per-image augmentation for a batch: float32 (b,96,96,3) in [0,255] -> same shape/dtype/range.

    None for preset 'none'. Unknown preset -> BcsubError naming the allowed presets. Works eagerly
    and inside ``tf.data`` ``map`` (graph mode); random draws differ per batch and per epoch.
    """
    check_preset(preset)
    pipeline = parts_pipeline(AUGMENT_PRESETS[preset].parts, seed, f"augment_{preset}")
    if pipeline is None:
        return None

    def run(images: tf.Tensor) -> tf.Tensor:
        out = tf.cast(pipeline(images, training=True), tf.float32)
        out = tf.clip_by_value(tf.where(tf.math.is_finite(out), out, 0.0), *VALUE_RANGE)
        return tf.ensure_shape(out, images.shape)

    compiled: dict[tuple[int, ...], Callable[[tf.Tensor], tf.Tensor]] = {}

    def augment(images: tf.Tensor) -> tf.Tensor:
        images = tf.cast(images, tf.float32)
        if not tf.executing_eagerly():  # tf.data map / tf.function: already a graph
            return run(images)
        key = tuple(images.shape[1:])  # eager: one compiled graph per image size, any batch size
        if key not in compiled:
            spec = tf.TensorSpec((None, *key), tf.float32)
            compiled[key] = tf.function(run, input_signature=[spec])
        return compiled[key](images)

    return augment


def batch_mixer(
    preset: str, seed: int = 0
) -> Callable[[tf.Tensor, tf.Tensor], tuple[tf.Tensor, tf.Tensor]] | None:
    """Per-batch CutMix or MixUp (coin flip per batch) for presets that mix ('hybrid'); else None.

    (images float32 (b,96,96,3), labels one-hot float32 (b,8)) -> (mixed images, soft labels that
    sum to 1). Apply after batching (and after ``image_augmenter``).
    """
    check_preset(preset)
    if not AUGMENT_PRESETS[preset].mix:
        return None
    s = _seeds(seed + 7919)
    with float32_policy():
        cutmix = keras.layers.CutMix(factor=CUTMIX_FACTOR, seed=next(s))
        mixup = keras.layers.MixUp(alpha=MIXUP_ALPHA, seed=next(s))
    coin_gen = keras.random.SeedGenerator(next(s))

    def mix(images: tf.Tensor, labels: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        images = tf.cast(images, tf.float32)
        labels = tf.cast(labels, tf.float32)
        data = {"images": images, "labels": labels}

        def run(layer: keras.layers.Layer) -> Callable[[], tuple[tf.Tensor, tf.Tensor]]:
            def branch() -> tuple[tf.Tensor, tf.Tensor]:
                out = layer(data, training=True)
                return tf.cast(out["images"], tf.float32), tf.cast(out["labels"], tf.float32)

            return branch

        coin = keras.random.uniform((), seed=coin_gen) < 0.5
        x, y = tf.cond(coin, run(cutmix), run(mixup))
        x = tf.ensure_shape(tf.clip_by_value(x, *VALUE_RANGE), images.shape)
        y = y / tf.reduce_sum(y, axis=-1, keepdims=True)
        return x, tf.ensure_shape(y, labels.shape)

    return mix
