"""Which part of the calibrated hidden shift costs a trained model its accuracy (issue 16).

For each run dir, scores its shipped networks (8 dihedral TTA views, as ``bench/ablate_shift.py``) on
pbc96_val — never pbc96_test — clean, under the calibrated hidden shift (level 2: the expected hidden
score), under that shift with one part left out, with one part alone, and with each RandAugment-style
pixel op alone (one per image, at the calibrated magnitude), and each geometric transform alone. An op
alone hits every image; in the calibrated shift it hits 1 in ``len(PIXEL_OPS)``, so its share of the
hidden-score loss is about (clean - op alone) / ``len(PIXEL_OPS)``. Writes ``bench/results/hidden_components.json``.

    python bench/hidden_components.py bench/runs/cpu_reserve [more run dirs]
    python bench/hidden_components.py RUN --recalibrate-bn 2000   # BatchNorm statistics re-estimated first
                                                                  # on 2,000 clean pbc96_train images
    python bench/hidden_components.py RUN --tone-repair   # with the runtime's ToneRepair (reference: the
                                                         # quantiles of 2,000 clean pbc96_train images)
    python bench/hidden_components.py RUN --repair        # with the whole ImageRepair (erased-box fill too)
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
RESULTS = ROOT / "bench" / "results" / "hidden_components.json"
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from tools.shift.hidden import CALIBRATED, PIXEL_OPS, hidden_shift  # noqa: E402

NOTHING = replace(CALIBRATED, ops_per_image=0, overlay_prob=0.0, cutout_prob=0.0,
                  colour=0.0, tone=0.0, geometry=0.0)
# part -> the calibrated shift's fields that make it. Every variant, even "geometry" left out, still gets the
# shift's random flip / 90-degree rotation, which the 8 dihedral views undo.
PARTS = {
    "colour and tone": {"colour": CALIBRATED.colour, "tone": CALIBRATED.tone},
    "geometry": {"geometry": CALIBRATED.geometry},
    "pixel ops": {"ops_per_image": CALIBRATED.ops_per_image},
    "cutout": {"cutout_prob": CALIBRATED.cutout_prob},
}


# The geometry of the calibrated shift (tools/shift/hidden.py at geometry 1.0) one transform at a time, each at
# a uniform random strength up to its full range (``MAX_ROTATION_DEG`` ... ``MAX_SHIFT``; zoom in x1..1.4, zoom
# out x0.71..1; reflect fill, as there).
GEOMETRY_PARTS = ("rotation", "shear", "zoom in", "zoom out", "shift")


def geometry_part(images: np.ndarray, part: str, seed: int = 0) -> np.ndarray:
    """``images`` (n,H,W,3) uint8 under one transform of ``GEOMETRY_PARTS``."""
    from tools.shift.hidden import MAX_ROTATION_DEG, MAX_SHEAR, MAX_SHIFT, MAX_ZOOM
    from tools.shift.ops import rotation, to_uint8, warp_affine

    n, h, w, _ = images.shape
    u = np.random.default_rng(seed).uniform(-1, 1, (4, n))
    mat, shift = np.tile(np.eye(2), (n, 1, 1)), np.zeros((n, 2))
    if part == "rotation":
        mat = rotation(np.deg2rad(u[0] * MAX_ROTATION_DEG))
    elif part == "shear":
        mat[:, 0, 1] = u[1] * MAX_SHEAR
    elif part in ("zoom in", "zoom out"):
        mat *= ((1 + MAX_ZOOM) ** (np.abs(u[2]) * (-1 if part == "zoom in" else 1)))[:, None, None]
    else:
        shift = u[2:].T * MAX_SHIFT * np.array([h, w])
    return to_uint8(warp_affine(images, mat, shift))


def shifted_sets(images: np.ndarray) -> dict[str, np.ndarray]:
    """Every variant this benchmark scores, by name."""
    sets = {"clean": images, "hidden@2": hidden_shift(images, seed=0)}
    for part, fields in PARTS.items():
        sets[f"without {part}"] = hidden_shift(images, seed=0, shift=replace(CALIBRATED, **dict.fromkeys(fields, 0)))
        sets[f"{part} alone"] = hidden_shift(images, seed=0, shift=replace(NOTHING, **fields))
    for op in PIXEL_OPS:
        sets[f"op {op} alone"] = hidden_shift(images, seed=0, shift=replace(NOTHING, ops_per_image=1), ops=(op,))
    for part in GEOMETRY_PARTS:
        sets[f"geometry: {part} alone"] = geometry_part(images, part)
    return sets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--recalibrate-bn", type=int, default=0, metavar="N",
                        help="first re-estimate every BatchNorm layer's statistics on N clean training images")
    parser.add_argument("--tone-repair", action="store_true",
                        help="undo solarisation / equalisation first (submission/model.py ToneRepair)")
    parser.add_argument("--repair", action="store_true",
                        help="fill erased boxes, then undo solarisation / equalisation (ImageRepair)")
    args = parser.parse_args()
    if not (DATA / "pbc96_val.npz").is_file():
        print(f"skip: {DATA} not found")
        return
    from submission.model import DIHEDRAL_VIEWS, BatchNormAdaptation, ImageRepair, TTAEnsemble
    from tools.package import load_models
    from train.atomic import write_json
    from train.runs import find_members

    with np.load(DATA / "pbc96_val.npz", allow_pickle=False) as data:
        images, labels = data["images"], data["labels"].astype(np.int64)
    sets = shifted_sets(images)
    results = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    results.setdefault("runs", {})
    results.update(data="pbc96_val (991 images)", views="8 dihedral", shift="calibrated hidden shift, level 2")
    clean_train = repair = None
    if args.recalibrate_bn or args.tone_repair or args.repair:
        with np.load(DATA / "pbc96_train.npz", allow_pickle=False) as data:
            train_images = data["images"]
    if args.recalibrate_bn:
        clean_train = train_images[np.sort(np.random.default_rng(0).permutation(len(train_images))
                                           [:args.recalibrate_bn])]
    if args.tone_repair or args.repair:
        repair = ImageRepair.from_images(train_images[np.random.default_rng(1).permutation(len(train_images))[:2000]],
                                         fill_erased=args.repair)
    for run in args.runs:
        models = load_models(find_members(run))
        for model in models if clean_train is not None else []:
            BatchNormAdaptation(model, prior=1e-6).adapt(clean_train)  # the training statistics are replaced
        ensemble = TTAEnsemble(models, views=DIHEDRAL_VIEWS, repair=repair)
        acc = {name: float(np.mean(ensemble.predict(x) == labels)) for name, x in sets.items()}
        acc["op share of the hidden loss"] = {
            op: (acc["clean"] - acc[f"op {op} alone"]) / len(PIXEL_OPS) for op in PIXEL_OPS}
        name = str(run.resolve().relative_to(ROOT) if run.resolve().is_relative_to(ROOT) else run)
        if clean_train is not None:
            name += f" (BatchNorm re-estimated on {len(clean_train)} clean training images)"
        if repair is not None:
            name += " (image repair)" if args.repair else " (tone repair)"
        results["runs"][name] = acc
        print(run, json.dumps(acc, indent=1), flush=True)
        write_json(RESULTS, results)


if __name__ == "__main__":
    main()
