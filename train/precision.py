"""Float32 where bcsub compares networks: building a pretrained backbone, and the training graph's own
validation probabilities (a network trained in mixed precision computes in float16, the shipped one in
float32)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import keras

from submission.model import iter_layers


@contextmanager
def float32_policy() -> Iterator[None]:
    """Layers built inside compute in float32, whatever the global policy (the weights are float32 either way)."""
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("float32")
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


@contextmanager
def float32_compute(model: keras.Model) -> Iterator[keras.Model]:
    """``model`` computing in float32 inside the block (same layers, same weights), as it was after."""
    changed = [(layer, layer.dtype_policy) for layer in [model, *iter_layers(model)]
               if layer.dtype_policy.compute_dtype != "float32"]
    for layer, _ in changed:
        layer.dtype_policy = "float32"
    _refresh(model, changed)
    try:
        yield model
    finally:
        for layer, policy in changed:
            layer.dtype_policy = policy
        _refresh(model, changed)


def _refresh(model: keras.Model, changed: list) -> None:
    """Preprocessing constants follow the compute dtype (``Normalization`` casts them in ``finalize_state``)."""
    if changed:
        for layer in iter_layers(model):
            if hasattr(layer, "finalize_state"):
                layer.finalize_state()
