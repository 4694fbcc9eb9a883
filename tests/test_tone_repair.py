"""Tone repair in the runtime (submission/model.py): solarisation and equalisation undone before the network,
checked against PIL's own ops (what RandAugment/AugMix apply), and its choice at package time."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageOps

from submission import model as runtime
from tools.tta_select import _mark_adaptation_eligibility, _mark_repair_eligibility, choose_tta, pick_best


def _pil(images: np.ndarray, op) -> np.ndarray:
    return np.stack([np.asarray(op(Image.fromarray(img))) for img in images])


@pytest.fixture(scope="module")
def cells(sample_test) -> np.ndarray:
    return sample_test[0][:64]


@pytest.fixture(scope="module")
def repair(sample_test) -> runtime.ToneRepair:
    return runtime.ToneRepair.from_images(sample_test[0][64:])


def test_clean_cell_images_pass_untouched(sample_test, repair):
    images = sample_test[0].astype(np.float32)
    out = repair(images)
    changed = (out != images).reshape(len(images), -1).any(axis=1)
    assert changed.mean() <= 0.01  # measured on pbc96 train/val/test: 0.6% (a few dark pixels, no value at 255)
    assert not (runtime.ToneRepair.flatness(images) < runtime.ToneRepair.FLAT).any()


@pytest.mark.parametrize("factor", [0.5, 0.7, 0.85])
def test_darkened_images_are_not_taken_for_solarised_ones(cells, repair, factor):
    """A darker image also has no value at 255, but its border stays pale: the repair leaves it alone (it once
    mirrored the nuclei of darkened images: brightness_down@3 fell from 0.975 to 0.83)."""
    from PIL import ImageEnhance

    darker = _pil(cells, lambda im: ImageEnhance.Brightness(im).enhance(factor)).astype(np.float32)
    assert (darker.reshape(len(darker), -1).max(axis=1) < 255).all()
    unchanged = (repair(darker) == darker).reshape(len(darker), -1).all(axis=1)
    assert unchanged.mean() >= 0.95


@pytest.mark.parametrize("threshold", [160, 200, 230])
def test_pil_solarisation_is_undone_exactly_where_the_original_had_no_dark_values(cells, repair, threshold):
    keep = cells.reshape(len(cells), -1).max(axis=1) == 255
    solarized = _pil(cells[keep], lambda im: ImageOps.solarize(im, threshold)).astype(np.float32)
    detected = repair.solarized(solarized)[0]
    assert detected.mean() >= 0.85  # measured on pbc96_val at 130..230: 0.93-1.0 (a 245 threshold: 0.96)
    images, solarized = cells[keep][detected], solarized[detected]
    out = repair(solarized)
    bright = images > 255 - threshold  # the values the repair cannot confuse with flipped ones
    np.testing.assert_array_equal(out[bright], images[bright])
    assert np.abs(out - images).mean() < 0.25 * np.abs(solarized - images).mean()


def test_pil_equalisation_is_mapped_back_close_to_the_original(cells, repair):
    equalized = _pil(cells, ImageOps.equalize).astype(np.float32)
    assert (runtime.ToneRepair.flatness(equalized) < runtime.ToneRepair.FLAT).mean() >= 0.95
    out = repair(equalized)
    before, after = np.abs(equalized - cells).mean(), np.abs(out - cells).mean()
    assert after < 0.5 * before


def test_the_ensemble_repairs_each_chunk_and_leaves_the_input_as_it_was(cells, repair):
    net = runtime.build_network({"backbone": "tinycnn"})
    solarized = _pil(cells, lambda im: ImageOps.solarize(im, 200))
    copy = solarized.copy()
    with_repair = runtime.TTAEnsemble([net], views=("identity", "rot90"), batch_size=16, repair=repair)
    plain = runtime.TTAEnsemble([net], views=("identity", "rot90"), batch_size=16)
    np.testing.assert_allclose(with_repair.predict_proba(solarized), plain.predict_proba(repair(solarized.astype(
        np.float32))), atol=1e-5)
    np.testing.assert_array_equal(solarized, copy)


def test_the_manifest_round_trips_the_repair(repair, tmp_path):
    net = runtime.build_network({"backbone": "tinycnn"})
    runtime.save_weights(net, str(tmp_path / "member_0.weights.npz"))
    shipped = runtime.ImageRepair(repair.reference, fill_erased=True)
    manifest = {"members": [{"spec": {"backbone": "tinycnn"}, "weights": "member_0.weights.npz"}],
                "tta": {"views": ["identity"], "adapt_bn": None, "repair": shipped.to_json()}}
    (tmp_path / runtime.MANIFEST_NAME).write_text(__import__("json").dumps(manifest))
    loaded = runtime.load_ensemble(str(tmp_path))
    np.testing.assert_allclose(loaded.repair.tone.reference, repair.reference, atol=1e-3)
    assert loaded.repair.fill is not None


def _row(name, clean, shifted, repair=False, adapt=None, views=8):
    return {"name": name, "views": views, "weighting": "uniform", "adapt_bn": adapt, "repair": repair,
            "clean": clean, "shifted": shifted, "score": (clean + shifted) / 2, "weights": [1.0]}


def test_only_repair_that_helps_on_shifted_data_at_little_clean_cost_is_eligible():
    rows = [_row("dihedral8", 0.98, 0.80), _row("dihedral8", 0.979, 0.84, repair=True),
            _row("rot4", 0.98, 0.79, views=4), _row("rot4", 0.95, 0.90, repair=True, views=4),  # 3 clean points
            _row("none", 0.97, 0.78, views=1), _row("none", 0.97, 0.77, repair=True, views=1)]  # no help
    _mark_repair_eligibility(rows)
    assert [r.get("eligible", True) for r in rows] == [True, True, True, False, True, False]
    assert pick_best(rows)["repair"] is True
    # adaptation on top of an ineligible repair is never eligible, however well it scores
    rows.append(_row("rot4", 0.95, 0.95, repair=True, adapt=256.0, views=4))
    _mark_adaptation_eligibility(rows)
    assert rows[-1]["eligible"] is False
    rows[1]["shifted"] = 0.79
    _mark_repair_eligibility(rows)
    assert pick_best(rows)["repair"] is False


def test_choose_tta_ships_repair_when_solarised_validation_images_need_it(sample_test):
    """A network that reads only brightness gets solarised images wrong; the repair puts them right."""
    import keras

    inputs = keras.Input(runtime.IMAGE_SHAPE)
    mean = keras.layers.GlobalAveragePooling2D()(inputs)
    logits = keras.layers.Dense(runtime.NUM_CLASSES)(keras.layers.Lambda(lambda m: m[:, :1] / 255.0)(mean))
    net = keras.Model(inputs, logits)
    net.layers[-1].set_weights([np.array([[50.0] + [0.0] * 7]), np.array([-30.0] + [0.0] * 7)])
    images = sample_test[0][:48]
    labels = np.where(images[..., 0].mean(axis=(1, 2)) / 255.0 * 50 - 30 > 0, 0, 1)  # class 0: a bright red
    solarized = _pil(images, lambda im: ImageOps.solarize(im, 180))
    choice = choose_tta([net], {"clean": (images, labels), "hidden@2": (solarized, labels)}, batch_size=64)
    assert choice.repair is not None and pick_best(choice.table)["repair"] is True
    plain = [r for r in choice.table if not r["repair"]]
    assert max(r["shifted"] for r in plain) < pick_best(choice.table)["shifted"]


@pytest.mark.parametrize("threshold", [140, 200])
def test_training_dark_fold_is_what_the_repair_makes_of_a_pil_solarised_image(cells, repair, threshold):
    """The "dark_fold" augmentation (train/augment.py) shows the network exactly the runtime's output."""
    import tensorflow as tf

    from train.augment import RandomDarkFold

    images = cells[cells.reshape(len(cells), -1).max(axis=1) == 255]
    solarized = _pil(images, lambda im: ImageOps.solarize(im, threshold))
    detected = repair.solarized(solarized.astype(np.float32))[0]
    images, solarized = images[detected][:8], solarized[detected][:8]
    repaired = repair(solarized.astype(np.float32))
    # the repair reads the threshold as the largest value left + 1: t itself unless no value was t - 1
    fold = 254.0 - solarized.reshape(len(images), -1).max(axis=1)
    assert (np.abs(fold - (255 - threshold)) <= 3).all()
    layer = RandomDarkFold(1.0, max_fold=255.0)
    chosen = tf.constant(np.arange(len(images))[:, None], tf.int64)
    folded = layer.change_chosen(tf.constant(images, tf.float32), chosen, tf.constant((fold + 0.5) / 255.0,
                                                                                      tf.float32))
    np.testing.assert_array_equal(folded.numpy(), repaired)
