"""Test-time BatchNorm adaptation in the runtime (submission/model.py) and its choice at package time."""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time

import keras
import numpy as np
import pytest

from submission import model as runtime
from tools.tta_select import _mark_adaptation_eligibility, pick_best


@pytest.fixture(scope="module")
def net():
    keras.utils.set_random_seed(0)
    model = runtime.build_network({"backbone": "tinycnn"})
    # give the statistics something to adapt from: training statistics far from the test images'
    for layer in model.get_layer("backbone").layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.moving_mean.assign(np.full(layer.moving_mean.shape, 0.5, np.float32))
            layer.moving_variance.assign(np.full(layer.moving_variance.shape, 4.0, np.float32))
    return model


def _stats(model) -> list[np.ndarray]:
    return [w.numpy().copy() for w in model.weights]


def test_adaptation_changes_predictions_leaves_weights_as_they_were_and_is_deterministic(net, sample_test):
    images = sample_test[0][:48]
    before = _stats(net)
    plain = runtime.TTAEnsemble([net], views=("identity",)).predict_proba(images)
    adapted = runtime.TTAEnsemble([net], views=("identity",), adapt_bn=16.0)
    first, second = adapted.predict_proba(images), adapted.predict_proba(images)
    np.testing.assert_array_equal(first, second)
    assert np.abs(first - plain).max() > 1e-3  # the statistics really changed during predict
    for old, new in zip(before, _stats(net)):
        np.testing.assert_array_equal(old, new)  # and were put back


def test_full_adaptation_equals_keras_batch_statistics(sample_test):
    """Outside reference: with no prior, adapting to one chunk of images must give what Keras itself
    computes in training mode (every BatchNorm normalising by the batch's statistics), layer after layer
    of a residual network with stale training statistics."""
    keras.utils.set_random_seed(1)
    model = runtime.build_network({"backbone": "resnet-small", "dropout": 0.0})
    for layer in model.get_layer("backbone").layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.moving_mean.assign(np.full(layer.moving_mean.shape, 0.3, np.float32))
            layer.moving_variance.assign(np.full(layer.moving_variance.shape, 3.0, np.float32))
    images = sample_test[0][:48].astype(np.float32)
    features = keras.Model(model.inputs, model.get_layer("pool").output)
    adaptation = runtime.BatchNormAdaptation(model, prior=1e-9)
    assert len(adaptation.layers) > 10
    before = features(images, training=False).numpy()
    adaptation.adapt(images)
    ours = features(images, training=False).numpy()
    keras_batch = features(images, training=True).numpy()
    adaptation.restore()
    assert np.abs(before - keras_batch).max() > 0.1  # the stale statistics really were far off
    np.testing.assert_allclose(ours, keras_batch, rtol=1e-3, atol=1e-3 * np.abs(keras_batch).max())


def test_adaptation_weight_grows_with_the_number_of_images(net, sample_test):
    adaptation = runtime.BatchNormAdaptation(net, prior=1e9)  # the training statistics dominate
    images = sample_test[0][:32]
    plain = runtime.TTAEnsemble([net]).predict_proba(images)
    np.testing.assert_allclose(runtime.TTAEnsemble([net], adapt_bn=1e9).predict_proba(images), plain, atol=1e-5)
    assert adaptation.layers  # tinycnn has BatchNorm layers


def test_adaptation_is_a_no_op_without_batchnorm(sample_test):
    inputs = keras.Input((96, 96, 3))
    inner = keras.Input((96, 96, 3))
    backbone = keras.Model(inner, keras.layers.Conv2D(4, 3, strides=4)(inner), name="backbone")
    x = keras.layers.GlobalAveragePooling2D()(backbone(inputs))
    model = keras.Model(inputs, keras.layers.Dense(8, activation="softmax")(x))
    images = sample_test[0][:8]
    assert runtime.BatchNormAdaptation(model, 16.0).layers == []
    np.testing.assert_array_equal(runtime.TTAEnsemble([model], adapt_bn=16.0).predict_proba(images),
                                  runtime.TTAEnsemble([model]).predict_proba(images))


def test_adaptation_memory_stays_flat_for_20000_images(net):
    """20,000 images (a broadcast view: the input itself costs nothing) adapt chunk by chunk: the process
    grows by far less than the 2.2 GB a float copy of them would take."""
    images = np.broadcast_to(np.random.default_rng(0).integers(0, 256, (1, 96, 96, 3), dtype=np.uint8),
                             (20000, 96, 96, 3))
    adaptation = runtime.BatchNormAdaptation(net, prior=16.0, chunk_size=256)
    adaptation.adapt(images[:256])  # warm-up: tracing
    peak, stop = [0.0], threading.Event()

    def rss_mb() -> float:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], rss_mb())
            time.sleep(0.01)

    start = rss_mb()
    thread = threading.Thread(target=sample)
    thread.start()
    try:
        adaptation.adapt(images)
    finally:
        stop.set()
        thread.join()
        adaptation.restore()
    assert peak[0] - start < 400


