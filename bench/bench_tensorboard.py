"""Benchmark: what the run-tracking callbacks cost per epoch (TensorBoard scalars and images, the learning
rate in history.csv) against the CSV log alone, on the CPU preset's network.

Writes bench/results/tensorboard_cpu.json. Goal: overhead <= 2% of an epoch.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import keras  # noqa: E402
import numpy as np  # noqa: E402
from bench_pipeline import load_images  # noqa: E402  (bench/ is the script's folder)

from submission.model import build_network  # noqa: E402
from train.atomic import write_json  # noqa: E402
from train.callbacks import LearningRateLog, tensorboard_callbacks  # noqa: E402
from train.config import PRESETS  # noqa: E402
from train.fit import training_input_size  # noqa: E402
from train.pipeline import evaluation_dataset, training_dataset  # noqa: E402

SPEC = {"backbone": PRESETS["cpu"]["backbone"], "image_size": PRESETS["cpu"]["image_size"]}
SIZE = training_input_size(SPEC)
BATCH, STEPS, EPOCHS, ROUNDS = 64, int(os.environ.get("BENCH_STEPS", "15")), 3, 3


class EpochTimes(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.seconds: list[float] = []

    def on_epoch_begin(self, epoch, logs=None):
        self.start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self.start)  # after the callbacks listed before it


def epoch_seconds(images, labels, tracking: bool, log_dir: Path) -> list[float]:
    """Seconds of each epoch after the first (tracing), callbacks included."""
    keras.utils.set_random_seed(0)
    model = build_network(SPEC, input_size=SIZE)
    model.compile(optimizer=keras.optimizers.AdamW(1e-3), loss="categorical_crossentropy", metrics=["accuracy"])
    train_ds, _ = training_dataset(images, labels, BATCH, "v3", balance=0, seed=0, size=SIZE)
    val_ds = evaluation_dataset(images[:256], labels[:256], BATCH, SIZE)
    timer = EpochTimes()
    log_dir.mkdir(parents=True)
    callbacks = [LearningRateLog(), keras.callbacks.CSVLogger(str(log_dir / "history.csv"))]
    if tracking:
        callbacks += tensorboard_callbacks(log_dir / "tb", lambda: images[:8].astype(np.float32))
    model.fit(train_ds, steps_per_epoch=STEPS, epochs=EPOCHS, validation_data=val_ds, verbose=0, shuffle=False,
              callbacks=[*callbacks, timer])
    return timer.seconds[1:]


def main() -> None:
    images, labels = load_images()
    times: dict[str, list[float]] = {"csv only": [], "csv + tensorboard": []}
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(ROUNDS):  # alternate, so that load on the machine hits both alike
            for name, tracking in (("csv only", False), ("csv + tensorboard", True)):
                times[name] += epoch_seconds(images, labels, tracking, Path(tmp) / f"{k}-{tracking}")
    median = {name: float(np.median(v)) for name, v in times.items()}
    overhead = median["csv + tensorboard"] / median["csv only"] - 1
    result = {"backbone": SPEC["backbone"], "image_size": SPEC["image_size"], "batch": BATCH,
              "steps_per_epoch": STEPS, "epoch_seconds": times, "median_epoch_seconds": median,
              "overhead": round(overhead, 4), "goal": "overhead <= 0.02"}
    write_json(ROOT / "bench" / "results" / "tensorboard_cpu.json", result)
    print(f"median epoch: {median['csv only']:.2f} s without, {median['csv + tensorboard']:.2f} s with TensorBoard "
          f"({overhead:+.1%})")


if __name__ == "__main__":
    main()
