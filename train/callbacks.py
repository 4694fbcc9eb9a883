"""Training callbacks of bcsub's own (public Keras API): the best-epoch checkpoint and the time budget.
The atomic epoch backup needs Keras internals, so it lives in ``train/keras_internals.py``."""

from __future__ import annotations

import json
import time
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


class TimeBudget(keras.callbacks.Callback):
    """Stop before an epoch that would end after ``deadline`` (time.monotonic seconds)."""

    def __init__(self, deadline: float):
        super().__init__()
        self.deadline = deadline
        self.epoch_start = time.monotonic()

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch_start = time.monotonic()

    def on_epoch_end(self, epoch, logs=None):
        now = time.monotonic()
        if now + (now - self.epoch_start) > self.deadline:
            self.model.stop_training = True
