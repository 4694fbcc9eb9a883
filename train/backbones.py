"""Backbone weights (imagenet | none | PATH), loaded into the graph that ships, and the freezing rules of
two-stage fine-tuning."""

from __future__ import annotations

import socket
from pathlib import Path

import keras
import numpy as np

from submission.model import (
    BACKBONES,
    PREPROCESSING,
    assign_weights,
    build_backbone,
    build_network,
    iter_layers,
)
from train.errors import BcsubError
from train.keras_internals import fold_rescaling_into_normalization
from train.precision import float32_policy

FROM_SCRATCH = {name for name, backbone in BACKBONES.items() if not backbone.application}
DOWNLOAD_TIMEOUT_S = 20
# Pretrained weights must compute the same in the shipped graph as in Keras' own: a difference above this
# share of the output range, and above what float32 rounding explains, fails (see function_difference).
EQUAL_FUNCTION_TOLERANCE = 1e-5
CHECK_IMAGES = 4


def resolve_weights(weights: str, backbone: str) -> str | None:
    """Map the --weights option to what keras.applications takes (None, 'imagenet' or a file)."""
    if weights.lower() == "none":
        return None
    if backbone in FROM_SCRATCH:
        raise BcsubError(
            f"backbone '{backbone}' is trained from scratch and has no pretrained weights; "
            "use --weights none"
        )
    if weights.lower() == "imagenet":
        return "imagenet"
    path = Path(weights).expanduser()
    if not path.is_file():
        raise BcsubError(
            f"--weights {weights}: no such file; pass imagenet, none, or the path of a "
            f"'{BACKBONES[backbone].application}' no-top weights file (.h5)"
        )
    return str(path)


def build_pretrained_network(spec: dict, weights: str, l2: float, input_size: int | None = None,
                             images: np.ndarray | None = None) -> keras.Model:
    """The shipping network (``build_network``: its backbone built as ``weights=None`` builds it) with the
    --weights loaded into its backbone; offline 'imagenet' fails fast with the fix. ``images`` (a few
    training images, 0..255) are what the loaded weights are checked on (see ``load_pretrained_backbone``)."""
    resolved = resolve_weights(weights, spec["backbone"])
    model = build_network(spec, l2=l2, input_size=input_size)
    if resolved is not None:
        load_pretrained_backbone(model.get_layer("backbone"), spec["backbone"], resolved, images)
    return model


def load_pretrained_backbone(backbone: keras.Model, name: str, weights: str, images: np.ndarray | None = None) -> None:
    """Load into ``backbone`` (built as ``weights=None`` builds it) the weights Keras loads for ``weights``
    ('imagenet' or a file), made to compute there what they compute in the backbone Keras builds for them.

    Keras applications build a different graph for ``weights="imagenet"`` (EfficientNet v1 adds a weightless
    ``Rescaling``): such layers are folded into the weights, then both backbones are run on a few images
    and any difference left fails here, before training, naming the backbone. They run on ``images`` (a
    few 0..255 pictures; default: seeded smooth random ones), in float32 whatever the precision policy.
    """
    shape = tuple(backbone.input_shape[1:])
    mixed = any(layer.dtype_policy.compute_dtype != "float32" for layer in iter_layers(backbone))
    with float32_policy():
        reference = _keras_pretrained_backbone(name, shape, weights)
        assign_weights(reference, reference.get_weights())  # Keras 3.4's h5 loader leaves Normalization stale
        plain = build_backbone(name, shape, None) if mixed else backbone
        transfer_weights(reference, plain, name)
        difference, rounding = function_difference(reference, plain, backbone_inputs(name, shape, images))
    if difference > max(rounding, EQUAL_FUNCTION_TOLERANCE):
        raise BcsubError(
            f"--weights {weights}: Keras builds {BACKBONES[name].application} differently with pretrained "
            f"weights than without (outputs differ by {difference:.2g} of their range after bcsub's fixes, "
            f"float32 rounding explains {rounding:.2g}), so the network bcsub ships would not be the one "
            "trained; use another --backbone or --weights none"
        )
    if plain is not backbone:
        assign_weights(backbone, plain.get_weights())


