"""Benchmark: `bcsub train --preset cpu` on PBC96 (2 CPU cores, 30 min budget), packaged with TTA, then
local-scored on pbc96_test with the whole shift suite (issue: training that survives the hidden test).

Goal: training within 30 minutes; test accuracy >= 0.98 (packaged, TTA); mean shift-suite accuracy >= 0.93.
The clean score uses all 1,982 test images; the shift suite (severities 1,3,5: 37 variants) a stratified
BENCH_SHIFT_IMAGES (default 500) of them, to keep CPU scoring to minutes. Re-running resumes: a finished
run is not retrained (its training time is read from metrics.json).
Writes bench/results/train_cpu.json. Needs ../shared/data (skips otherwise). Env: BENCH_OUT (run dir),
BENCH_TRAIN_ARGS (extra train options), BENCH_BUDGET_MIN (default 26).
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data"
sys.path.insert(0, str(ROOT))

from train.atomic import write_json  # noqa: E402


def bcsub(*args: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "tools.cli", *args], cwd=ROOT, check=True,
                   env={**os.environ, "PYTHONPATH": str(ROOT)})
    return time.perf_counter() - start


def main() -> None:
    if not (DATA / "pbc96_train.npz").is_file():
        print(f"skip: {DATA} not found")
        return
    out = Path(os.environ.get("BENCH_OUT", ROOT / "bench" / "runs" / "cpu"))
    extra = shlex.split(os.environ.get("BENCH_TRAIN_ARGS", ""))
    budget = os.environ.get("BENCH_BUDGET_MIN", "28")
    zip_path = out.parent / f"{out.name}.zip"
    clean_json = out.parent / f"{out.name}_clean.json"
    shift_json = out.parent / f"{out.name}_shift.json"
    bcsub("train", "--data", str(DATA / "pbc96_train.npz"), "--val", str(DATA / "pbc96_val.npz"),
          "--preset", "cpu", "--time-budget", budget, "--out", str(out), *extra)
    train_s = json.loads((out / "metrics.json").read_text())["train_seconds"]
    package_s = bcsub("package", str(out), "--out", str(zip_path), "--val", str(DATA / "pbc96_val.npz"))
    test = str(DATA / "pbc96_test.npz")
    score_s = bcsub("local-score", str(zip_path), "--data", test, "--suite", "clean", "--json", str(clean_json))
    score_s += bcsub("local-score", str(zip_path), "--data", test, "--severities", "1,3,5", "--limit",
                     os.environ.get("BENCH_SHIFT_IMAGES", "500"), "--json", str(shift_json),
                     "--report", str(out.parent / f"{out.name}_report"))
    clean = json.loads(clean_json.read_text())["submissions"][0]["summary"]
    summary = json.loads(shift_json.read_text())["submissions"][0]["summary"]
    summary["clean_accuracy"], summary["clean_macro_f1"] = clean["clean_accuracy"], clean["clean_macro_f1"]
    config = json.loads((out / "config.json").read_text())
    history = (out / "history.csv").read_text().strip().splitlines()
    result = {
        "device": f"CPU ({os.cpu_count()} cores)",
        "config": config,
        "epochs_run": len(history) - 1,
        "train_wall_s": train_s, "package_wall_s": package_s, "local_score_wall_s": score_s,
        "val_accuracy": json.loads((out / "metrics.json").read_text())["accuracy"],
        "test_accuracy_tta": summary["clean_accuracy"], "test_macro_f1": summary["clean_macro_f1"],
        "shift_mean_accuracy": summary["shift_mean_accuracy"], "suite_means": summary["suite_mean_accuracy"],
        "expected_hidden": summary.get("expected_hidden_accuracy"), "ci95": summary.get("ci95"),
        "tta_views": json.loads(subprocess.run(["unzip", "-p", str(zip_path), "bcsub_submission.json"],
                                               capture_output=True, text=True).stdout)["tta"]["views"],
        "goals": {"train_within_30_min": train_s <= 1800,
                  "test_accuracy>=0.98": summary["clean_accuracy"] >= 0.98,
                  "shift_mean>=0.93": (summary["shift_mean_accuracy"] or 0) >= 0.93},
    }
    write_json(ROOT / "bench" / "results" / "train_cpu.json", result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
