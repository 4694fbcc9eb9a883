"""Pretrained backbones ship the network that trained: every backbone through Keras' ``weights="imagenet"``
branch, offline (the ImageNet download replaced by a locally generated file of the same layout)."""

from __future__ import annotations

import h5py
import keras
import numpy as np
import pytest
from keras.src.legacy.saving import legacy_h5_format
from keras.src.utils import file_utils

from submission import model as runtime
from tests.conftest import SAMPLE_TRAIN, run_cli
from train.backbones import build_pretrained_network
from train.config import PRESETS, TrainConfig
from train.errors import BcsubError
from train.fit import training_input_size
from train.pipeline import resize_batch
from train.trainer import run_training

PRETRAINED = sorted(name for name, b in runtime.BACKBONES.items() if b.application)
SLOW = {"efficientnetv2m", "nasnetmobile", "convnextsmall", "efficientnetv2s"}  # about 20-40 s each here
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def _side(name: str) -> int:
    return 75 if name == "xception" else 32


def _backbone_input(name: str, images: np.ndarray) -> np.ndarray:
    """Sample images as the backbone sees them: resized, then the backbone's own preprocessing."""
    x = resize_batch(images, _side(name))
    preprocess = runtime.PREPROCESSING[runtime.BACKBONES[name].preprocessing]
    return np.asarray(x if preprocess is None else preprocess()(x))


def _calibrate(model: keras.Model, x: np.ndarray) -> None:
    """Give a random network realistic statistics: ImageNet constants in the Normalization layers Keras
    fills from the weights file, and batch-norm moving statistics measured on real images (a freshly
    initialised EfficientNet's output hardly depends on its input, so no difference would show)."""
    for layer in runtime.iter_layers(model):
        if isinstance(layer, keras.layers.Normalization) and layer.input_mean is None:
            layer.adapt_mean.assign(IMAGENET_MEAN)
            layer.adapt_variance.assign(np.square(IMAGENET_STD))
            layer.finalize_state()
    norms = [layer for layer in runtime.iter_layers(model) if isinstance(layer, keras.layers.BatchNormalization)]
    momenta = [layer.momentum for layer in norms]
    for layer in norms:
        layer.momentum = 0.0
    model(x, training=True)
    for layer, momentum in zip(norms, momenta):
        layer.momentum = momentum


def _save_h5(model: keras.Model, path) -> None:
    with h5py.File(path, "w") as handle:  # the legacy layout keras.applications loads `*_notop.h5` from
        legacy_h5_format.save_weights_to_hdf5_group(handle, model)


@pytest.fixture
def offline_imagenet(monkeypatch, tmp_path, sample_test):
    """``make(name)``: Keras' own ``weights="imagenet"`` backbone for ``name``, after writing the file every
    later ImageNet download of that backbone returns instead (random, calibrated weights)."""

    def make(name: str) -> keras.Model:
        path = tmp_path / f"{name}_notop.h5"
        monkeypatch.setattr(file_utils, "get_file", lambda *args, **kwargs: str(path))
        shape = (_side(name), _side(name), 3)
        x = _backbone_input(name, sample_test[0][::4])
        _save_h5(runtime.build_backbone(name, shape, None), path)
        reference = runtime.build_backbone(name, shape, "imagenet")  # the graph Keras builds for ImageNet
        _calibrate(reference, x)
        _save_h5(reference, path)
        return reference

    return make


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in PRETRAINED])
def test_imagenet_branch_ships_the_trained_network(name, offline_imagenet, sample_test, tmp_path):
    """Train graph and shipped runtime agree to 1e-5 on real images, and the runtime's backbone computes
    what Keras' ImageNet graph computes."""
    reference = offline_imagenet(name)
    spec = TrainConfig(data="d", out="o", backbone=name, image_size=_side(name)).model_spec()
    size = training_input_size(spec)
    images = sample_test[0][:8]
    trained = build_pretrained_network(spec, "imagenet", l2=1e-4, input_size=size, images=images)
    runtime.save_weights(trained, str(tmp_path / "w.npz"))
    shipped = runtime.load_member(str(tmp_path), {"spec": spec, "weights": "w.npz"})
    train_probs = np.asarray(trained(resize_batch(images, size), training=False))
    ship_probs = np.asarray(shipped(images.astype(np.float32), training=False))  # the identity view
    assert np.max(np.abs(train_probs - ship_probs)) <= 1e-5
    x = _backbone_input(name, images)
    keras_out = np.asarray(reference(x, training=False))
    ship_out = np.asarray(shipped.get_layer("backbone")(x, training=False))
    assert np.max(np.abs(keras_out - ship_out)) <= 1e-3 * np.max(np.abs(keras_out))
    assert np.std(keras_out[0] - keras_out[1]) > 1e-3 * np.max(np.abs(keras_out))  # the input matters


def test_a_pretrained_graph_bcsub_cannot_reproduce_fails_before_training(offline_imagenet, monkeypatch,
                                                                         sample_test):
    """EfficientNetB0's extra ImageNet Rescaling left unfolded: the build-time comparison refuses it."""
    offline_imagenet("efficientnetb0")
    monkeypatch.setattr("train.backbones.fold_rescaling_into_normalization", lambda *layers: True)
    spec = TrainConfig(data="d", out="o", backbone="efficientnetb0", image_size=32).model_spec()
    with pytest.raises(BcsubError, match="EfficientNetB0 differently with pretrained weights"):
        build_pretrained_network(spec, "imagenet", l2=0.0, input_size=32, images=sample_test[0][:8])


def test_the_gpu_recipe_trains_in_mixed_precision_and_packages(offline_imagenet, tmp_path):
    """`--preset gpu` as a GPU runs it (mixed_float16 is the default there), on the CPU: ImageNet weights,
    the frozen-backbone stage then the fine-tuning of the top layers, hybrid augmentation with CutMix/MixUp,
    two members, the step XLA-compiled; MobileNetV3Small at 32 px and 64 sample images stand in for EfficientNetV2S
    at 224 px (EfficientNetV2S itself trained so too, once, outside the suite).
    The run packages into a zip that `bcsub check` passes (float32 network = training graph)."""
    offline_imagenet("mobilenetv3small")
    out = tmp_path / "gpu"
    cfg = TrainConfig(**{**PRESETS["gpu"], "data": str(SAMPLE_TRAIN), "out": str(out), "backbone": "mobilenetv3small",
                         "image_size": 32, "epochs": 1, "fine_tune_epochs": 1, "fine_tune_layers": 10, "members": 2,
                         "balance": 8, "limit": 64, "batch_size": 16, "precision": "mixed_float16",
                         "xla": "on"})  # Keras compiles the step with XLA on a GPU
    try:
        results = run_training(cfg)
        assert keras.mixed_precision.global_policy().name == "float32"
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert len(results) == 2
    packaged = run_cli("package", str(out), "--out", str(tmp_path / "gpu.zip"), "--tta", "2")
    assert packaged.returncode == 0, packaged.stdout + packaged.stderr
    checked = run_cli("check", str(tmp_path / "gpu.zip"))
    assert checked.returncode == 0 and "passed" in checked.stdout, checked.stdout + checked.stderr
