"""Polish at a larger side (progressive resizing, issue 16): does a from-scratch network that trained its main
stage at 56 px gain when its polish epochs run at a larger side?

Takes a finished snapshot run of ``--preset cpu`` (``unpolished/`` + ``polished/``) and, for each side, trains
the run's polish stage again from its ``unpolished/`` weights at that side (same seed, epochs, learning rate,
augmentation, precision and best-epoch rule as the run), into ``OUT/polishSIDE`` — a run dir ``bcsub package``
takes (the unpolished member is copied; only the polished one differs). The networks' weights do not depend on
the side (convolutions and global pooling), so the same weights run at any side. Choose on pbc96_val, as every
recipe here: ``--score`` scores the polished member alone and the pair, with the 8 dihedral views and the zip's
image repair, on pbc96_val clean and under the calibrated hidden shift (seeds 0 and 1), for each side and for the
run as it trained.

    python bench/ablate_polish_side.py bench/runs/epyc_bf16 --sides 72 56 --out bench/runs/polish_side
    python bench/ablate_polish_side.py bench/runs/epyc_bf16 --sides 72 56 --out bench/runs/polish_side --score
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from dataclasses import fields
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import keras  # noqa: E402
import numpy as np  # noqa: E402

from submission.model import assign_weights, build_network, load_weights  # noqa: E402
from train.config import TrainConfig  # noqa: E402
from train.data import load_dataset  # noqa: E402
from train.fit import MemberFit, plan_stages, run_stage  # noqa: E402
from train.pipeline import prior_logit_offsets  # noqa: E402
from train.runs import (  # noqa: E402
    MemberResult,
    finish_run,
    read_metrics,
    read_val_probs,
    write_ensemble,
    write_validation,
)

RESULTS = ROOT / "bench" / "results" / "polish_side.json"
DATA = ROOT.parent / "shared" / "data"
COPIED = ("config.json", "split.json", "precision.json")


def polish_at(run: Path, side: int, out: Path) -> dict:
    """Train ``run``'s polish stage again at ``side`` from its unpolished weights into ``out``."""
    saved = json.loads((run / "config.json").read_text())
    xla = json.loads((run / "xla.json").read_text())["xla"] if (run / "xla.json").is_file() else False
    known = {f.name for f in fields(TrainConfig)}
    cfg = TrainConfig(**{**{k: v for k, v in saved.items() if k in known}, "image_size": side, "auto_image_size": False,
                         "time_budget_minutes": 0, "xla": "on" if xla else "off", "out": str(out)})
    out.mkdir(parents=True, exist_ok=True)
    for name in COPIED:
        if (run / name).is_file():
            shutil.copy(run / name, out / name)
    if not (out / "unpolished").is_dir():
        shutil.copytree(run / "unpolished", out / "unpolished")
    train, val = load_dataset(cfg.data), load_dataset(cfg.val)
    fit = MemberFit(cfg, train, val, out, cfg.backbone, cfg.seed)
    fit.setup()
    shipped = build_network({k: v for k, v in json.loads((run / "unpolished" / "model.json").read_text()).items()
                             if k != "logit_offsets"})
    load_weights(shipped, str(run / "unpolished" / "weights.npz"))
    assign_weights(fit.model, shipped.get_weights())
    stage = next(s for s in plan_stages(cfg) if s.name == "polish")
    start = time.time()
    run_stage(fit.model, stage, fit.cfg, fit.strategy, *fit.train_batches(stage.augment), fit.val_ds, out, None)
    seconds = time.time() - start
    keras.mixed_precision.set_global_policy("float32")
    spec = {**fit.spec, "logit_offsets": prior_logit_offsets(train.labels)}
    polished = finish_run(fit.model, spec, val, out / "polished", train_seconds=seconds)
    pair = np.mean([read_val_probs(out / name) for name in ("unpolished", "polished")], axis=0)
    write_validation(pair, val, out, seconds, f"{cfg.backbone} snapshot ensemble")  # a complete run dir
    write_ensemble(out, [MemberResult("unpolished", cfg.backbone, cfg.seed, read_metrics(out / "unpolished")),
                         MemberResult("polished", cfg.backbone, cfg.seed, polished)])
    return {"side": side, "out": str(out), "polish_seconds": round(seconds, 1),
            "polished_val_accuracy": polished["accuracy"], "epochs": stage.epochs}


def score(runs: dict[str, Path]) -> dict:
    """Validation accuracy of each run's polished member alone and of its pair (8 dihedral views, image repair),
    clean and under the calibrated hidden shift drawn from seeds 0 and 1."""
    from submission.model import DIHEDRAL_VIEWS, ImageRepair, TTAEnsemble
    from tools.package import load_models
    from tools.shift.hidden import hidden_shift
    from train.runs import find_members

    with np.load(DATA / "pbc96_val.npz", allow_pickle=False) as data:
        images, labels = data["images"], data["labels"].astype(np.int64)
    with np.load(DATA / "pbc96_train.npz", allow_pickle=False) as data:
        train = data["images"]
    repair = ImageRepair.from_images(train[np.random.default_rng(1).permutation(len(train))[:2000]])
    sets = {"clean": images, "hidden@2 seed 0": hidden_shift(images, seed=0),
            "hidden@2 seed 1": hidden_shift(images, seed=1)}
    scores = {}
    for name, run in runs.items():
        models = load_models(find_members(run))
        for label, networks in (("polished", models[1:]), ("pair", models)):
            ensemble = TTAEnsemble(networks, views=DIHEDRAL_VIEWS, repair=repair)
            scores[f"{name}: {label}"] = {k: float(np.mean(ensemble.predict(x) == labels)) for k, x in sets.items()}
            print(name, label, json.dumps(scores[f"{name}: {label}"]), flush=True)
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--sides", type=int, nargs="+", default=[56, 72])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "runs" / "polish_side")
    parser.add_argument("--score", action="store_true", help="score the finished dirs on pbc96_val")
    args = parser.parse_args()
    results = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {"run": str(args.run)}
    if args.score:
        dirs = {f"polish at {side} px": args.out / f"polish{side}" for side in args.sides}
        results["val"] = score({**dirs, "the run as trained": args.run})
    else:
        results["rows"] = [polish_at(args.run, side, args.out / f"polish{side}") for side in args.sides]
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
