"""Benchmark data inspection/cleaning on real PBC cells with injected AN2DL-like outliers.

    .venv/bin/python bench/bench_inspect.py [--data ../shared/data/pbc96_train.npz] [--pngs DIR]

Main scenario: 6,941 PBC train images + 1,600 + 200 pixel-identical copies of two non-cell
pictures (labels over all classes) + 5 agreeing duplicates + 1 conflicting pair. Timed:
inspect_arrays + plan_cleaning + write_inspection. Scored: precision/recall of the removals.
Side scenario ("singletons"): 50 distinct non-cell pictures inserted once each, so only the
appearance detector can find them; run for each detector (iforest, lof) to compare them.
Writes bench/results/inspect.json (atomically).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tools.inspect_report import write_inspection  # noqa: E402
from train.atomic import write_json  # noqa: E402
from train.cleaning import DETECTORS, inspect_arrays, plan_cleaning  # noqa: E402
from train.synthetic import make_an2dl_like  # noqa: E402

DEFAULT_DATA = ROOT.parent / "shared/data/pbc96_train.npz"
RESULTS = ROOT / "bench/results/inspect.json"


def score_removal(keep: np.ndarray, truth: dict) -> dict:
    """Precision/recall of removed indices vs the truth, plus per-category recall."""
    removed = set(np.flatnonzero(~keep).tolist())
    should = set(truth["outlier_indices"]) | set(truth["duplicate_copy_indices"]) | set(
        truth["conflict_indices"])
    genuine = truth["genuine_indices"]
    hit = len(removed & should)
    lost = len(removed - should)

    def recall(key: str) -> float | None:
        idx = set(truth[key])
        return round(len(idx & removed) / len(idx), 4) if idx else None

    return {
        "removed": len(removed),
        "should_remove": len(should),
        "precision": round(hit / max(len(removed), 1), 4),
        "recall": round(hit / max(len(should), 1), 4),
        "recall_outlier_copies": recall("outlier_indices"),
        "recall_duplicate_copies": recall("duplicate_copy_indices"),
        "recall_conflicts": recall("conflict_indices"),
        "genuine_removed": lost,
        "genuine_removed_fraction": round(lost / max(len(genuine), 1), 5),
    }


def main_scenario(images: np.ndarray, labels: np.ndarray, png_dir: Path | None) -> dict:
    x, y, truth = make_an2dl_like(images, labels, copies=(1600, 200), n_exact_duplicates=5, seed=0)
    t0 = time.perf_counter()
    result = inspect_arrays(x, y)
    t1 = time.perf_counter()
    plan = plan_cleaning(result, y, len(y))
    t2 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        out_dir = png_dir or Path(tmp)
        write_inspection(result, x, y, out_dir)
        n_files = len(list(out_dir.glob("*.png")))
    t3 = time.perf_counter()
    return {
        "n_images": len(y),
        "injected": {"outlier_copies": [1600, 200], "agreeing_duplicates": 5, "conflicting_pairs": 1,
                     "input_duplicates_dropped_first": truth["input_duplicates_dropped"]},
        "seconds": {"inspect": round(t1 - t0, 2), "plan": round(t2 - t1, 3),
                    "report": round(t3 - t2, 2), "total": round(t3 - t0, 2)},
        "found": {
            "exact_groups": len(result.exact_groups),
            "near_groups": len(result.near_groups),
            "conflict_groups": len(result.conflict_groups),
            "outliers": len(result.outlier_indices),
            "outliers_by": {k: sum(v == k for v in result.outlier_by.values())
                            for k in sorted(set(result.outlier_by.values()))},
            "removed_by_reason": plan.summary(),
            "png_files": n_files,
        },
        "score": score_removal(plan.keep, truth),
    }


def singleton_scenario(images: np.ndarray, labels: np.ndarray, detector: str) -> dict:
    x, y, truth = make_an2dl_like(images, labels, copies=(1,) * 50, n_exact_duplicates=0, seed=1)
    t0 = time.perf_counter()
    result = inspect_arrays(x, y, detector=detector)
    seconds = time.perf_counter() - t0
    plan = plan_cleaning(result, y, len(y))
    score = score_removal(plan.keep, truth)
    by = [result.outlier_by.get(i, "missed") for i in truth["outlier_indices"]]
    return {"detector": detector, "seconds": round(seconds, 2), "pictures": 50,
            "recall_pictures": score["recall_outlier_copies"],
            "pictures_flagged_by": {k: by.count(k) for k in sorted(set(by))},
            "genuine_removed": score["genuine_removed"],
            "genuine_removed_fraction": score["genuine_removed_fraction"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--pngs", type=Path, default=None, help="keep the report PNGs in this folder")
    parser.add_argument("--no-compare", action="store_true", help="skip the detector comparison")
    args = parser.parse_args()
    if not args.data.exists():
        print(f"skip: {args.data} not found (needs the shared PBC96 data at ../shared/data)")
        return 0
    with np.load(args.data, allow_pickle=False) as data:
        images, labels = data["images"], data["labels"].reshape(-1)
    print(f"{args.data.name}: {len(images)} images")
    report = {
        "data": args.data.name,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "an2dl_like": main_scenario(images, labels, args.pngs),
    }
    print("main:", report["an2dl_like"]["seconds"], report["an2dl_like"]["score"])
    if not args.no_compare:
        report["singletons"] = [singleton_scenario(images, labels, d) for d in DETECTORS]
        for row in report["singletons"]:
            print("singletons:", row)
    write_json(args.out, report)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
