"""The shipping runtime (submission/model.py): networks, weights, TTA views, chunked prediction."""

from __future__ import annotations

import numpy as np
import pytest

from submission import model as runtime


@pytest.fixture(scope="module")
def tiny():
    return runtime.build_network({"backbone": "tinycnn"})


def _images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 96, 96, 3), dtype=np.uint8)


def test_weights_round_trip(tiny, tmp_path):
    path = tmp_path / "w.npz"
    runtime.save_weights(tiny, str(path))
    other = runtime.build_network({"backbone": "tinycnn"})
    runtime.load_weights(other, str(path))
    x = _images(4).astype(np.float32)
    assert np.allclose(tiny.predict(x, verbose=0), other.predict(x, verbose=0), atol=1e-6)
    wrong = runtime.build_network({"backbone": "resnet-small"})
    with pytest.raises(ValueError, match="weight arrays"):
        runtime.load_weights(wrong, str(path))


def test_dihedral_views_are_the_eight_symmetries():
    import tensorflow as tf

    x = _images(1)
    views = [runtime.VIEWS[v](tf.constant(x, tf.float32)).numpy()[0] for v in runtime.DIHEDRAL_VIEWS]
    expected = [np.rot90(x[0], k) for k in range(4)] + [np.rot90(x[0][:, ::-1], k) for k in range(4)]
    for view in views:
        assert any(np.array_equal(view, e) for e in expected)
    assert len({v.tobytes() for v in views}) == 8


def test_photometric_views_keep_range():
    import tensorflow as tf

    x = tf.constant(_images(3), tf.float32)
    for name in ("bright_up", "bright_down", "contrast_up", "contrast_down", "saturation_down", "blur"):
        y = runtime.VIEWS[name](x).numpy()
        assert y.shape == x.shape and y.min() >= 0 and y.max() <= 255 and not np.array_equal(y, x.numpy())


def test_tta_matches_manual_average(tiny):
    x = _images(10)
    views = ("identity", "flip_lr", "rot90")
    ensemble = runtime.TTAEnsemble([tiny], views=views, batch_size=6)  # 2 images per chunk
    manual = np.mean([tiny.predict(np.stack([np.rot90(i) for i in x]).astype(np.float32), verbose=0)
                      if v == "rot90" else tiny.predict(
                          (x[:, :, ::-1] if v == "flip_lr" else x).astype(np.float32), verbose=0)
                      for v in views], axis=0)
    assert np.allclose(ensemble.predict_proba(x), manual, atol=1e-5)


def test_chunk_size_does_not_change_results(tiny):
    x = _images(13)
    a = runtime.TTAEnsemble([tiny], views=8, batch_size=8).predict_proba(x)
    b = runtime.TTAEnsemble([tiny], views=8, batch_size=512).predict_proba(x)
    assert np.allclose(a, b, atol=1e-5)


def test_ensemble_weights(tiny):
    other = runtime.build_network({"backbone": "tinycnn"})
    x = _images(5)
    pa = runtime.TTAEnsemble([tiny]).predict_proba(x)
    pb = runtime.TTAEnsemble([other]).predict_proba(x)
    mixed = runtime.TTAEnsemble([tiny, other], [3, 1]).predict_proba(x)
    assert np.allclose(mixed, 0.75 * pa + 0.25 * pb, atol=1e-5)


def test_predict_inputs(tiny):
    ensemble = runtime.TTAEnsemble([tiny], views=2)
    x = _images(3)
    labels = ensemble.predict(x)
    assert labels.dtype == np.int64 and labels.shape == (3,)
    assert np.array_equal(ensemble.predict(x.astype(np.float64)), labels)
    assert ensemble.predict(x[:0]).shape == (0,) and ensemble.predict([]).shape == (0,)
    assert ensemble.predict(x[:1]).shape == (1,)
    with pytest.raises(ValueError, match="shape"):
        ensemble.predict(x[:, :, :, :1])
    with pytest.raises(ValueError, match="shape"):
        ensemble.predict(x[:, :64, :64])
    with pytest.raises(ValueError, match="different shapes"):
        ensemble.predict([x[0], x[0, :64]])
    with pytest.raises(ValueError, match="unknown TTA views"):
        runtime.TTAEnsemble([tiny], views=["spin"])


def test_predict_repairs_what_codabench_could_send(tiny, capsys):
    """NaN/inf count as 0, values outside 0..255 are clipped, floats all <= 1 are 0..1 pixels (one note on
    stderr), one (96, 96, 3) image or a list is a batch: each gives the probabilities of the clean input."""
    ensemble = runtime.TTAEnsemble([tiny], views=2, batch_size=4)  # 2 images per chunk
    x = _images(5)
    clean = ensemble.predict_proba(x)
    dirty = x.astype(np.float32)
    dirty[0, :4, :4] = np.nan
    dirty[1, -4:, -4:, 1] = np.inf
    dirty[2, :4, -4:] = -np.inf
    zeroed = np.nan_to_num(dirty, nan=0.0, posinf=0.0, neginf=0.0)
    assert np.allclose(ensemble.predict_proba(dirty), ensemble.predict_proba(zeroed), atol=1e-6)
    wide = x.astype(np.int32)
    wide[:, :10] -= 400
    wide[:, -10:] += 400
    assert np.allclose(ensemble.predict_proba(wide), ensemble.predict_proba(np.clip(wide, 0, 255)), atol=1e-6)
    capsys.readouterr()
    assert np.allclose(ensemble.predict_proba(x / 255.0), clean, atol=1e-5)
    assert np.allclose(ensemble.predict_proba(x.astype(np.float32) / 255), clean, atol=1e-5)
    assert capsys.readouterr().err.count("scaled by 255") == 1  # noted once
    assert np.allclose(ensemble.predict_proba(x[0]), clean[:1], atol=1e-6)
    assert np.allclose(ensemble.predict_proba(list(x)), clean, atol=1e-6)
    assert np.allclose(ensemble.predict_proba(np.full((1, 96, 96, 3), np.nan)),
                       ensemble.predict_proba(np.zeros((1, 96, 96, 3))), atol=1e-6)


