"""Benchmark: `bcsub train --preset cpu` on PBC96 (2 CPU cores; the preset plans its schedule for 30 minutes,
packaging included), `bcsub package` (TTA chosen on the run's recorded validation split), then
`bcsub local-score` on pbc96_test: the calibrated expected hidden score (clean + hidden suite, the command's
default: goal under 5 minutes), then the diagnostic suites (corruptions and AN2DL-style at severities 1,3,5
on a stratified BENCH_SHIFT_IMAGES, default 500, of the test images).

Goals (issue 16): train + package within 30 minutes on the machine it runs on; calibrated expected hidden
score >= 0.90; clean test accuracy >= 0.985. Re-running resumes: a finished run is not retrained (its
training time is read from metrics.json; BENCH_REUSE=1 also reuses its zip and scores). Writes
bench/results/train_NAME.json for the run dir
bench/runs/NAME (train_cpu.json by default). Needs ../shared/data (skips otherwise). Env: BENCH_OUT (run dir),
BENCH_TRAIN_ARGS (extra train options), BENCH_BUDGET_MIN (default 30).
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data"
sys.path.insert(0, str(ROOT))

from bench.machine import describe  # noqa: E402
from train.atomic import write_json  # noqa: E402


def bcsub(*args: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "tools.cli", *args], cwd=ROOT, check=True,
                   env={**os.environ, "PYTHONPATH": str(ROOT)})
    return time.perf_counter() - start


def summary_of(path: Path) -> dict:
    return json.loads(path.read_text())["submissions"][0]["summary"]


def member_dirs(out: Path) -> list[Path]:
    """The run dir itself for one member, else its ``member_*`` dirs (`--members K`)."""
    return [out] if (out / "metrics.json").is_file() else sorted(out.glob("member_*"))


def read_each(members: list[Path], name: str) -> list[dict]:
    return [json.loads((m / name).read_text()) for m in members if (m / name).is_file()]


def one_or_all(values: list):
    """A one-member run's value itself, else the list of every member's."""
    return values[0] if len(values) == 1 else values


def main() -> None:
    if not (DATA / "pbc96_train.npz").is_file():
        print(f"skip: {DATA} not found")
        return
    out = Path(os.environ.get("BENCH_OUT", ROOT / "bench" / "runs" / "cpu"))
    extra = shlex.split(os.environ.get("BENCH_TRAIN_ARGS", ""))
    budget = float(os.environ.get("BENCH_BUDGET_MIN", "30"))
    zip_path = out.parent / f"{out.name}.zip"
    hidden_json, shift_json = out.parent / f"{out.name}_hidden.json", out.parent / f"{out.name}_shift.json"
    done_before = member_dirs(out)
    fresh = not done_before or not all((m / "metrics.json").is_file() for m in done_before)
    train_s = bcsub("train", "--data", str(DATA / "pbc96_train.npz"), "--val", str(DATA / "pbc96_val.npz"),
                    "--preset", "cpu", "--time-budget", str(budget), "--out", str(out), *extra)
    members = member_dirs(out)
    if not fresh:
        train_s = sum(m["train_seconds"] for m in read_each(members, "metrics.json"))
    reuse = os.environ.get("BENCH_REUSE") == "1" and all(p.is_file() for p in (zip_path, hidden_json, shift_json))
    package_s = hidden_s = shift_s = None
    if not reuse:
        package_s = bcsub("package", str(out), "--out", str(zip_path))
        test = str(DATA / "pbc96_test.npz")
        hidden_s = bcsub("local-score", str(zip_path), "--data", test, "--json", str(hidden_json))
        shift_s = bcsub("local-score", str(zip_path), "--data", test, "--suite", "corruptions,an2dl",
                        "--severities", "1,3,5", "--limit", os.environ.get("BENCH_SHIFT_IMAGES", "500"),
                        "--json", str(shift_json), "--report", str(out.parent / f"{out.name}_report"))
    hidden, shift = summary_of(hidden_json), summary_of(shift_json)
    with zipfile.ZipFile(zip_path) as archive:
        tta = json.loads(archive.read("bcsub_submission.json"))["tta"]
    plans = read_each(members, "plan.json")
    accuracies = [m["accuracy"] for m in read_each(members, "metrics.json")]
    total_s = None if package_s is None else train_s + package_s
    result = {
        "device": describe(),
        "config": json.loads((out / "config.json").read_text()),
        "plan": one_or_all(plans) or None,
        "train_wall_s": train_s, "package_wall_s": package_s, "train_and_package_min": total_s and total_s / 60,
        "val_accuracy": one_or_all(accuracies),
        "test_accuracy_tta": hidden["clean_accuracy"], "test_macro_f1": hidden["clean_macro_f1"],
        "expected_hidden": hidden.get("expected_hidden_accuracy"), "ci95": hidden.get("ci95"),
        "hidden_levels": hidden.get("suite_mean_accuracy"), "calibration_mae": hidden.get("calibration_mae"),
        "expected_hidden_wall_s": hidden_s,
        "diagnostic_suite_means": shift["suite_mean_accuracy"], "diagnostic_shift_mean": shift["shift_mean_accuracy"],
        "diagnostic_wall_s": shift_s,
        "tta_views": tta["views"], "tta_adapt_bn": tta.get("adapt_bn"), "tta_repair": bool(tta.get("repair")),
        "goals": {"train_and_package_within_30_min": total_s and total_s <= budget * 60,
                  "expected_hidden>=0.90": (hidden.get("expected_hidden_accuracy") or 0) >= 0.90,
                  "test_accuracy>=0.985": (hidden["clean_accuracy"] or 0) >= 0.985,
                  "expected_hidden_under_5_min": None if hidden_s is None else hidden_s <= 300},
    }
    write_json(ROOT / "bench" / "results" / f"train_{out.name}.json", result)  # BENCH_OUT=.../cpu: train_cpu.json
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
