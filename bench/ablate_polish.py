"""Ablation behind `--polish-epochs`: which augmentation the last epochs should use.

Takes one finished network (a run dir with model.json + weights.npz, e.g. ``RUN/unpolished`` of a
`--preset cpu` run), trains 8 more epochs on PBC96 train with each candidate augmentation at 0.15x the
CPU recipe's learning rate, and packages and local-scores each result on PBC96 test (clean, and the
shift suite at severities 1,3,5 on 500 images), like ``bench_train_cpu.py``. Also scores the base
network alone and the base + v1-polished pair. Writes ``bench/results/polish_ablation.json``.

    python bench/ablate_polish.py RUN_DIR [WORK_DIR]

Not part of ``make bench`` (it needs a finished run and takes about 45 minutes on 2 cores).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data"
sys.path.insert(0, str(ROOT))

import keras  # noqa: E402
import numpy as np  # noqa: E402

from submission.model import build_network, load_weights, save_weights  # noqa: E402
from train import config  # noqa: E402
from train.atomic import write_json  # noqa: E402
from train.pipeline import training_dataset  # noqa: E402
from train.runs import EQUIVALENCE_FILE  # noqa: E402

EPOCHS, LEARNING_RATE, BALANCE, BATCH = 8, 3e-4, 900, 64
# Candidates: presets, and v1 plus one of the parts that v2 adds (colour, geometry, degradation), each
# registered as a preset of its own.
CANDIDATES = ("v1", "v1+colour", "v1+geometry", "v1+degrade", "v2", "v3")
for _name in CANDIDATES:
    if "+" in _name:
        _part = _name.split("+")[1]
        config.AUGMENT_PRESETS[_name] = config.Preset(f"v1 + {_part}", ("dihedral", _part))


def polish(base: Path, candidate: str, out: Path) -> None:
    """Train ``base`` EPOCHS more epochs with ``candidate`` augmentation into the run dir ``out``."""
    spec = json.loads((base / "model.json").read_text())
    shipped = build_network(spec)
    load_weights(shipped, str(base / "weights.npz"))
    keras.utils.set_random_seed(1)
    with np.load(DATA / "pbc96_train.npz", allow_pickle=False) as train:
        ds, steps = training_dataset(train["images"], train["labels"], BATCH, candidate, BALANCE, 1,
                                     spec["image_size"])
    net = build_network({k: v for k, v in spec.items() if k != "logit_offsets"}, l2=1e-4,
                        input_size=spec["image_size"])
    net.set_weights(shipped.get_weights())
    schedule = keras.optimizers.schedules.CosineDecay(LEARNING_RATE, EPOCHS * steps, alpha=0.01)
    net.compile(keras.optimizers.AdamW(schedule, weight_decay=1e-4),
                keras.losses.CategoricalCrossentropy(label_smoothing=0.1))
    net.fit(ds, steps_per_epoch=steps, epochs=EPOCHS, verbose=2)
    shutil.copytree(base, out, dirs_exist_ok=True)
    shipped.set_weights(net.get_weights())
    save_weights(shipped, str(out / "weights.npz"))
    (out / EQUIVALENCE_FILE).unlink(missing_ok=True)  # base's training-graph probabilities: not these weights


def package_and_score(name: str, run_dirs: list[Path], work: Path) -> dict:
    def bcsub(*args: str) -> None:
        subprocess.run([sys.executable, "-m", "tools.cli", *args], cwd=ROOT, check=True, capture_output=True)

    zip_path, clean, shift = work / f"{name}.zip", work / f"{name}_clean.json", work / f"{name}_shift.json"
    bcsub("package", *map(str, run_dirs), "--out", str(zip_path), "--val", str(DATA / "pbc96_val.npz"))
    test = str(DATA / "pbc96_test.npz")
    bcsub("local-score", str(zip_path), "--data", test, "--suite", "clean", "--json", str(clean))
    bcsub("local-score", str(zip_path), "--data", test, "--severities", "1,3,5", "--limit", "500",
          "--json", str(shift))
    c = json.loads(clean.read_text())["submissions"][0]["summary"]
    s = json.loads(shift.read_text())["submissions"][0]["summary"]
    result = {"test_accuracy_tta": c["clean_accuracy"], "test_macro_f1": c["clean_macro_f1"],
              "shift_mean_accuracy": s["shift_mean_accuracy"], "suite_means": s["suite_mean_accuracy"],
              "expected_hidden": s["expected_hidden_accuracy"], "ci95": s["ci95"]}
    print(name, json.dumps(result), flush=True)
    return result


def main() -> None:
    base = Path(sys.argv[1]).resolve()
    work = Path(sys.argv[2] if len(sys.argv) > 2 else ROOT / "bench" / "runs" / "polish_ablation").resolve()
    work.mkdir(parents=True, exist_ok=True)
    results = {"base": base.name, "epochs": EPOCHS, "learning_rate": LEARNING_RATE,
               "none (base network)": package_and_score("base", [base], work)}
    for candidate in CANDIDATES:
        out = work / candidate
        polish(base, candidate, out)
        results[candidate] = package_and_score(candidate, [out], work)
    results["base + v1 (snapshot pair)"] = package_and_score("pair", [base, work / "v1"], work)
    write_json(ROOT / "bench" / "results" / "polish_ablation.json", results)


if __name__ == "__main__":
    main()
