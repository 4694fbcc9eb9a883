"""Tests for train.augment: presets in tf.data graph mode, range, label mixing."""

from __future__ import annotations

import os
import random

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

from train.augment import (  # noqa: E402
    FastRandAugment,
    RandomAffine,
    RandomDihedral,
    RandomJPEG,
    batch_mixer,
    image_augmenter,
)
from train.config import AUGMENT_PRESETS as PRESETS  # noqa: E402
from train.errors import BcsubError  # noqa: E402

AUGMENTED = [p for p in PRESETS if p != "none"]


def _images(n: int = 8, seed: int = 0) -> np.ndarray:
    """Synthetic 'cells': a dark purple disc of random size/place on a pale background + noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:96, :96]
    out = np.empty((n, 96, 96, 3), np.float32)
    for i in range(n):
        cy, cx, r = rng.uniform(30, 66), rng.uniform(30, 66), rng.uniform(10, 25)
        disc = ((yy - cy) ** 2 + (xx - cx) ** 2 < r**2)[..., None]
        out[i] = np.where(disc, [90, 50, 140], [240, 215, 200]) + rng.normal(0, 8, (96, 96, 3))
    return np.clip(out, 0, 255).astype(np.float32)


def _map_batches(fn, images: np.ndarray, batch: int, parallel: bool = True) -> list[np.ndarray]:
    ds = tf.data.Dataset.from_tensor_slices(images).batch(batch)
    ds = ds.map(fn, num_parallel_calls=tf.data.AUTOTUNE if parallel else None)
    return [b.numpy() for b in ds]


def _dihedral_views(img: np.ndarray) -> list[np.ndarray]:
    return [np.rot90(f, k) for f in (img, img[:, ::-1]) for k in range(4)]


@pytest.mark.parametrize("preset", AUGMENTED)
def test_preset_in_tf_data_keeps_shape_dtype_range(preset: str) -> None:
    x = _images(10)
    aug = image_augmenter(preset, seed=1)
    assert aug is not None
    batches = _map_batches(aug, x, batch=6)  # sizes 6 and 4: a short last batch too
    assert [b.shape for b in batches] == [(6, 96, 96, 3), (4, 96, 96, 3)]
    out = np.concatenate(batches)
    assert out.dtype == np.float32
    assert np.isfinite(out).all()
    assert out.min() >= 0.0 and out.max() <= 255.0
    changed = np.abs(out - x).reshape(len(x), -1).max(axis=1) > 1.0
    assert changed.sum() >= (len(x) // 2 if preset == "v1" else len(x))  # v1: identity is 1 of 8


def test_none_preset_and_unknown_preset() -> None:
    assert image_augmenter("none") is None
    with pytest.raises(BcsubError, match="v1.*hybrid"):
        image_augmenter("v9")
    with pytest.raises(BcsubError, match="none"):
        batch_mixer("strong")


def test_augmenter_accepts_uint8_and_small_batches() -> None:
    x = _images(3).astype(np.uint8)
    state = random.getstate()
    aug = image_augmenter("hybrid", seed=0)
    for n in (1, 2, 3):  # the AugMix share of a hybrid batch (and its chunks) can be empty
        out = aug(tf.constant(x[:n]))
        assert out.shape == (n, 96, 96, 3) and out.dtype == tf.float32
    assert random.getstate() == state  # AugMix's trace-time use of `random` is sandboxed


def test_v1_outputs_are_exact_dihedral_transforms_covering_all_eight() -> None:
    x = np.round(_images(64, seed=2))
    out = np.concatenate(_map_batches(image_augmenter("v1", seed=3), x, batch=32))
    seen = set()
    for img, res in zip(x, out, strict=True):
        matches = [k for k, v in enumerate(_dihedral_views(img)) if np.array_equal(v, res)]
        assert matches, "v1 output is not a flip/90-degree rotation of its input"
        seen.add(matches[0])
    assert seen == set(range(8))


def test_dihedral_index_maps_are_the_eight_symmetries() -> None:
    maps = RandomDihedral.index_maps(4, 4)
    img = np.arange(16).reshape(4, 4)
    got = {tuple(img.reshape(-1)[m]) for m in maps}
    want = {tuple(v.reshape(-1)) for v in _dihedral_views(img)}
    assert got == want and len(maps) == 8
    assert len(RandomDihedral.index_maps(4, 6)) == 4  # non-square: flips only


def test_random_affine_with_zero_ranges_is_identity() -> None:
    x = _images(2)
    out = RandomAffine(0.0, (0.0, 0.0), 0.0, seed=0)(tf.constant(x), training=True)
    np.testing.assert_allclose(out.numpy(), x, atol=1e-3)


def test_random_jpeg_compresses_only_the_chosen_images() -> None:
    """Rate 1: every image carries JPEG artefacts (and matches TF's own encoder at that quality for a
    fixed quality); rate 0: untouched; a partial rate keeps the others bit-exact."""
    x = _images(6)
    always = RandomJPEG(1.0, (20, 20), seed=0)(tf.constant(x), training=True).numpy()
    want = np.stack([tf.image.adjust_jpeg_quality(i / 255.0, 20).numpy() * 255.0 for i in x])
    np.testing.assert_allclose(always, want, atol=1e-3)
    assert np.abs(always - x).mean() > 1.0
    never = RandomJPEG(0.0, (20, 20), seed=0)(tf.constant(x), training=True).numpy()
    np.testing.assert_array_equal(never, x)
    some = RandomJPEG(0.5, (10, 70), seed=3)(tf.constant(_images(40)), training=True).numpy()
    same = (some == _images(40)).reshape(40, -1).all(axis=1)
    assert 5 < same.sum() < 35


def test_fast_randaugment_matches_keras_randaugment() -> None:
    x = tf.constant(_images(4))
    layer = FastRandAugment(value_range=(0, 255), num_ops=2, factor=0.3, seed=5)
    layer.build(x.shape)
    for _ in range(3):
        t = layer.get_random_transformation(x, training=True)
        fast = layer.transform_images(x, t)
        ref = keras.layers.RandAugment.transform_images(layer, x, t)
        np.testing.assert_allclose(fast.numpy(), np.asarray(ref), atol=1e-3)


def test_same_seed_same_views_and_batches_differ() -> None:
    x = tf.constant(_images(4))
    for preset in ("v2", "v3", "hybrid"):
        a = image_augmenter(preset, seed=7)(x).numpy()
        b = image_augmenter(preset, seed=7)(x).numpy()
        np.testing.assert_array_equal(a, b)
    same = np.repeat(_images(4)[None], 3, axis=0).reshape(12, 96, 96, 3)
    # Sequential map: two batches augmented concurrently can read the same SeedGenerator state
    # (a race in Keras' layers under a parallel map; harmless for training, but not testable).
    batches = _map_batches(image_augmenter("v2", seed=0), same, batch=4, parallel=False)
    assert not np.allclose(batches[0], batches[1]) and not np.allclose(batches[1], batches[2])


def test_batch_mixer_soft_labels_in_tf_data() -> None:
    for preset in PRESETS:
        if preset != "hybrid":
            assert batch_mixer(preset) is None
    mix = batch_mixer("hybrid", seed=0)
    x = _images(48)
    y = tf.one_hot(np.arange(48) % 8, 8)
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(16).map(mix)
    soft = False
    for images, labels in ds:
        images, labels = images.numpy(), labels.numpy()
        assert images.shape == (16, 96, 96, 3) and images.dtype == np.float32
        assert np.isfinite(images).all() and images.min() >= 0 and images.max() <= 255
        assert labels.shape == (16, 8) and labels.dtype == np.float32
        np.testing.assert_allclose(labels.sum(axis=1), 1.0, atol=1e-5)
        assert labels.min() >= 0.0
        soft |= bool(((labels > 1e-3) & (labels < 1 - 1e-3)).any())
    assert soft


def test_random_overlay_blends_a_picture_into_the_chosen_images() -> None:
    from train.augment import RandomOverlay

    x = tf.constant(_images(6))
    pictures = np.full((3, 96, 96, 3), 10, np.uint8)
    out = RandomOverlay(1.0, (0.5, 0.5), pictures, seed=1)(x, training=True).numpy()
    np.testing.assert_allclose(out, 0.5 * x.numpy() + 5.0, atol=1e-3)
    untouched = RandomOverlay(0.0, (0.5, 0.5), pictures, seed=1)(x, training=True).numpy()
    np.testing.assert_array_equal(untouched, x.numpy())
    # at 72 px (training below 96 px) the pictures are resized to the images
    small = tf.image.resize(x, (72, 72))
    assert RandomOverlay(1.0, (0.3, 0.6), pictures, seed=2)(small, training=True).shape == (6, 72, 72, 3)


def test_random_erase_fills_one_grey_rectangle_per_chosen_image() -> None:
    from train.augment import ERASE_SIDE, RandomErase

    x = tf.constant(_images(8))
    out = RandomErase(1.0, ERASE_SIDE, seed=3)(x, training=True).numpy()
    for before, after in zip(x.numpy(), out):
        changed = np.any(before != after, axis=-1)
        ys, xs = np.nonzero(changed)
        assert len(ys)
        box = after[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
        assert np.ptp(box) == 0  # one flat grey
        h, w = ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
        lo, hi = ERASE_SIDE[0] * 96 - 2, ERASE_SIDE[1] * 96 + 2
        assert lo <= h <= hi and lo <= w <= hi


def test_equalize_is_pils_equalize_per_image_and_channel() -> None:
    from PIL import Image, ImageOps

    from train.augment import equalize

    rng = np.random.default_rng(0)
    cells = _images(6).astype(np.uint8)
    flat = np.full((1, 96, 96, 3), 77, np.uint8)  # one level: PIL leaves it unchanged
    two_levels = (rng.random((1, 96, 96, 3)) < 0.3).astype(np.uint8) * 200
    x = np.concatenate([cells, flat, two_levels])
    ours = equalize(tf.constant(x, tf.float32)).numpy()
    pil = np.stack([np.asarray(ImageOps.equalize(Image.fromarray(img))) for img in x])
    np.testing.assert_array_equal(ours, pil)
    # per image: equalising a batch gives each image what it gets alone
    np.testing.assert_array_equal(equalize(tf.constant(x[:1], tf.float32)).numpy(), ours[:1])


def test_random_tone_op_gives_each_chosen_image_one_of_its_ops() -> None:
    from train.augment import LUMA, SOLARIZE_THRESHOLD, RandomToneOp, equalize

    x = _images(48)
    out = RandomToneOp(1.0, seed=5)(tf.constant(x), training=True).numpy()
    eq = equalize(tf.constant(x)).numpy()
    seen = set()
    for before, after, equalised in zip(x, out, eq):
        grey = np.repeat((before @ np.array(LUMA, np.float32))[..., None], 3, axis=-1)
        if np.allclose(after, grey, atol=1e-3):
            seen.add("grayscale")
        elif np.array_equal(after, equalised):
            seen.add("equalize")
        else:  # solarized: pixels at or above one threshold in the range are inverted, the rest kept
            inverted = ~np.isclose(after, before)
            assert inverted.any()
            np.testing.assert_allclose(after[inverted], 255 - before[inverted], atol=1e-3)
            assert before[inverted].min() >= SOLARIZE_THRESHOLD[0] - 1e-3
            assert before[inverted].min() > before[~inverted].max() or not (~inverted).any()
            seen.add("solarize")
    assert seen == {"solarize", "equalize", "grayscale"}
    untouched = RandomToneOp(0.0, seed=5)(tf.constant(x), training=True).numpy()
    np.testing.assert_array_equal(untouched, x)


@pytest.mark.parametrize("part", ["geometry_wide", "tone"])
def test_parts_outside_the_cpu_preset_keep_shape_and_range(part: str) -> None:
    """Parts that only an ablation candidate or an opt-in preset uses still run in tf.data."""
    from train.augment import PARTS, _seeds

    layers = PARTS[part](_seeds(3))
    x = _images(6)

    def run(batch):
        for layer in layers:
            batch = layer(batch, training=True)
        return batch

    out = np.concatenate(_map_batches(run, x, batch=4))
    assert out.shape == x.shape and out.min() >= 0.0 and out.max() <= 255.0
    assert (np.abs(out - x).reshape(len(x), -1).max(axis=1) > 1.0).any()


def test_augmentation_computes_in_float32_under_a_mixed_precision_policy() -> None:
    """Training on a GPU sets mixed_float16 before the batches are made: every preset (the GPU preset's
    hybrid included) still augments in float32, exactly as it does under float32 (same seed, same output).
    Before the fix, every preset from v2 on failed to trace there (a float32 gain times a float16 image)."""
    x = tf.constant(_images(8).astype(np.float32))
    y = tf.one_hot(np.arange(8) % 8, 8)

    def augmented(preset: str) -> tuple[np.ndarray, np.ndarray]:
        images = image_augmenter(preset, seed=3)(x)
        mixer = batch_mixer(preset, seed=3)
        images, labels = mixer(images, y) if mixer else (images, y)
        assert images.dtype == tf.float32 and labels.dtype == tf.float32
        return images.numpy(), labels.numpy()

    for preset in AUGMENTED:
        reference = augmented(preset)
        keras.mixed_precision.set_global_policy("mixed_float16")
        try:
            mixed = augmented(preset)
        finally:
            keras.mixed_precision.set_global_policy("float32")
        np.testing.assert_array_equal(mixed[0], reference[0], err_msg=preset)
        np.testing.assert_array_equal(mixed[1], reference[1], err_msg=preset)