def _keras_pretrained_backbone(name: str, input_shape: tuple[int, int, int], weights: str) -> keras.Model:
    """The backbone as Keras builds it for ``weights``; offline 'imagenet' fails fast with the fix."""
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        return build_backbone(name, input_shape, weights)
    except Exception as err:  # keras raises plain Exception for a failed download
        if weights == "imagenet" and "URL fetch failure" in str(err):
            raise BcsubError(
                f"--weights imagenet: cannot download the {BACKBONES[name].application} weights "
                "(no network?). Copy the no-top .h5 file into ~/.keras/models/, or pass --weights PATH, "
                "or train from scratch with --weights none"
            ) from None
        if weights != "imagenet":
            raise BcsubError(
                f"--weights {weights}: cannot load it into {name} ({err}); pass the matching no-top weights file"
            ) from None
        raise
    finally:
        socket.setdefaulttimeout(previous)


def transfer_weights(reference: keras.Model, plain: keras.Model, name: str) -> None:
    """Copy ``reference``'s weights into ``plain`` (the same network but for weightless layers only
    ``reference`` has), folding each such layer into the layer before it."""
    arrays = reference.get_weights()
    if [tuple(w.shape) for w in plain.weights] != [tuple(a.shape) for a in arrays]:
        raise BcsubError(f"--weights: the pretrained {name} has another weight layout than the one bcsub ships; "
                         "use another --backbone or --weights none")
    assign_weights(plain, arrays)
    layers, k, previous = plain.layers, 0, None
    for layer in reference.layers:
        if k < len(layers) and type(layers[k]) is type(layer):
            previous, k = layers[k], k + 1
        elif not fold_rescaling_into_normalization(layer, previous):
            raise BcsubError(
                f"--weights: Keras adds a {type(layer).__name__} layer to the pretrained {name} that bcsub cannot "
                "carry into the network it ships; use another --backbone or --weights none"
            )
    if k != len(layers):
        raise BcsubError(f"--weights: the pretrained {name} lacks layers of the network bcsub ships; "
                         "use another --backbone or --weights none")


def backbone_inputs(name: str, input_shape: tuple[int, int, int], images: np.ndarray | None = None) -> np.ndarray:
    """``CHECK_IMAGES`` of ``images`` (default: seeded smooth random pictures) as the backbone receives them:
    resized to its side, then through its preprocessing."""
    if images is None:
        images = np.random.default_rng(0).uniform(0, 255, (CHECK_IMAGES, 4, 4, 3))
    pixels = keras.ops.image.resize(np.asarray(images[:CHECK_IMAGES], np.float32), input_shape[:2],
                                    interpolation="bilinear")
    preprocess = PREPROCESSING[BACKBONES[name].preprocessing]
    return np.asarray(pixels if preprocess is None else preprocess()(pixels), np.float32)


def function_difference(reference: keras.Model, plain: keras.Model, x: np.ndarray) -> tuple[float, float]:
    """How far two backbones' outputs differ on ``x``, and how far the reference's own output moves when
    ``x`` moves by a relative 1e-6 (ten times float32 rounding: what rounding differences inside the network
    can explain); both as a fraction of the largest output."""
    signs = np.random.default_rng(0).choice([-1.0, 1.0], x.shape)
    nudged = (x * (1 + 1e-6 * signs)).astype(np.float32)
    out, out_plain, out_nudged = (np.asarray(model(v, training=False), np.float64)
                                  for model, v in ((reference, x), (plain, x), (reference, nudged)))
    top = max(float(np.max(np.abs(out))), 1e-12)
    return float(np.max(np.abs(out - out_plain))) / top, float(np.max(np.abs(out - out_nudged))) / top


def set_backbone_trainable(model: keras.Model, top_layers: int | None) -> None:
    """Freeze the backbone (``top_layers=0``), or unfreeze its top N layers (None: all).

    BatchNormalization layers stay frozen when fine-tuning a pretrained backbone, as in the Keras
    transfer-learning guide, so their ImageNet statistics are kept.
    """
    backbone = model.get_layer("backbone")
    if top_layers == 0:
        backbone.trainable = False
        return
    backbone.trainable = True
    if top_layers is None:
        return
    cut = max(0, len(backbone.layers) - top_layers)
    for i, layer in enumerate(backbone.layers):
        frozen = i < cut or isinstance(layer, keras.layers.BatchNormalization)
        layer.trainable = not frozen


def set_head_l2(model: keras.Model, l2: float) -> None:
    """Change the L2 penalty of the classifier head (stronger in stage 2)."""
    dense = model.get_layer("logits")
    dense.kernel_regularizer = keras.regularizers.L2(l2)
    dense.kernel.regularizer = dense.kernel_regularizer
