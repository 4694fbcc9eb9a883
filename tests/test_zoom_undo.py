"""Zoom undo in the runtime (submission/model.py ``ZoomUndo``) and its fit at package time (tools/zoom_fit.py),
checked against outside code: scipy's and PIL's resampling, and the selection rule."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from submission import model as runtime
from tests.conftest import SAMPLE_TRAIN
from tools.tta_select import _mark_eligibility, choose_tta, pick_best
from tools.zoom_fit import fit_zoom_undo, zoom_rotate


def _scipy_zoom(image: np.ndarray, log_zoom: float) -> np.ndarray:
    """``image`` magnified by exp(log_zoom) about its centre: scipy, bilinear, mirrored at the border."""
    z = np.exp(log_zoom)
    centre = (np.array(image.shape[:2]) - 1) / 2.0
    return np.stack([ndimage.affine_transform(image[..., c].astype(np.float64), np.eye(2) / z, centre - centre / z,
                                              order=1, mode="mirror") for c in range(3)], axis=-1)


def _pil_zoom_in(image: np.ndarray, factor: float) -> np.ndarray:
    """A centre crop of 1/factor of the side, resized back to the full side: PIL's zoom in."""
    side = image.shape[0]
    crop = side / factor
    box = ((side - crop) / 2, (side - crop) / 2, (side + crop) / 2, (side + crop) / 2)
    return np.asarray(Image.fromarray(image).resize((side, side), Image.Resampling.BILINEAR, box=box), np.float32)


@pytest.fixture(scope="module")
def cells(sample_test) -> np.ndarray:
    return sample_test[0][:32].astype(np.float32)


@pytest.fixture(scope="module")
def net():
    return runtime.build_network({"backbone": "tinycnn"})


def _undo(net, estimate: float) -> runtime.ZoomUndo:
    """A ZoomUndo whose estimate is ``estimate`` for every image (zero weights, that intercept)."""
    width = runtime.stage_features(net).output.shape[-1]
    return runtime.ZoomUndo(net, np.zeros(width), estimate)


@pytest.mark.parametrize("log_zoom", [-0.3, 0.25])
def test_rescaling_matches_scipy_inside_the_border(cells, log_zoom):
    ours = runtime.rescale_about_centre(cells[:4], np.full(4, -log_zoom)).numpy()
    theirs = np.stack([_scipy_zoom(x, log_zoom) for x in cells[:4]])
    # the border rows differ by the reflection convention; inside, bilinear sampling is the same arithmetic
    np.testing.assert_allclose(ours[:, 16:-16, 16:-16], theirs[:, 16:-16, 16:-16], atol=0.01)
    np.testing.assert_array_equal(runtime.rescale_about_centre(cells[:4], np.zeros(4)).numpy(), cells[:4])


def test_a_pil_zoom_in_is_undone_where_the_estimate_is_right(cells, net):
    """PIL zooms in x1.3 (a centre crop, resized up); undoing log(1.3) restores the middle of the picture."""
    zoomed = np.stack([_pil_zoom_in(x.astype(np.uint8), 1.3) for x in cells[:8]])
    undone = _undo(net, float(np.log(1.3)))(zoomed)
    inner = slice(30, 66)  # the part of the undone picture that the crop kept
    error = np.abs(undone[:, inner, inner] - cells[:8, inner, inner]).mean()
    assert error < 0.25 * np.abs(zoomed[:, inner, inner] - cells[:8, inner, inner]).mean()


def test_images_within_the_threshold_pass_untouched_and_the_input_is_left_alone(cells, net):
    copy = cells.copy()
    small = _undo(net, 0.9 * runtime.ZoomUndo.THRESHOLD)
    np.testing.assert_array_equal(small(cells), cells)
    moved = _undo(net, -1.2 * runtime.ZoomUndo.THRESHOLD)(cells)
    assert (np.abs(moved - cells).reshape(len(cells), -1).max(axis=1) > 1).all()
    np.testing.assert_array_equal(cells, copy)


def test_the_fitted_estimate_reads_the_zoom_of_images_zoomed_by_scipy(sample_test, net):
    """Fitted on the training-style zoom of the sample, the estimate tracks zooms made by other code
    (scipy's mirror mode, no rotation) on images it never saw."""
    with np.load(SAMPLE_TRAIN, allow_pickle=False) as data:
        train = data["images"]
    held_out = sample_test[0]
    undo, error = fit_zoom_undo(net, train, seed=0, n=600)
    assert error < 0.2  # log zoom, drawn from +-0.55 (spread 0.32)
    truth = np.random.default_rng(1).uniform(-0.4, 0.4, len(held_out))
    zoomed = np.stack([_scipy_zoom(x, z) for x, z in zip(held_out.astype(np.float32), truth)]).astype(np.float32)
    estimate = undo.estimate(zoomed)
    assert np.corrcoef(estimate, truth)[0, 1] > 0.6


