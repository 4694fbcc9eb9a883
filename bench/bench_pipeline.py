"""Benchmark: training steps per second with each augmentation preset vs none (issue: training), with the
training step XLA-compiled and plain (`bcsub train --xla auto` times both on a CPU and keeps the faster: which
wins depends on the machine).

Writes bench/results/pipeline_{cpu,gpu}.json. Goal: hybrid >= 0.9 x none (on GPU; the CPU figure is reported
too). BENCH_PRESETS=none,v3e limits the presets, BENCH_STEPS the steps timed.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from bench.machine import describe  # noqa: E402
from submission.model import build_network  # noqa: E402
from train.atomic import write_json  # noqa: E402
from train.config import PRESETS  # noqa: E402
from train.fit import training_input_size  # noqa: E402
from train.pipeline import training_dataset  # noqa: E402

BACKBONE = os.environ.get("BENCH_BACKBONE", PRESETS["cpu"]["backbone"])
IMAGE_SIZE = int(os.environ.get("BENCH_IMAGE_SIZE", PRESETS["cpu"]["image_size"]))
BATCH = 64
STEPS = int(os.environ.get("BENCH_STEPS", "100"))
PRESET_NAMES = os.environ.get("BENCH_PRESETS", "none,v1,v2,v3,v3e,hybrid").split(",")
SPEC = {"backbone": BACKBONE, "image_size": IMAGE_SIZE}
TRAIN_SIZE = training_input_size(SPEC)  # the side training feeds the network (as `bcsub train` does)


def load_images() -> tuple[np.ndarray, np.ndarray]:
    for path in (ROOT.parent / "shared/data/pbc96_val.npz", ROOT / "data/sample/train.npz"):
        if path.is_file():
            with np.load(path, allow_pickle=False) as data:
                return data["images"], data["labels"].astype(np.int64)
    raise SystemExit("no data found")


def steps_per_second(images, labels, preset: str, xla: bool) -> float:
    keras.utils.set_random_seed(0)
    model = build_network(SPEC, input_size=TRAIN_SIZE)
    model.compile(optimizer="adam", loss="categorical_crossentropy", jit_compile=xla)
    ds, _ = training_dataset(images, labels, BATCH, preset, balance=0, seed=0, size=TRAIN_SIZE)
    ends = []
    timer = keras.callbacks.LambdaCallback(on_train_batch_end=lambda batch, logs: ends.append(time.perf_counter()))
    model.fit(ds, steps_per_epoch=5 + STEPS, epochs=1, verbose=0, shuffle=False, callbacks=[timer])  # 5 warm-up
    # Between batch ends inside one fit: the start and end of `fit` itself (the input iterator made and torn down)
    # took up to 9 s on one machine and halved the rate of 40 steps in some runs, not in others.
    return STEPS / (ends[-1] - ends[4])


def augment_only(images, labels, preset: str) -> float:
    ds, _ = training_dataset(images, labels, BATCH, preset, balance=0, seed=0, size=TRAIN_SIZE)
    it = iter(ds)
    next(it)
    start = time.perf_counter()
    for _ in range(STEPS):
        next(it)
    return STEPS * BATCH / (time.perf_counter() - start)


def main() -> None:
    images, labels = load_images()
    device = describe(gpu=bool(tf.config.list_physical_devices("GPU")))
    results = {}
    for preset in PRESET_NAMES:
        off, on = (steps_per_second(images, labels, preset, xla) for xla in (False, True))
        results[preset] = {"train_steps_per_s": round(off, 3), "train_steps_per_s_xla": round(on, 3),
                           "xla_speedup": round(on / off, 2), "train_images_per_s_xla": round(on * BATCH, 1),
                           "pipeline_only_images_per_s": round(augment_only(images, labels, preset), 1)}
        print(preset, results[preset], flush=True)
    out = {"device": device, "backbone": BACKBONE,
           "image_size": IMAGE_SIZE, "batch_size": BATCH, "steps_timed": STEPS, "presets": results}
    if {"none", "hybrid"} <= results.keys():
        ratio = results["hybrid"]["train_steps_per_s"] / results["none"]["train_steps_per_s"]
        out.update(hybrid_over_none=round(ratio, 3), goal=0.9, passed=ratio >= 0.9)
    write_json(ROOT / "bench/results" / f"pipeline_{'gpu' if device == 'GPU' else 'cpu'}.json", out)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
