"""Calibration of the shift suite against published CodaBench scores (issue 13).

1. ``train``: re-train the published AN2DL 2024 recipes (``bench/calibration_recipes.py``) on
   pbc96_train (validation: pbc96_val) and package each as its team did: the official template
   ``model.py`` + ``weights.keras``. Resumable: a finished recipe is not retrained.
2. ``score``: ``bcsub local-score`` every zip on pbc96_test and compare the expected hidden score with
   the published CodaBench accuracy. Writes ``bench/results/calibration.json``.

Usage: ``python bench/calibration.py [train|score|all] [--only NAME,...]``. Needs ../shared/data.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data"
RUNS = ROOT / "bench" / "runs" / "calibration"
RESULTS = ROOT / "bench" / "results" / "calibration.json"
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import numpy as np  # noqa: E402


def load(split: str) -> tuple[np.ndarray, np.ndarray]:
    with np.load(DATA / f"pbc96_{split}.npz", allow_pickle=False) as data:
        return data["images"], data["labels"].reshape(-1).astype(np.int64)


def train_recipe(recipe, out: Path) -> dict:
    """Train one recipe into ``out`` (weights.keras, submission.zip, metrics.json)."""
    import keras
    import tensorflow as tf
    from calibration_recipes import augmenter
    from sklearn.utils.class_weight import compute_class_weight

    from tools.template_zip import write_template_zip

    keras.utils.set_random_seed(0)
    x_train, y_train = load("train")
    x_val, y_val = load("val")
    onehot = np.eye(8, dtype=np.float32)
    augment = augmenter(recipe.augment, seed=0)

    def scaled(x, y):
        return x * recipe.scale, y

    train = tf.data.Dataset.from_tensor_slices((x_train, onehot[y_train])).shuffle(len(x_train), seed=0)
    train = train.batch(recipe.batch_size).map(lambda x, y: (tf.cast(x, tf.float32), y))
    if augment is not None:
        train = train.map(augment, num_parallel_calls=tf.data.AUTOTUNE)
    train = train.map(scaled).prefetch(tf.data.AUTOTUNE)
    val = tf.data.Dataset.from_tensor_slices((x_val.astype(np.float32), onehot[y_val])).batch(256).map(scaled)
    model = recipe.build()
    model.compile(optimizer=keras.optimizers.Adam(recipe.learning_rate), loss="categorical_crossentropy",
                  metrics=["accuracy"])
    out.mkdir(parents=True, exist_ok=True)
    mode = "max" if "accuracy" in recipe.monitor else "min"
    callbacks = [keras.callbacks.EarlyStopping(recipe.monitor, patience=recipe.patience, mode=mode,
                                               restore_best_weights=True),
                 keras.callbacks.CSVLogger(str(out / "history.csv"))]
    if recipe.reduce_lr:
        callbacks.append(keras.callbacks.ReduceLROnPlateau(recipe.monitor, factor=0.2, patience=20, mode=mode))
    class_weight = None
    if recipe.class_weights:
        weights = compute_class_weight("balanced", classes=np.arange(8), y=y_train)
        class_weight = {i: float(w) for i, w in enumerate(weights)}
    start = time.time()
    history = model.fit(train, validation_data=val, epochs=recipe.epochs, callbacks=callbacks,
                        class_weight=class_weight, verbose=2)
    seconds = time.time() - start
    val_acc = float(np.mean(model.predict(x_val * recipe.scale, verbose=0).argmax(1) == y_val))
    write_template_zip(model, out / "submission.zip", recipe.scale)
    metrics = {"recipe": recipe.name, "val_accuracy": val_acc, "epochs_run": len(history.history["loss"]),
               "train_seconds": seconds, "weights": int(model.count_params())}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics


def train_all(only: list[str] | None) -> None:
    from calibration_recipes import RECIPES

    for name, recipe in RECIPES.items():
        if only and name not in only:
            continue
        out = RUNS / name
        if (out / "metrics.json").is_file():
            print(f"{name}: done ({json.loads((out / 'metrics.json').read_text())['val_accuracy']:.3f})")
            continue
        print(f"== training {name}", flush=True)
        metrics = train_recipe(recipe, out)
        print(f"{name}: val {metrics['val_accuracy']:.3f} in {metrics['train_seconds'] / 60:.1f} min", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("step", choices=("train", "score", "all"), nargs="?", default="all")
    parser.add_argument("--only", default="", help="comma list of recipe names")
    args = parser.parse_args()
    if not (DATA / "pbc96_train.npz").is_file():
        print(f"skip: {DATA} not found")
        return
    only = [s for s in args.only.split(",") if s] or None
    if args.step in ("train", "all"):
        train_all(only)


if __name__ == "__main__":
    main()
