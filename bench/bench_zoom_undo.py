"""Benchmark: the zoom undo's threshold (``submission/model.py`` ZoomUndo), chosen on pbc96_val.

Takes a packaged zip (default: the CPU preset's ``bench/runs/cpu_56_darkfold_fill.zip``) and the training data
its networks were trained on, fits the zoom estimate as ``bcsub package`` does (``tools/zoom_fit.py``, on
pbc96_train, after the zip's own image repair), and predicts pbc96_val clean and shifted by hidden@1..3 with the
zip's own TTA, the zoom undo off and on at each threshold of ``THRESHOLDS``; also the share of images each moves,
the estimate's error on held-out zoomed training images, and the fit's and the predict's seconds. Writes
``bench/results/zoom_undo_val.json`` (about 8 minutes on 2 cores).

    python bench/bench_zoom_undo.py [ZIP]
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data"
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

THRESHOLDS = (0.1, 0.15, 0.2, 0.25)


def main() -> None:
    from submission import model as runtime
    from tools.harness import safe_extract
    from tools.shift.suite import apply_variant, make_variant
    from tools.zoom_fit import fit_zoom_undo
    from train.atomic import write_json

    zip_path = Path(sys.argv[1] if len(sys.argv) > 1 else ROOT / "bench" / "runs" / "cpu_56_darkfold_fill.zip")
    if not zip_path.is_file() or not (DATA / "pbc96_val.npz").is_file():
        print(f"skip: {zip_path} or {DATA} not found")
        return
    with np.load(DATA / "pbc96_val.npz", allow_pickle=False) as data:
        images, labels = data["images"], data["labels"].astype(np.int64)
    with np.load(DATA / "pbc96_train.npz", allow_pickle=False) as data:
        train = data["images"]
    sets = {"clean": images}
    for level in (1, 2, 3):
        sets[f"hidden@{level}"] = apply_variant(images, make_variant("hidden", "hidden", level), 0)
    with tempfile.TemporaryDirectory() as tmp:
        safe_extract(zip_path, Path(tmp))
        ensemble = runtime.load_ensemble(tmp)
    start = time.perf_counter()
    undo, error = fit_zoom_undo(ensemble.models[0], train, seed=0, repair=ensemble.repair)
    fit_s = time.perf_counter() - start

    def accuracies(zoom) -> dict:
        runs = runtime.TTAEnsemble(ensemble.models, list(ensemble.member_weights), ensemble.views,
                                   adapt_bn=ensemble.adapt_bn, repair=ensemble.repair, zoom=zoom)
        out = {}
        for name, x in sets.items():
            start = time.perf_counter()
            out[name] = float(np.mean(runs.predict(x) == labels))
            out[f"{name} seconds"] = round(time.perf_counter() - start, 1)
        return out

    estimates = {name: np.abs(undo.estimate(runtime.network_input(x, 1.0, ensemble.repair)))
                 for name, x in sets.items()}
    rows = [{"threshold": None, **accuracies(None)}]
    for threshold in THRESHOLDS:
        undo.threshold = threshold
        moved = {f"{name} moved": float(np.mean(e > threshold)) for name, e in estimates.items()}
        rows.append({"threshold": threshold, **accuracies(undo), **moved})
        print(rows[-1], flush=True)
    result = {"zip": str(zip_path.relative_to(ROOT) if zip_path.is_relative_to(ROOT) else zip_path),
              "data": "pbc96_val (clean, hidden@1..3)", "fit_images": "pbc96_train", "fit_seconds": round(fit_s, 1),
              "estimate_held_out_mae": error, "rows": rows,
              "device": os.environ.get("BENCH_DEVICE", "CPU (2 cores)")}
    write_json(ROOT / "bench" / "results" / "zoom_undo_val.json", result)
    print(result)


if __name__ == "__main__":
    main()
