"""The devices TensorFlow sees: one place that asks, for the strategy, precision, XLA and recipe checks."""

from __future__ import annotations

import tensorflow as tf


def gpu_count() -> int:
    """GPUs TensorFlow sees in this process."""
    return len(tf.config.list_physical_devices("GPU"))