def test_the_fit_augments_with_known_zooms(sample_test):
    image = sample_test[0][0].astype(np.float32)
    np.testing.assert_allclose(zoom_rotate(image, 0.0, 0.0), image, atol=1e-3)
    np.testing.assert_allclose(zoom_rotate(image, 0.3, 0.0)[16:-16, 16:-16], _scipy_zoom(image, 0.3)[16:-16, 16:-16],
                               atol=1e-3)


def test_the_manifest_round_trips_the_zoom_undo_with_its_own_network(net, cells, tmp_path):
    runtime.save_weights(net, str(tmp_path / "member_0.weights.npz"))
    shipped = _undo(net, 0.3)
    shipped.coef[:3] = [0.5, -0.25, 0.125]
    manifest = {"members": [{"spec": {"backbone": "tinycnn"}, "weights": "member_0.weights.npz"}],
                "tta": {"views": ["identity"], "adapt_bn": 64.0, "repair": None, "zoom": shipped.to_json()}}
    (tmp_path / runtime.MANIFEST_NAME).write_text(json.dumps(manifest))
    loaded = runtime.load_ensemble(str(tmp_path))
    np.testing.assert_allclose(loaded.zoom.estimate(cells), shipped.estimate(cells), atol=1e-4)
    assert loaded.zoom is not None and loaded.prepare.steps == [loaded.zoom]
    loaded.predict(cells)  # BatchNorm adaptation of the member does not move the zoom estimate's own copy
    np.testing.assert_allclose(loaded.zoom.estimate(cells), shipped.estimate(cells), atol=1e-4)
    old = {**manifest, "tta": {k: v for k, v in manifest["tta"].items() if k != "zoom"}}
    (tmp_path / runtime.MANIFEST_NAME).write_text(json.dumps(old))
    assert runtime.load_ensemble(str(tmp_path)).zoom is None  # zips made before the zoom undo


def _row(name, clean, shifted, zoom=False, views=8):
    return {"name": name, "views": views, "weighting": "uniform", "adapt_bn": None, "repair": True, "zoom": zoom,
            "clean": clean, "shifted": shifted, "score": (clean + shifted) / 2, "weights": [1.0]}


def test_only_a_zoom_undo_that_helps_on_shifted_data_at_little_clean_cost_is_eligible():
    rows = [_row("dihedral8", 0.98, 0.80), _row("dihedral8", 0.979, 0.82, zoom=True),
            _row("rot4", 0.98, 0.79, views=4), _row("rot4", 0.97, 0.90, zoom=True, views=4),  # a clean point
            _row("none", 0.97, 0.78, views=1), _row("none", 0.97, 0.78, zoom=True, views=1)]  # no help
    _mark_eligibility(rows, "zoom", lambda r: r["zoom"])
    assert [r.get("eligible", True) for r in rows] == [True, True, True, False, True, False]
    assert pick_best(rows)["zoom"] is True


def test_choose_tta_ships_the_zoom_undo_only_when_it_helps(sample_test):
    """A network that reads only how much of the picture is dark (a cell's size) gets shrunk cells wrong:
    undoing the shrink puts them right, so the zoom undo ships; a zoom undo that moves clean images does not."""
    import keras

    images = sample_test[0][:48]
    inputs = keras.Input(runtime.IMAGE_SHAPE)
    dark = keras.layers.Lambda(lambda x: keras.ops.mean(keras.ops.cast(keras.ops.mean(x, -1) < 180.0, "float32"),
                                                        axis=(1, 2))[:, None])(inputs)
    net = keras.Model(inputs, keras.layers.Dense(runtime.NUM_CLASSES)(dark))
    share = ((images.mean(-1) < 180).mean(axis=(1, 2)))
    cut = float(np.median(share))
    net.layers[-1].set_weights([np.array([[100.0] + [0.0] * 7]), np.array([-100.0 * cut] + [0.0] * 7)])
    labels = np.where(share > cut, 0, 1)
    shrunk = np.stack([_scipy_zoom(x, -0.4) for x in images.astype(np.float32)]).astype(np.uint8)
    sets = {"clean": (images, labels), "hidden@2": (shrunk, labels)}

    features_net = runtime.build_network({"backbone": "tinycnn"})

    def fit(estimate_for):
        def fit_zoom(repair):
            undo = _undo(features_net, 0.0)
            undo.estimate = lambda x: np.array([estimate_for(img) for img in x], np.float32)
            return undo
        return fit_zoom

    shrunk_set = {img.tobytes() for img in shrunk.astype(np.float32)}
    right = choose_tta([net], sets, batch_size=64, fit_zoom=fit(lambda img: -0.4 if img.tobytes() in shrunk_set else 0))
    assert right.zoom is not None and pick_best(right.table)["zoom"] is True
    wrong = choose_tta([net], sets, batch_size=64, fit_zoom=fit(lambda img: 0.4))  # shrinks every image again
    assert wrong.zoom is None
