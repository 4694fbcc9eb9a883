"""Training callbacks of bcsub's own (public Keras API): the best-epoch checkpoint, the
learning rate in the logs, TensorBoard (scalars, augmented images), and one stop decision for several
workers. The atomic epoch backup needs Keras internals, so it lives in ``train/keras_internals.py``."""

from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np

from train.atomic import write_json, write_weights


class PersistentCheckpoint(keras.callbacks.Callback):
    """Keep the weights of the epoch with the best validation accuracy. The best score lives in a side
    file, so a resumed run keeps it; both are replaced atomically."""

    def __init__(self, filepath: Path):
        super().__init__()
        self.filepath = Path(filepath)
        self.best_file = Path(str(filepath) + ".best.json")
        self.best = -np.inf
        if self.best_file.exists() and self.filepath.exists():
            self.best = json.loads(self.best_file.read_text())["best"]

    def on_epoch_end(self, epoch, logs=None):
        score = (logs or {}).get("val_accuracy")
        if score is None or score <= self.best:
            return
        write_weights(self.model, self.filepath)
        self.best = float(score)
        write_json(self.best_file, {"best": self.best, "epoch": epoch + 1})


class LearningRateLog(keras.callbacks.Callback):
    """Add the optimizer's current learning rate to each epoch's logs (a ``learning_rate`` column in
    ``history.csv``); put it before the loggers."""

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None and self.model.optimizer is not None:
            logs["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))


class TensorBoardImages(keras.callbacks.Callback):
    """A few augmented training images (what the network sees) as a TensorBoard image at the start of
    training; ``make_batch`` returns float 0..255 images, called once."""

    def __init__(self, log_dir: Path, make_batch, max_images: int = 8):
        super().__init__()
        self.log_dir, self.make_batch, self.max_images = Path(log_dir), make_batch, max_images

    def on_train_begin(self, logs=None):
        images = np.clip(np.asarray(self.make_batch(), np.float32)[: self.max_images] / 255.0, 0.0, 1.0)
        write_image_summary(self.log_dir, "augmented training images", images, step=0)


def write_image_summary(log_dir: Path, name: str, images: np.ndarray, step: int) -> None:
    """Images (n, h, w, c) in [0, 1] as one TensorBoard image summary in ``log_dir``."""
    import tensorflow as tf

    writer = tf.summary.create_file_writer(str(log_dir))
    with writer.as_default():
        tf.summary.image(name, images, step=step, max_outputs=len(images))
    writer.close()


def write_png_summary(log_dir: Path, name: str, png: Path, step: int = 0) -> None:
    """A PNG file (e.g. ``confusion.png``) as a TensorBoard image in ``log_dir``."""
    from PIL import Image

    with Image.open(png) as image:
        pixels = np.asarray(image.convert("RGB"), np.float32)[None] / 255.0
    write_image_summary(log_dir, name, pixels, step)


def tensorboard_callbacks(log_dir: Path, make_batch=None) -> list[keras.callbacks.Callback]:
    """Keras' TensorBoard (per-epoch scalars and the learning rate; no per-batch summaries, profiling or
    graph, so it costs nothing noticeable) and, when ``make_batch`` is given, the augmented images."""
    board = keras.callbacks.TensorBoard(log_dir=str(log_dir), update_freq="epoch", profile_batch=0,
                                        write_graph=False, histogram_freq=0)
    return [board] + ([TensorBoardImages(Path(log_dir) / "train", make_batch)] if make_batch else [])


class AgreeToStop(keras.callbacks.Callback):
    """With several workers, stop as soon as any worker's callbacks ask to (a time budget reads each
    machine's clock), so none waits forever in an epoch the others skip. Put it last."""

    def __init__(self, strategy):
        super().__init__()
        self.strategy = strategy

    def on_epoch_end(self, epoch, logs=None):
        import tensorflow as tf

        votes = self.strategy.reduce("SUM", tf.constant(1.0 if self.model.stop_training else 0.0), axis=None)
        self.model.stop_training = bool(float(votes) > 0)
