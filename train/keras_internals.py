"""Every use of private Keras internals in bcsub, in one place (training only: the shipping runtime,
submission/model.py, keeps to public APIs).

Keras has no public API for what these do. Checked against Keras 3.15.1 (the version the test suite
runs) and 3.11.0 (training's floor: tests/test_floors.py trains there; Keras 3.9 and 3.10 have RandAugment
and AugMix but return RandAugment's draws in another form); the ``BackupAndRestore`` names below are also
those of Keras 3.4.1, which has no RandAugment or AugMix yet. After a Keras upgrade, tests/test_augment.py,
tests/test_training.py and tests/test_multiworker.py exercise each of them.

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
- ``MultiWorkerMirroredStrategy`` in the TensorFlow trainer (keras-team/keras#20585; the same code in
  3.11.0 and 3.15.1, and two workers trained with the fix on both): ``fit`` crashed on every worker.
  ``_maybe_symbolic_build(iterator=None, data_batch=None)`` (after 3.4.1)
  builds the model's state from the first batch, iterating the epoch iterator as ``for _, _, it in
  iterator`` and calling ``strategy.reduce("MEAN", batch, axis=None)`` on the whole (x, y) tuple, which
  ``reduce`` cannot take ("unsupported type PerReplica"); given ``data_batch`` it skips the reduce. Then the
  module function ``reduce_per_replica(values, strategy, reduction)`` of
  ``keras.src.backend.tensorflow.trainer`` (looked up when the train and test steps are traced) reduces
  each step's logs with ``strategy.reduce("MEAN", v, axis=0)``, which fails on the scalar losses and
  metrics. ``fix_multi_worker_fit`` feeds the build one replica's batch (only shapes matter) and reduces
  scalars across workers with ``axis=None``. ``ChiefRestore`` reads and sets ``model._initial_epoch`` (the
  epoch ``BackupAndRestore`` restored) to make every worker resume from the chief's backup.
- ``Normalization`` built without a mean and variance (``input_mean is None``, as in EfficientNet v1) keeps
  them in the weights ``adapt_mean`` and ``adapt_variance`` (same names in 3.4.1), from which
  ``finalize_state()`` makes the constants it normalises with.
"""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

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


class ChiefRestore(keras.callbacks.Callback):
    """Several workers, each with its own backup (see ``AtomicBackupAndRestore``): after a resume, all
    continue from the chief's epoch, weights and optimizer state, so a worker killed just before or after
    writing its backup cannot leave the workers one epoch apart, waiting on each other. Put it right
    after the backup callback; on a fresh start it costs one all-reduce."""

    def __init__(self, strategy, is_chief: bool):
        super().__init__()
        self.strategy, self.is_chief = strategy, is_chief

    def _sum(self, value) -> tf.Tensor:
        return self.strategy.reduce("SUM", tf.convert_to_tensor(value), axis=None)

    def _from_chief(self, value) -> tf.Tensor:
        value = tf.convert_to_tensor(value)
        return self._sum(value if self.is_chief else tf.zeros_like(value))

    def on_train_begin(self, logs=None):
        restored = float(self.model._initial_epoch or 0)
        if float(self._sum(restored)) == 0:  # nobody resumed: the variables already match
            return
        for variable in [*self.model.weights, *self.model.optimizer.variables]:
            variable.assign(self._from_chief(variable.value))
        self.model._initial_epoch = int(self._from_chief(restored)) or None


def fix_multi_worker_fit(model: keras.Model) -> None:
    """Make ``model.fit``/``evaluate`` work under ``MultiWorkerMirroredStrategy`` (see the module docstring):
    the state is built from this replica's first batch, and scalar logs are averaged over the workers."""
    _patch_reduce_per_replica()
    original = getattr(model, "_maybe_symbolic_build", None)
    if original is None or getattr(original, "_bcsub_local", False):
        return
    strategy = model.distribute_strategy

    def local(value):
        return strategy.experimental_local_results(value)[0] if isinstance(value, tf.distribute.DistributedValues) \
            else value

    def build(iterator=None, data_batch=None):
        if iterator is not None and data_batch is None:
            for _, _, batches in iterator:
                data_batch = tf.nest.map_structure(local, next(batches))
                break
        return original(data_batch=data_batch)

    build._bcsub_local = True
    model._maybe_symbolic_build = build


def _patch_reduce_per_replica() -> None:
    from keras.src.backend.tensorflow import trainer as tf_trainer

    original = tf_trainer.reduce_per_replica
    if getattr(original, "_bcsub_scalars", False):
        return

    def reduce_per_replica(values, strategy, reduction="auto"):
        if reduction not in ("auto", "mean") or not _is_multi_worker(strategy):
            return original(values, strategy, reduction=reduction)

        def mean(value):
            scalar = getattr(value, "shape", None) is not None and value.shape.rank == 0
            if not scalar and isinstance(value, tf.distribute.DistributedValues):
                scalar = strategy.experimental_local_results(value)[0].shape.rank == 0
            return strategy.reduce("MEAN", value, axis=None if scalar else 0)

        return tf.nest.map_structure(mean, values)

    reduce_per_replica._bcsub_scalars = True
    tf_trainer.reduce_per_replica = reduce_per_replica


def _is_multi_worker(strategy) -> bool:
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) and \
        strategy.extended._in_multi_worker_mode()


def fold_rescaling_into_normalization(rescaling: keras.layers.Layer, normalization: keras.layers.Layer) -> bool:
    """Make ``normalization`` compute what it computed followed by ``rescaling``; False when it cannot.

    ``Normalization`` computes (x - mean) / sqrt(variance); a ``Rescaling`` by s (per channel, no offset)
    after it is the same as dividing the variance by s^2. Keras' EfficientNet (v1) adds such a layer only
    for ``weights="imagenet"``.
    """
    if not (isinstance(rescaling, keras.layers.Rescaling) and isinstance(normalization, keras.layers.Normalization)
            and normalization.input_mean is None and not normalization.invert):
        return False
    scale = np.asarray(rescaling.scale, np.float32)
    if np.any(np.asarray(rescaling.offset, np.float32) != 0) or np.any(scale <= 0):
        return False
    variance = normalization.adapt_variance
    variance.assign(np.asarray(variance.numpy()) / np.broadcast_to(scale, variance.shape) ** 2)
    normalization.finalize_state()
    return True
