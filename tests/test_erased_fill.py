"""Erased-box fill in the runtime (submission/model.py ErasedBoxFill, part of ImageRepair): a cutout / random
erasing box is found exactly where Keras's own RandomErasing and PIL's drawing put it, filled with the mean
of the pixels around it, and clean, blown-out or greyscale images are left alone."""

from __future__ import annotations

from dataclasses import replace

import keras
import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageOps

from submission import model as runtime
from tools.shift.hidden import CALIBRATED, hidden_shift

FILL = runtime.ErasedBoxFill()


@pytest.fixture(scope="module")
def cells(sample_test) -> np.ndarray:
    return sample_test[0][:48]


def _changed(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a != b).reshape(len(a), -1).any(axis=1)


@pytest.mark.parametrize("grey", [0.0, 128.0])
def test_keras_random_erasing_boxes_are_found_exactly(cells, grey):
    layer = keras.layers.RandomErasing(factor=1.0, scale=(0.04, 0.25), fill_value=grey, value_range=(0, 255), seed=3)
    erased = np.asarray(layer(cells.astype(np.float32), training=True))
    hit = (erased != cells).any(axis=-1)
    assert hit.reshape(len(cells), -1).any(axis=1).sum() >= 8  # the layer erased enough images to judge
    for image, where in zip(erased, hit):
        ys, xs = np.nonzero(where)
        expected = (ys.min(), ys.max() + 1, xs.min(), xs.max() + 1) if len(ys) else None
        if expected and min(expected[1] - expected[0], expected[3] - expected[2]) < FILL.MIN_SIDE:
            continue  # too small to be told from a flat patch of the picture
        assert FILL.box(image) == expected


def test_pil_drawn_box_is_filled_with_the_mean_of_its_frame(cells):
    rng = np.random.default_rng(0)
    boxes, drawn = [], []
    for image in cells:
        y0, x0 = rng.integers(0, 60, 2)
        y1, x1 = y0 + rng.integers(12, 36), x0 + rng.integers(12, 36)
        picture = Image.fromarray(image)
        ImageDraw.Draw(picture).rectangle((x0, y0, x1 - 1, y1 - 1), fill=(int(rng.integers(1, 255)),) * 3)
        boxes.append((y0, y1, x0, x1))
        drawn.append(np.asarray(picture))
    drawn = np.stack(drawn).astype(np.float32)
    out = FILL(drawn)
    for image, filled, (y0, y1, x0, x1) in zip(drawn, out, boxes):
        frame = np.zeros(image.shape[:2], bool)
        frame[max(y0 - FILL.RING, 0):y1 + FILL.RING, max(x0 - FILL.RING, 0):x1 + FILL.RING] = True
        frame[y0:y1, x0:x1] = False
        expected = np.broadcast_to(image[frame].mean(axis=0), (y1 - y0, x1 - x0, 3))
        np.testing.assert_allclose(filled[y0:y1, x0:x1], expected, rtol=1e-5)
        outside = np.ones(image.shape[:2], bool)
        outside[y0:y1, x0:x1] = False
        np.testing.assert_array_equal(filled[outside], image[outside])


def test_images_without_an_erased_box_pass_untouched(sample_test):
    images = sample_test[0]
    overexposed = np.clip(images.astype(np.float32) * 1.8, 0, 255).round()  # wide exact-white backgrounds
    greyscale = np.stack([np.asarray(ImageOps.grayscale(Image.fromarray(im)).convert("RGB")) for im in images])
    posterized = np.stack([np.asarray(ImageOps.posterize(Image.fromarray(im), 1)) for im in greyscale])
    assert (overexposed == 255).all(axis=-1).mean() > 0.2
    for batch in (images, overexposed, greyscale, posterized):
        batch = batch.astype(np.float32)
        assert not _changed(FILL(batch), batch).any()


def test_the_calibrated_shifts_cutouts_are_found(cells):
    only_cutout = replace(CALIBRATED, ops_per_image=0, colour=0.0, tone=0.0, geometry=0.0, cutout_prob=1.0)
    shifted = hidden_shift(cells, seed=0, shift=only_cutout).astype(np.float32)
    found = np.array([FILL.box(image) is not None for image in shifted])
    assert found.mean() >= 0.95  # measured on pbc96_val hidden@2: 586 of its ~595 boxes


def test_image_repair_manifest_round_trip(sample_test, cells):
    repair = runtime.ImageRepair.from_images(sample_test[0][48:])
    saved = repair.to_json()
    assert saved["fill_erased"] is True
    picture = Image.fromarray(cells[0])
    ImageDraw.Draw(picture).rectangle((20, 20, 50, 50), fill=(90, 90, 90))
    erased = np.asarray(picture, np.float32)[None]
    np.testing.assert_array_equal(runtime.ImageRepair(**saved)(erased), repair(erased))
    assert _changed(repair(erased), erased).all()
    older = {"reference": saved["reference"]}  # a manifest from before the fill: no box filled
    np.testing.assert_array_equal(runtime.ImageRepair(**older)(erased), erased)
