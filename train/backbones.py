"""Backbone weights (imagenet | none | PATH) and the freezing rules of two-stage fine-tuning."""

from __future__ import annotations

import socket
from pathlib import Path

import keras

from submission.model import BACKBONES, build_network
from train.errors import BcsubError

FROM_SCRATCH = {name for name, backbone in BACKBONES.items() if not backbone.application}
DOWNLOAD_TIMEOUT_S = 20


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


def build_pretrained_network(spec: dict, weights: str, l2: float, input_size: int | None = None) -> keras.Model:
    """Build the network, loading backbone weights; offline 'imagenet' fails fast with the fix."""
    resolved = resolve_weights(weights, spec["backbone"])
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        return build_network(spec, weights=resolved, l2=l2, input_size=input_size)
    except Exception as err:  # keras raises plain Exception for a failed download
        if resolved == "imagenet" and "URL fetch failure" in str(err):
            raise BcsubError(
                f"--weights imagenet: cannot download the {BACKBONES[spec['backbone']].application} weights "
                "(no network?). Copy the no-top .h5 file into ~/.keras/models/, or pass --weights PATH, "
                "or train from scratch with --weights none"
            ) from None
        if resolved not in (None, "imagenet"):
            raise BcsubError(
                f"--weights {resolved}: cannot load it into {spec['backbone']} ({err}); pass the "
                "matching no-top weights file"
            ) from None
        raise
    finally:
        socket.setdefaulttimeout(previous)


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
