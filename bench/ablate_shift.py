"""Ablation for issue 16: which training ingredients move the *calibrated* expected hidden score.

Trains the CPU recipe's network (resnet-small at 72 px from scratch, class-balanced, no polish) for a fixed
number of epochs (the same for every candidate, so machine load cannot bias the comparison) with each
candidate augmentation, then scores it on pbc96_val — never pbc96_test — clean and shifted by the
calibrated hidden shift (levels 1..3; the expected hidden score is level 2), with the 8 dihedral TTA
views, without and with test-time BatchNorm adaptation. Writes ``bench/results/shift_ablation.json``.

    python bench/ablate_shift.py train [--only NAME,...]   # resumable: finished runs are kept
    python bench/ablate_shift.py score [--only NAME,...]   # others keep their row from the results file
    python bench/ablate_shift.py train|score --seed 1 --only NAME   # a replicate: how large is one run's noise

Not part of ``make bench`` (about 10 minutes of training per candidate on an idle 2-core machine).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data"
WORK = ROOT / "bench" / "runs" / "shift_ablation"
RESULTS = ROOT / "bench" / "results" / "shift_ablation.json"
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from train import config  # noqa: E402

EPOCHS = int(os.environ.get("ABLATE_EPOCHS", "20"))
V3 = config.V3_PARTS
# name -> (parts, CutMix/MixUp per batch)
CANDIDATES: dict[str, tuple[tuple[str, ...], bool]] = {
    "v3": (V3, False),  # the CPU recipe before this ablation
    "v3 + strong RandAugment": (tuple("randaugment_strong" if p == "randaugment" else p for p in V3), False),
    "v3 + overlay": (V3 + ("overlay",), False),
    "v3 + erase": (config.AUGMENT_PRESETS["v3e"].parts, False),  # the CPU recipe since
    "v3e + tone ops (v3t)": (config.AUGMENT_PRESETS["v3t"].parts, False),
    "v3t + wider geometry (v3tw)": (config.AUGMENT_PRESETS["v3tw"].parts, False),
    "v3e + wider geometry (v3ew)": (("dihedral", "geometry_wide", *V3[2:], "erase"), False),
    "v4 (all three)": (config.AUGMENT_PRESETS["v4"].parts, False),
    "v4 + CutMix/MixUp": (config.AUGMENT_PRESETS["v4"].parts, True),
}


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name).strip("_")


for _name, (_parts, _mix) in CANDIDATES.items():
    config.AUGMENT_PRESETS.setdefault(slug(_name), config.Preset(_name, _parts, _mix))


def run_dir(name: str, seed: int) -> Path:
    return WORK / (slug(name) if seed == 0 else f"{slug(name)}_seed{seed}")


def row_name(name: str, seed: int) -> str:
    return name if seed == 0 else f"{name} (seed {seed})"


def train(only: list[str] | None, seed: int) -> None:
    from train.config import TrainConfig
    from train.trainer import run_training

    for name in CANDIDATES:
        if only and slug(name) not in only:
            continue
        cfg = TrainConfig.from_options("cpu", data=str(DATA / "pbc96_train.npz"), val=str(DATA / "pbc96_val.npz"),
                                       out=str(run_dir(name, seed)), augment=slug(name), epochs=EPOCHS,
                                       polish_epochs=0, time_budget_minutes=0.0, seed=seed)
        print(f"== {row_name(name, seed)}", flush=True)
        run_training(cfg)


def score(only: list[str] | None, seed: int) -> dict:
    from submission.model import DIHEDRAL_VIEWS, TTAEnsemble
    from tools.package import load_models
    from tools.shift.an2dl import an2dl_shift
    from tools.shift.hidden import CALIBRATED, HIDDEN_LEVELS, hidden_shift
    from tools.tta_select import ADAPT_PRIOR
    from train.atomic import write_json
    from train.runs import find_members, read_metrics

    with np.load(DATA / "pbc96_val.npz", allow_pickle=False) as data:
        images, labels = data["images"], data["labels"].astype(np.int64)
    sets = {"clean": images, **{f"hidden@{k}": hidden_shift(images, k, seed=0) for k in HIDDEN_LEVELS},
            # The calibrated shift erases a rectangle in 60% of the images, so "erase" is partly trained for it
            # by construction: the same shift without that part, and the AN2DL-style suite, tell how much of a
            # gain is more than that.
            "hidden@2 without cutout": hidden_shift(images, seed=0, shift=replace(CALIBRATED, cutout_prob=0.0)),
            "an2dl@2": an2dl_shift(images, 2, seed=0)}
    results: dict = {"epochs": EPOCHS, "data": "pbc96_val (991 images)", "views": "8 dihedral", "candidates": {}}
    kept = json.loads(RESULTS.read_text())["candidates"] if only and RESULTS.is_file() else {}
    results["candidates"] = dict(kept)  # rows scored now replace theirs in place
    for name in CANDIDATES:
        run = run_dir(name, seed)
        if only and slug(name) not in only or not (run / "metrics.json").is_file():
            continue
        models = load_models(find_members(run))
        row = {"train_minutes": read_metrics(run).get("train_seconds", 0) / 60}
        for adapt in (None, ADAPT_PRIOR):
            ensemble = TTAEnsemble(models, views=DIHEDRAL_VIEWS, adapt_bn=adapt)
            acc = {k: float(np.mean(ensemble.predict(x) == labels)) for k, x in sets.items()}
            row["adapted" if adapt else "plain"] = acc
        results["candidates"][row_name(name, seed)] = row
        print(row_name(name, seed), json.dumps(row), flush=True)
    base = results["candidates"].get("v3")
    if base:
        for row in results["candidates"].values():
            for mode in ("plain", "adapted"):
                row[f"delta_vs_v3_{mode}"] = {k: row[mode][k] - base[mode][k] for k in row[mode]}
    write_json(RESULTS, results)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("step", choices=("train", "score"))
    parser.add_argument("--only", default="")
    parser.add_argument("--seed", type=int, default=0, help="training seed; 0 = the table's runs")
    args = parser.parse_args()
    if not (DATA / "pbc96_train.npz").is_file():
        print(f"skip: {DATA} not found")
        return
    only = [s for s in args.only.split(",") if s] or None
    if args.step == "train":
        train(only, args.seed)
    else:
        score(only, args.seed)


if __name__ == "__main__":
    main()