@pytest.mark.parametrize("name", sorted(runtime.BACKBONES))
def test_every_backbone_builds(name):
    size = 75 if name == "xception" else 32
    model = runtime.build_network({"backbone": name, "image_size": size})
    out = model(np.zeros((1, 96, 96, 3), np.float32), training=False).numpy()
    assert out.shape == (1, 8) and np.isclose(out.sum(), 1.0, atol=1e-4)


def test_standardized_input_ignores_brightness_and_contrast():
    """The from-scratch nets standardise each image and channel: a global gain or a contrast change
    (no clipping) gives the same prediction, as does a per-channel colour cast."""
    net = runtime.build_network({"backbone": "tinycnn"})
    assert runtime.BACKBONES["tinycnn"][1] == "standardize"
    x = np.random.default_rng(1).uniform(60, 180, (4, 96, 96, 3)).astype(np.float32)
    base = net.predict(x, verbose=0)
    gain = np.array([0.7, 0.9, 1.2], np.float32)
    for shifted in (x * 0.6, (x - x.mean()) * 0.5 + x.mean(), x * gain + 10):
        assert np.allclose(net.predict(shifted, verbose=0), base, atol=1e-4)
    flat = np.full((1, 96, 96, 3), 128, np.float32)  # a blank image: no division by zero
    assert np.isfinite(net.predict(flat, verbose=0)).all()


def _solarized(x: np.ndarray, threshold: float) -> np.ndarray:
    return np.where(x >= threshold, 255 - x, x)


def test_folded_input_ignores_solarization_at_any_threshold():
    """With "fold" preprocessing an image and its solarized copies (thresholds across the range the hidden
    shift draws, per channel too) give the same prediction; the plain standardised network does not."""
    x = _images(4, seed=3).astype(np.float32)
    folded = runtime.build_network({"backbone": "tinycnn", "image_size": 96, "preprocessing": "fold"})
    plain = runtime.build_network({"backbone": "tinycnn", "image_size": 96, "preprocessing": "standardize"})
    runtime.assign_weights(plain, folded.get_weights())  # same layout: preprocessing has no weights
    base, base_plain = folded.predict(x, verbose=0), plain.predict(x, verbose=0)
    for threshold in (96.0, 128.0, np.array([100.0, 180.0, 250.0], np.float32), 200.0):
        assert np.allclose(folded.predict(_solarized(x, threshold), verbose=0), base, atol=1e-5)
    assert not np.allclose(plain.predict(_solarized(x, 128.0), verbose=0), base_plain, atol=1e-3)
    assert not np.allclose(base, base_plain, atol=1e-3)  # it is not the standardised network in disguise


def test_network_at_training_size_shares_weights_with_the_shipping_one():
    """Training feeds images already shrunk to the network's side; the 96 px network with the same
    weights gives the same output on the full-size images."""
    from train.pipeline import resize_batch

    spec = {"backbone": "tinycnn", "image_size": 48}
    small = runtime.build_network(spec, input_size=48)
    full = runtime.build_network(spec)
    assert small.input_shape == (None, 48, 48, 3) and full.input_shape == (None, 96, 96, 3)
    full.set_weights(small.get_weights())
    x = _images(3).astype(np.float32)
    assert np.allclose(small.predict(resize_batch(x, 48).numpy(), verbose=0), full.predict(x, verbose=0),
                       atol=1e-5)


def test_logit_offsets_shift_the_posterior_by_the_class_prior():
    """A spec with logit offsets gives softmax(logits + offsets): probabilities times exp(offsets),
    renormalised; the weight layout does not change."""
    plain = runtime.build_network({"backbone": "tinycnn"})
    offsets = [0.0, 1.0, -1.0, 0.5, 0.0, 0.0, 2.0, -2.0]
    shifted = runtime.build_network({"backbone": "tinycnn", "logit_offsets": offsets})
    shifted.set_weights(plain.get_weights())
    x = _images(5).astype(np.float32)
    p = plain.predict(x, verbose=0) * np.exp(offsets)
    assert np.allclose(shifted.predict(x, verbose=0), p / p.sum(axis=1, keepdims=True), atol=1e-5)


def test_scratch_resnet_depths():
    """resnet-small keeps the weight layout its shipped zips were saved with; resnet-small-deep adds a block to
    each of the last two stages, with the same output grid."""
    small = runtime.build_backbone("resnet-small", (56, 56, 3), None)
    deep = runtime.build_backbone("resnet-small-deep", (56, 56, 3), None)
    adds = [sum(layer.__class__.__name__ == "Add" for layer in net.layers) for net in (small, deep)]
    assert adds == [4, 6]
    assert small.count_params() == 1_229_280 and len(small.get_weights()) == 60
    assert deep.output.shape == small.output.shape == (None, 4, 4, 256)
    assert deep.count_params() == 2_706_912
