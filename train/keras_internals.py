"""Every use of private Keras internals in bcsub, in one place (training only: the shipping runtime,
submission/model.py, keeps to public APIs).

Keras has no public API for what these do. Checked against Keras 3.15.1 (the version the test suite
runs); the ``BackupAndRestore`` names below are also those of Keras 3.4.1, which has no RandAugment or
AugMix yet. After a Keras upgrade, tests/test_augment.py and tests/test_training.py exercise each of them.

- ``RandAugment`` and ``AugMix`` draw their ops from a private list of op names (RandAugment's class
  attribute ``_AUGMENT_LAYERS``, AugMix's instance attribute ``_augment_layers``) and keep one sub-layer
  per op as an attribute of that name.
- ``RandAugment``'s random transformation is a dict: ``transforms`` (the drawn parameters of each op)
  and ``layer_idxes`` (the op chosen for each of the ``num_ops`` slots).
- ``BackupAndRestore`` writes its backup in ``_save_model`` to ``_weights_path`` and
  ``_training_metadata_path`` (epoch ``_current_epoch``, batch ``_last_batch_seen``); a restore sets
  ``model._initial_epoch``, which ``fit`` uses and never clears. The public ``double_checkpoint=True``
  (present in 3.15.1, not in 3.4.1) keeps a second copy of the weights, but still writes the epoch counter in
  place (a kill mid-write leaves JSON its restore does not catch) and leaves ``*.bkp`` files behind.
"""

from __future__ import annotations

from pathlib import Path

import keras

from train.atomic import write_json, write_weights

_OP_LISTS = ((keras.layers.RandAugment, "_AUGMENT_LAYERS"), (keras.layers.AugMix, "_augment_layers"))


def _op_list(layer: keras.layers.Layer) -> str:
    return next(name for cls, name in _OP_LISTS if isinstance(layer, cls))


def op_names(layer: keras.layers.Layer) -> list[str]:
    """The op names a ``RandAugment`` or ``AugMix`` layer draws from."""
    return list(getattr(layer, _op_list(layer)))


def restrict_ops(layer: keras.layers.Layer, ops: tuple[str, ...]) -> None:
    """Make a ``RandAugment`` or ``AugMix`` layer draw only from ``ops`` (names from ``op_names``)."""
    setattr(layer, _op_list(layer), list(ops))


def op_layer(layer: keras.layers.Layer, name: str) -> keras.layers.Layer:
    """The sub-layer of a ``RandAugment``/``AugMix`` layer that performs op ``name``."""
    return getattr(layer, name)


def randaugment_draws(transformation: dict) -> tuple[dict, object]:
    """(per-op parameters, chosen op index per slot) of a ``RandAugment`` random transformation."""
    return transformation["transforms"], transformation["layer_idxes"]


class AtomicBackupAndRestore(keras.callbacks.BackupAndRestore):
    """BackupAndRestore whose backup (weights, then epoch counter) is replaced atomically: Keras writes
    it in place, so a kill during the write left a file that could not be read back. A resumed stage
    no longer makes the next stage skip epochs."""

    def _save_model(self):
        write_weights(self.model, Path(self._weights_path))
        write_json(self._training_metadata_path, {"epoch": self._current_epoch, "batch": self._last_batch_seen})

    def on_train_end(self, logs=None):
        super().on_train_end(logs)
        # Keras leaves the restored epoch on the model, and the next stage's fit would start there.
        self.model._initial_epoch = None