def test_only_adaptation_that_helps_on_shifted_data_at_little_clean_cost_is_eligible():
    def row(name, adapt, clean, shifted, views=8):
        return {"name": name, "views": views, "weighting": "uniform", "adapt_bn": adapt, "clean": clean,
                "shifted": shifted, "score": (clean + shifted) / 2, "weights": [1.0]}

    rows = [row("dihedral8", None, 0.98, 0.80), row("dihedral8", 256.0, 0.979, 0.86),
            row("rot4", None, 0.98, 0.79, 4), row("rot4", 256.0, 0.95, 0.90, 4),  # costs 3 clean points
            row("none", None, 0.97, 0.78, 1), row("none", 256.0, 0.97, 0.77, 1)]  # does not help
    _mark_adaptation_eligibility(rows)
    assert [r.get("eligible", True) for r in rows] == [True, True, True, False, True, False]
    best = pick_best(rows)
    assert best["name"] == "dihedral8" and best["adapt_bn"] == 256.0
    rows[1]["shifted"] = 0.79  # now adaptation hurts the shifted score: it is never picked
    _mark_adaptation_eligibility(rows)
    assert pick_best(rows)["adapt_bn"] is None


@pytest.mark.slow
def test_adaptation_and_image_repair_run_under_keras_3_4(net, sample_test, tmp_path):
    """The adapted, image-repairing, zoom-undoing runtime (erased boxes filled, tone ops undone, zooms undone) uses
    only what Keras 3.4.1 / TF 2.17 / numpy 1.26 have, and computes the same there."""
    from tools.compat_env import compat_python

    shutil.copyfile(runtime.__file__, tmp_path / "model.py")
    runtime.save_weights(net, str(tmp_path / "w.npz"))
    repair = runtime.ImageRepair.from_images(sample_test[0][32:])
    np.save(tmp_path / "ref.npy", repair.tone.reference)
    images = sample_test[0][:32].copy()
    images[::2] = np.where(images[::2] >= 200, 255 - images[::2], images[::2])  # solarised at 200
    images[1::4, 10:40, 30:60] = 77  # erased boxes
    np.save(tmp_path / "x.npy", images)
    zoom = runtime.ZoomUndo(net, np.zeros(1), 0.0)
    features = zoom.features(repair(images.astype(np.float32)))
    coef = np.random.default_rng(0).normal(size=features.shape[1])
    estimate = features @ coef
    zoom.coef = (0.3 / estimate.std() * coef).astype(np.float32)  # estimates spread 0.3 about 0
    zoom.intercept = float(-0.3 * estimate.mean() / estimate.std())
    moved = np.abs(zoom.estimate(repair(images.astype(np.float32)))) > zoom.threshold
    assert 0 < moved.sum() < len(images)  # some images are rescaled, some not
    np.save(tmp_path / "coef.npy", zoom.coef)
    script = (
        "import sys, numpy as np; sys.path.insert(0, sys.argv[1]); import model as m\n"
        "net = m.build_network({'backbone': 'tinycnn'}); m.load_weights(net, sys.argv[1] + '/w.npz')\n"
        "repair = m.ImageRepair(np.load(sys.argv[1] + '/ref.npy'), fill_erased=True)\n"
        "copy = m.build_network({'backbone': 'tinycnn'}); m.load_weights(copy, sys.argv[1] + '/w.npz')\n"
        f"zoom = m.ZoomUndo(copy, np.load(sys.argv[1] + '/coef.npy'), {zoom.intercept!r})\n"
        "p = m.TTAEnsemble([net], views=('identity', 'rot90'), adapt_bn=16.0, repair=repair, zoom=zoom).predict_proba("
        "np.load(sys.argv[1] + '/x.npy'))\nnp.save(sys.argv[1] + '/p.npy', p)\n")
    (tmp_path / "run.py").write_text(script)
    proc = subprocess.run([str(compat_python()), str(tmp_path / "run.py"), str(tmp_path)], capture_output=True,
                          text=True, timeout=900, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    copy = runtime.build_network({"backbone": "tinycnn"})
    runtime.load_weights(copy, str(tmp_path / "w.npz"))
    zoom = runtime.ZoomUndo(copy, zoom.coef, zoom.intercept)
    here = runtime.TTAEnsemble([net], views=("identity", "rot90"), adapt_bn=16.0, repair=repair,
                               zoom=zoom).predict_proba(images)
    np.testing.assert_allclose(np.load(tmp_path / "p.npy"), here, atol=1e-4)
