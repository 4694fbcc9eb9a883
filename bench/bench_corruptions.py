"""Benchmark the local-score shift suite: every corruption x 5 severities + 3 an2dl strengths.

Run from the repo root:  .venv/bin/python bench/bench_corruptions.py [--n 2000]
Uses the first N images of ../shared/data/pbc96_test.npz when present, else synthetic images.
Writes bench/results/corruptions.json (atomically).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tools.shift.an2dl import AN2DL_STRENGTHS, an2dl_shift  # noqa: E402
from tools.shift.corruptions import CORRUPTIONS, SEVERITIES, corrupt  # noqa: E402
from train.atomic import write_json  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "pbc96_test.npz"
OUT = ROOT / "bench" / "results" / "corruptions.json"
GOAL_S = 60.0


def synthetic(n: int, seed: int = 0) -> np.ndarray:
    """Smooth random colour images with a dark round 'cell' (stand-in when no data is present)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:96, 0:96] / 95.0
    base = rng.uniform(150, 230, (n, 1, 1, 3)) + 25 * np.sin(
        rng.uniform(1, 4, (n, 1, 1, 3)) * (yy[None, :, :, None] + xx[None, :, :, None])
    )
    cy, cx, r = rng.uniform(0.3, 0.7, (3, n, 1, 1))
    cell = ((yy - cy) ** 2 + (xx - cx) ** 2 < (0.15 + 0.15 * r) ** 2)[..., None]
    img = np.where(cell, base * 0.45, base) + rng.normal(0, 4, (n, 96, 96, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def load_images(n: int) -> tuple[np.ndarray, str]:
    if DATA.exists():
        with np.load(DATA, allow_pickle=False) as d:
            return d["images"][:n], str(DATA.relative_to(ROOT.parent))
    print(f"note: {DATA} not found; using {n} synthetic images instead")
    return synthetic(n), "synthetic"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000, help="number of images (default 2000)")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()

    images, source = load_images(args.n)
    n = len(images)
    print(f"{n} images from {source}; {len(CORRUPTIONS)} corruptions x {len(SEVERITIES)} "
          f"severities + {len(AN2DL_STRENGTHS)} an2dl strengths")
    per: dict[str, float] = {}
    mad: dict[str, list[float]] = {}
    total = cpu = 0.0  # timed calls only (the MAD check below is not counted)
    jobs = [(c, SEVERITIES, lambda s, c=c: corrupt(images, c, s)) for c in CORRUPTIONS]
    jobs.append(("an2dl", AN2DL_STRENGTHS, lambda s: an2dl_shift(images, s)))
    for name, levels, fn in jobs:
        per[name], mad[name] = 0.0, []
        for s in levels:
            t, c = time.perf_counter(), time.process_time()
            out = fn(s)
            per[name] += time.perf_counter() - t
            cpu += time.process_time() - c
            mad[name].append(round(float(np.abs(out.astype(np.int16) - images).mean()), 2))
        total += per[name]
        per[name] = round(per[name], 3)
        print(f"  {name:16s} {per[name]:7.2f} s   MAD by level {mad[name]}", flush=True)
    passed = total < GOAL_S
    print(f"total {total:.1f} s wall ({cpu:.1f} s CPU) for {n} images; goal < {GOAL_S:.0f} s: "
          f"{'PASS' if passed else 'FAIL'}")
    write_json(
        args.out,
        {
            "benchmark": "corruptions",
            "n_images": n,
            "source": source,
            "variants": len(CORRUPTIONS) * len(SEVERITIES) + len(AN2DL_STRENGTHS),
            "seconds_per_corruption": per,
            "mean_abs_diff_by_level": mad,
            "total_seconds": round(total, 2),
            "cpu_seconds": round(cpu, 2),
            "goal_seconds": GOAL_S,
            "passed": passed,
            "cpu_count": os.cpu_count(),
            "load_avg_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
            "python": platform.python_version(),
            "numpy": np.__version__,
        },
    )
    print(f"wrote {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
