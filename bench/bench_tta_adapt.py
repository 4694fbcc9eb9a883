"""Benchmark: a test-time option on vs off (BatchNorm adaptation, or tone repair), on every suite variant and
on a mixed test array.

Takes a packaged zip (default: the CPU benchmark's, ``bench/runs/cpu.zip``), rebuilds its ensemble with
its own TTA views, and predicts pbc96_test shifted by each variant (clean, hidden@1..3, the corruptions at
severity 3, an2dl@1..3) and a mix (half clean, a quarter hidden@2, a quarter an2dl@2, shuffled) with
adaptation off and on (the prior ``tools/tta_select.ADAPT_PRIOR``); also the predict-time overhead of
adaptation on the same images. Writes ``bench/results/tta_adapt.json``. Env: BENCH_TTA_IMAGES (a seeded
random subset of pbc96_test; default all 1,982: about 2 minutes per variant for a CPU-preset zip on 2 cores).
BENCH_TTA_OPTION=repair compares image repair (``submission/model.py`` ImageRepair: the zip's own, else one
with the quantiles of pbc96_val) off and on instead, each with the zip's own adaptation setting, and writes
``bench/results/tta_repair.json``; BENCH_TTA_OPTION=fill compares the repair without and with its erased-box
fill (``ErasedBoxFill``) and writes ``bench/results/tta_fill.json``.

    python bench/bench_tta_adapt.py [ZIP]
    BENCH_TTA_OPTION=repair python bench/bench_tta_adapt.py [ZIP]
    BENCH_TTA_OPTION=fill python bench/bench_tta_adapt.py [ZIP]
"""

from __future__ import annotations

import json
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


def main() -> None:
    from submission import model as runtime
    from tools.harness import safe_extract
    from tools.shift.suite import apply_variant, make_variant, plan_variants
    from tools.tta_select import ADAPT_PRIOR
    from train.atomic import write_json

    zip_path = Path(sys.argv[1] if len(sys.argv) > 1 else ROOT / "bench" / "runs" / "cpu.zip")
    if not zip_path.is_file() or not (DATA / "pbc96_test.npz").is_file():
        print(f"skip: {zip_path} or {DATA} not found (run bench_train_cpu.py first)")
        return
    with np.load(DATA / "pbc96_test.npz", allow_pickle=False) as data:
        images, labels = data["images"], data["labels"].astype(np.int64)
    limit = int(os.environ.get("BENCH_TTA_IMAGES", "0"))
    if 0 < limit < len(images):
        keep = np.sort(np.random.default_rng(0).choice(len(images), limit, replace=False))
        images, labels = images[keep], labels[keep]
    with tempfile.TemporaryDirectory() as tmp:
        safe_extract(zip_path, Path(tmp))
        manifest = json.loads((Path(tmp) / runtime.MANIFEST_NAME).read_text())
        models = [runtime.load_member(tmp, entry) for entry in manifest["members"]]
    weights = [float(e.get("weight", 1.0)) for e in manifest["members"]]
    views = manifest["tta"]["views"]
    option = os.environ.get("BENCH_TTA_OPTION", "adapt")
    if option in ("repair", "fill"):
        shipped = manifest["tta"].get("repair")
        with np.load(DATA / "pbc96_val.npz", allow_pickle=False) as data:
            reference = shipped["reference"] if shipped else runtime.ToneRepair.from_images(data["images"]).reference
        repairs = {False: None, True: runtime.ImageRepair(reference, fill_erased=True)}
        if option == "fill":
            repairs[False] = runtime.ImageRepair(reference, fill_erased=False)
        adapt_bn = manifest["tta"].get("adapt_bn")
        ensembles = {on: runtime.TTAEnsemble(models, weights, views, adapt_bn=adapt_bn, repair=repair)
                     for on, repair in repairs.items()}
    else:
        ensembles = {adapt: runtime.TTAEnsemble(models, weights, views, adapt_bn=adapt)
                     for adapt in (None, ADAPT_PRIOR)}
    variants = plan_variants(("clean", "hidden", "corruptions", "an2dl"), (3,))
    variants += [make_variant("an2dl", "an2dl", k) for k in (1, 3)]
    rng = np.random.default_rng(0)
    n = len(images)
    parts = [images[: n // 2], apply_variant(images[n // 2: 3 * n // 4], make_variant("hidden", "hidden", 2)),
             apply_variant(images[3 * n // 4:], make_variant("an2dl", "an2dl", 2))]
    order = rng.permutation(n)
    mixed = (np.concatenate(parts)[order], labels[order])
    rows = {}
    for variant in variants:
        shifted = apply_variant(images, variant)
        rows[variant.name] = {("on" if a else "off"): float(np.mean(e.predict(shifted) == labels))
                              for a, e in ensembles.items()}
        print(variant.name, rows[variant.name], flush=True)
    rows["mixed (1/2 clean, 1/4 hidden@2, 1/4 an2dl@2)"] = {
        ("on" if a else "off"): float(np.mean(e.predict(mixed[0]) == mixed[1])) for a, e in ensembles.items()}
    seconds = {}
    for adapt, ensemble in ensembles.items():
        ensemble.predict(images[:64])
        start = time.perf_counter()
        ensemble.predict(images)
        seconds["on" if adapt else "off"] = time.perf_counter() - start
    shifted_names = [v.name for v in variants if v.suite != "clean"]
    result = {"zip": str(zip_path), "option": option, "views": views, "members": len(models),
              "accuracy": rows,
              "mean_shifted": {k: float(np.mean([rows[v][k] for v in shifted_names])) for k in ("off", "on")},
              "images": len(images), "predict_seconds": seconds, "overhead_ratio": seconds["on"] / seconds["off"],
              "shipped_with_adaptation": manifest["tta"].get("adapt_bn") is not None,
              "shipped_with_repair": manifest["tta"].get("repair") is not None}
    if option in ("repair", "fill"):
        write_json(ROOT / "bench" / "results" / f"tta_{option}.json", result)
    else:
        write_json(ROOT / "bench" / "results" / "tta_adapt.json", {**result, "prior": ADAPT_PRIOR})
    print(json.dumps({k: result[k] for k in ("mean_shifted", "predict_seconds", "overhead_ratio")}))


if __name__ == "__main__":
    main()
