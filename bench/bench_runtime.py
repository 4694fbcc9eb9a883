"""Benchmarks of the packaged runtime (issue: the CodaBench zip that cannot fail).

1. Throughput: packaged 8-view TTA vs a naive model.py calling ``model.predict`` once per view per image.
2. TTA overhead: k-view packaged predict time vs k x one batched ``model.predict`` of the bare model.
3. Memory: peak RSS of ``predict`` on 20,000 vs 1,000 images, in the ingestion replica's child process.

Writes bench/results/runtime_<device>.json. Env: BENCH_BACKBONES (comma list), BENCH_N (default 2000).
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
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from submission import model as runtime  # noqa: E402
from tools.harness import run_zip  # noqa: E402
from tools.package import PackageOptions, package  # noqa: E402
from train.atomic import write_json  # noqa: E402
from train.config import PRESETS  # noqa: E402

N = int(os.environ.get("BENCH_N", "2000"))
# backbone:image_size[:images] — a large backbone on CPU is timed on fewer images.
CPU_PRESET = f"{PRESETS['cpu']['backbone']}:{PRESETS['cpu']['image_size']}"
BACKBONES = os.environ.get("BENCH_BACKBONES", f"{CPU_PRESET},efficientnetv2s:96:400").split(",")
NAIVE_IMAGES = {"resnet-small": 60, "tinycnn": 60}  # the naive loop is timed on a subset, then per image


def images(n: int) -> np.ndarray:
    path = ROOT.parent / "shared/data/pbc96_test.npz"
    base = np.load(path, allow_pickle=False)["images"] if path.is_file() else \
        np.load(ROOT / "data/sample/test.npz", allow_pickle=False)["images"]
    reps = int(np.ceil(n / len(base)))
    return np.concatenate([base] * reps)[:n]


def make_run(tmp: Path, backbone: str, size: int) -> Path:
    """A run dir with random weights: speed does not depend on what the weights are."""
    run = tmp / f"run_{backbone}"
    run.mkdir()
    spec = {"backbone": backbone, "image_size": size, "num_classes": 8, "dropout": 0.3}
    runtime.save_weights(runtime.build_network(spec), str(run / "weights.npz"))
    (run / "model.json").write_text(json.dumps(spec))
    (run / "metrics.json").write_text(json.dumps({"accuracy": 0.0}))
    return run


def naive_predict(model, X: np.ndarray) -> np.ndarray:
    """The pattern of many public submissions: one predict call per view per image."""
    labels = []
    for image in X:
        probs = 0
        for k in range(8):
            view = np.rot90(image if k < 4 else image[:, ::-1], k % 4)
            probs = probs + model.predict(view[None].astype(np.float32), verbose=0)
        labels.append(int(np.argmax(probs)))
    return np.array(labels)


def bench_backbone(backbone: str, size: int, tmp: Path, X: np.ndarray) -> dict:
    run = make_run(tmp, backbone, size)
    zip_path = tmp / f"{backbone}.zip"
    package(PackageOptions([str(run)], str(zip_path), tta="8"), progress=lambda _: None)
    model = runtime.build_network(json.loads((run / "model.json").read_text()))
    runtime.load_weights(model, str(run / "weights.npz"))
    packaged = runtime.TTAEnsemble([model], views=8)
    packaged.predict(X[:64])
    start = time.perf_counter()
    packaged.predict(X)
    tta_s = time.perf_counter() - start
    model.predict(X[:64].astype(np.float32), batch_size=256, verbose=0)
    start = time.perf_counter()
    model.predict(X.astype(np.float32), batch_size=256, verbose=0)
    bare_s = time.perf_counter() - start
    n_naive = NAIVE_IMAGES.get(backbone, 20)
    naive_predict(model, X[:2])
    start = time.perf_counter()
    naive_predict(model, X[:n_naive])
    naive_per_image = (time.perf_counter() - start) / n_naive
    packaged_per_image = tta_s / len(X)
    return {
        "backbone": backbone, "image_size": size, "n_images": len(X), "zip_mb": zip_path.stat().st_size / 2**20,
        "packaged_8view_seconds": tta_s, "packaged_images_per_s": len(X) / tta_s,
        "naive_images_timed": n_naive, "naive_images_per_s": 1 / naive_per_image,
        "speedup_vs_naive": naive_per_image / packaged_per_image,
        "bare_predict_seconds": bare_s,
        "tta_overhead_ratio": 8 * bare_s / tta_s,  # 1.0 = TTA costs exactly k forward passes
        "zip": str(zip_path),
    }


def bench_memory(zip_path: Path) -> dict:
    small = images(1000)
    large = images(20000)
    result = {}
    for name, X in (("n1000", small), ("n20000", large)):
        run = run_zip(zip_path, {name: X}, time_limit=3600)
        record = run.variants[name]
        result[name] = {"peak_rss_mb": record["peak_rss_mb"], "rss_before_predict_mb": record["rss_before_mb"],
                        "predict_extra_mb": record["peak_rss_mb"] - record["rss_before_mb"],
                        "seconds": record["seconds"], "input_mb": X.nbytes / 2**20}
    result["peak_ratio"] = result["n20000"]["peak_rss_mb"] / result["n1000"]["peak_rss_mb"]
    result["predict_extra_ratio"] = result["n20000"]["predict_extra_mb"] / max(1.0, result["n1000"]["predict_extra_mb"])
    result["goal"] = 1.3
    return result


def main() -> None:
    device = "gpu" if tf.config.list_physical_devices("GPU") else "cpu"
    X = images(N)
    out = {"device": device, "cpus": os.cpu_count(), "backbones": []}
    with tempfile.TemporaryDirectory() as tmp:
        for entry in BACKBONES:
            backbone, size, *n = entry.split(":")
            row = bench_backbone(backbone, int(size), Path(tmp), X[: int(n[0])] if n else X)
            print(json.dumps(row, indent=1), flush=True)
            out["backbones"].append(row)
        first_zip = Path(out["backbones"][0]["zip"])
        out["memory"] = bench_memory(first_zip)
        print(json.dumps(out["memory"], indent=1), flush=True)
    first = out["backbones"][0]
    out["goals"] = {"speedup_vs_naive>=50": first["speedup_vs_naive"] >= 50,
                    "tta_overhead_ratio>=0.85": first["tta_overhead_ratio"] >= 0.85,
                    # predict's own memory (peak minus the RSS with X already loaded): X itself is the caller's
                    # array and grows with n by definition (527 MB at 20,000 images).
                    "memory_predict_ratio<=1.3": out["memory"]["predict_extra_ratio"] <= 1.3}
    write_json(ROOT / "bench/results" / f"runtime_{device}.json", out)
    print(json.dumps(out["goals"]))


if __name__ == "__main__":
    main()
