"""Benchmark: finished `bcsub train --preset cpu` runs packaged as ONE ensemble zip (`bcsub package RUN RUN ...`,
TTA and member weights chosen on the runs' recorded validation split), then `bcsub local-score` on pbc96_val
(where choices are made) and on pbc96_test (the final report): what a user gains by spending two or three
30-minute CPU budgets instead of one.

Usage: ``python bench/ensemble_runs.py NAME RUN_DIR [RUN_DIR ...]`` (not part of `make bench`, which runs
bench/bench_*.py: this one needs finished run dirs). Writes bench/results/ensemble_NAME.json (zip at
bench/runs/NAME.zip, scores next to it; existing ones are reused, BENCH_REPACKAGE=1 redoes them).
Needs ../shared/data (skips otherwise).
"""

from __future__ import annotations

import json
import os
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_train_cpu import DATA, bcsub, member_dirs, one_or_all, read_each, summary_of  # noqa: E402
from bench.machine import describe  # noqa: E402
from train.atomic import write_json  # noqa: E402

SCORE_KEYS = ("clean_accuracy", "clean_macro_f1", "expected_hidden_accuracy", "ci95", "suite_mean_accuracy",
              "projected_seconds_10000_images", "seen")


def run_facts(run: Path) -> dict:
    """What a run was: its recipe choices, the epochs its plan ran, its training time (per member for --members K;
    the side and precision of its first member)."""
    config = json.loads((run / "config.json").read_text())
    members = member_dirs(run)
    plans, metrics = read_each(members, "plan.json"), read_each(members, "metrics.json")
    side, precision = (read_each(members[:1], name) or [{}] for name in ("side.json", "precision.json"))
    epochs = [{s["name"]: s["done"] for s in plan.get("stages", [])} for plan in plans]
    accuracies = [m.get("accuracy") for m in metrics]
    return {"run": str(run.relative_to(ROOT)) if run.is_relative_to(ROOT) else str(run),
            **{k: config.get(k) for k in ("augment", "seed")},
            "precision": precision[0].get("policy", config.get("precision")),
            "image_size": side[0].get("image_size", config.get("image_size")),
            "epochs": one_or_all(epochs),
            "train_min": round(sum(m.get("train_seconds", 0) for m in metrics) / 60, 1),
            "val_accuracy": one_or_all(accuracies)}


def scored(zip_path: Path, split: str) -> tuple[dict, float | None]:
    """The local-score summary of ``zip_path`` on pbc96_``split`` (reused when already written)."""
    out = zip_path.parent / f"{zip_path.stem}_{split}.json"
    seconds = None
    if os.environ.get("BENCH_REPACKAGE") == "1" or not out.is_file():
        seconds = bcsub("local-score", str(zip_path), "--data", str(DATA / f"pbc96_{split}.npz"), "--json", str(out))
    summary = summary_of(out)
    return {k: summary.get(k) for k in SCORE_KEYS}, seconds


def main(name: str, runs: list[str]) -> None:
    if not (DATA / "pbc96_val.npz").is_file():
        print(f"skip: {DATA} not found")
        return
    zip_path = ROOT / "bench" / "runs" / f"{name}.zip"
    package_s = None
    if os.environ.get("BENCH_REPACKAGE") == "1" or not zip_path.is_file():
        package_s = bcsub("package", *runs, "--out", str(zip_path))
    val, val_s = scored(zip_path, "val")
    test, test_s = scored(zip_path, "test")
    with zipfile.ZipFile(zip_path) as archive:
        manifest = json.loads(archive.read("bcsub_submission.json"))
    chosen = next((row for row in manifest["tta"]["selection"] if row.get("chosen")), {})
    result = {
        "device": describe(),
        "runs": [run_facts(Path(run).resolve()) for run in runs],
        "zip": str(zip_path.relative_to(ROOT)), "networks": len(manifest["members"]),
        "tta": {k: chosen.get(k) for k in ("name", "weighting", "weights", "repair", "zoom", "adapt_bn")},
        "package_wall_s": package_s, "val": val, "val_wall_s": val_s, "test": test, "test_wall_s": test_s,
    }
    write_json(ROOT / "bench" / "results" / f"ensemble_{name}.json", result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    if len(sys.argv) < 3:
        raise SystemExit(__doc__)
    main(sys.argv[1], sys.argv[2:])
