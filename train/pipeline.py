"""tf.data input pipelines: class balancing, augmentation, CutMix/MixUp, batching."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from submission.model import NUM_CLASSES
from train.augment import batch_mixer, image_augmenter

AUTOTUNE = tf.data.AUTOTUNE


def balanced_class_counts(labels: np.ndarray, per_class: int) -> np.ndarray:
    """Images drawn per class and epoch when every class is oversampled to ``per_class``."""
    present = np.bincount(labels, minlength=NUM_CLASSES) > 0
    return np.where(present, per_class, 0)


def epoch_indices(labels: np.ndarray, per_class: int, rng: np.random.Generator) -> np.ndarray:
    """One epoch of shuffled indices with ``per_class`` images of every class (drawn with replacement
    only for classes that have fewer images; augmentation makes the copies differ)."""
    chosen = []
    for c in range(NUM_CLASSES):
        idx = np.flatnonzero(labels == c)
        if len(idx):
            chosen.append(rng.choice(idx, per_class, replace=len(idx) < per_class))
    return rng.permutation(np.concatenate(chosen))


def resize_batch(images: tf.Tensor, size: int | None) -> tf.Tensor:
    """Float32 images resized to ``size`` the way the network's own Resizing layer does (bilinear,
    no antialiasing); unchanged when ``size`` is None or already their size."""
    images = tf.cast(images, tf.float32)
    if size is None or images.shape[1] == size:
        return images
    return tf.image.resize(images, (size, size), method="bilinear", antialias=False)


def prior_logit_offsets(labels: np.ndarray) -> list[float]:
    """Per-class logit offsets, log(training-set class frequency) centred on 0, that turn a network
    trained on class-balanced batches back into one for data with the training set's class mix."""
    counts = np.bincount(labels, minlength=NUM_CLASSES).astype(np.float64)
    log_prior = np.log((counts + 1.0) / (counts.sum() + NUM_CLASSES))
    return [round(float(v), 6) for v in log_prior - log_prior.mean()]


def training_dataset(images: np.ndarray, labels: np.ndarray, batch_size: int, augment: str,
                     balance: int, seed: int, size: int | None = None) -> tuple[tf.data.Dataset, int]:
    """Endless augmented batches of (float32 0..255 images, one-hot labels) and steps per epoch.

    ``size`` resizes each batch before augmentation: a network that works at 64 px is trained on
    64 px images, so augmentation costs (64/96)^2 of what it would at 96 px.
    """
    epoch_size = balance * NUM_CLASSES if balance else len(labels)
    steps = max(1, epoch_size // batch_size)
    rng = np.random.default_rng(seed)

    def index_stream():
        while True:
            if balance:
                yield from epoch_indices(labels, balance, rng)
            else:
                yield from rng.permutation(len(labels))

    images_t = tf.constant(images)
    labels_t = tf.constant(labels.astype(np.int32))
    ds = tf.data.Dataset.from_generator(index_stream, output_signature=tf.TensorSpec((), tf.int64))
    ds = ds.batch(batch_size, drop_remainder=True)
    ds = ds.map(
        lambda idx: (resize_batch(tf.gather(images_t, idx), size),
                     tf.one_hot(tf.gather(labels_t, idx), NUM_CLASSES)),
        num_parallel_calls=AUTOTUNE,
    )
    augmenter = image_augmenter(augment, seed)
    if augmenter is not None:
        ds = ds.map(lambda x, y: (augmenter(x), y), num_parallel_calls=AUTOTUNE)
    mixer = batch_mixer(augment, seed)
    if mixer is not None:
        ds = ds.map(mixer, num_parallel_calls=AUTOTUNE)
    return ds.prefetch(AUTOTUNE), steps


def distributed_training_dataset(strategy: tf.distribute.Strategy, images: np.ndarray, labels: np.ndarray,
                                 batch_size: int, augment: str, balance: int, seed: int,
                                 size: int | None = None) -> tuple[tf.distribute.DistributedDataset, int]:
    """``training_dataset`` for several workers: each builds its own pipeline of per-replica batches
    (global ``batch_size`` / replicas) with its own seed, so workers draw different images and
    augmentations; the steps per epoch are those of the global batch."""
    epoch_size = balance * NUM_CLASSES if balance else len(labels)

    def worker_pipeline(context: tf.distribute.InputContext) -> tf.data.Dataset:
        per_replica = context.get_per_replica_batch_size(batch_size)
        return training_dataset(images, labels, per_replica, augment, balance, seed + 1009 * context.input_pipeline_id,
                                size)[0]

    return strategy.distribute_datasets_from_function(worker_pipeline), max(1, epoch_size // batch_size)


def evaluation_dataset(images: np.ndarray, labels: np.ndarray, batch_size: int,
                       size: int | None = None) -> tf.data.Dataset:
    """Un-augmented batches of (float32 images resized to ``size``, one-hot labels) for validation."""
    ds = tf.data.Dataset.from_tensor_slices((images, labels.astype(np.int32)))
    ds = ds.batch(batch_size).map(
        lambda x, y: (resize_batch(x, size), tf.one_hot(y, NUM_CLASSES)), num_parallel_calls=AUTOTUNE
    )
    return ds.prefetch(AUTOTUNE)
