"""Write what data inspection found: report.json, PNG grids, a 2-D embedding, a cleaned npz.

    result = inspect_arrays(images, labels)
    write_inspection(result, images, labels, Path("runs/inspect"))   # report.json + PNGs
    plan = plan_cleaning(result, labels, len(labels))
    write_clean_npz(images, labels, plan, Path("clean.npz"), Path("clean_manifest.json"))

The ``bcsub inspect`` and ``bcsub clean`` commands (tools/cli.py) wire these to files.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure  # the object API renders with Agg, no pyplot/backend state
from sklearn.decomposition import PCA
from sklearn.preprocessing import StandardScaler

from submission.model import CLASS_NAMES
from train.atomic import write_json
from train.cleaning import (
    CleaningPlan,
    InspectionResult,
    describe_images,
)
from train.data import save_npz
from train.errors import BcsubError
from train.plots import save_figure

MAX_GROUP_PNGS = 20
MAX_GROUP_MEMBERS_SHOWN = 16
MAX_OUTLIERS_SHOWN = 32
MAX_EMBEDDING_POINTS = 3000
CLASS_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22")


def class_name(label: int) -> str:
    """Name of a class label (the label itself as text when out of range)."""
    return CLASS_NAMES[label] if 0 <= label < len(CLASS_NAMES) else str(label)


def _image_grid(
    images: np.ndarray, captions: list[str], title: str, path: Path, cols: int = 8
) -> Path:
    """Images in a grid with a caption under each and a title on top."""
    rows = max(1, -(-len(images) // cols))
    cols = min(cols, max(1, len(images)))
    width = max(1.6 * cols, 6.4)
    title = "\n".join(textwrap.wrap(title, width=int(width * 13)))
    height = 1.9 * rows + 0.25 * (1 + title.count("\n"))
    fig = Figure(figsize=(width, height), layout="constrained")
    for k, (image, caption) in enumerate(zip(images, captions, strict=True)):
        ax = fig.add_subplot(rows, cols, k + 1)
        ax.imshow(image, interpolation="nearest")
        ax.set_title(caption, fontsize=7)
        ax.axis("off")
    fig.suptitle(title, fontsize=9)
    return save_figure(fig, path)


def _ordered_groups(result: InspectionResult) -> list[tuple[str, int, list[int]]]:
    """(kind, number, members): conflicting groups first, then by size."""
    conflicting = {tuple(g) for g in result.conflict_groups}
    tagged = [("exact", k, g) for k, g in enumerate(result.exact_groups)]
    tagged += [("near", k, g) for k, g in enumerate(result.near_groups)]
    return sorted(tagged, key=lambda t: (tuple(t[2]) not in conflicting, -len(t[2]), t[0], t[1]))


def plot_groups(
    result: InspectionResult, images: np.ndarray, labels: np.ndarray, out_dir: Path
) -> list[str]:
    """One PNG per duplicate group (at most MAX_GROUP_PNGS); returns the file names."""
    names = []
    for kind, k, group in _ordered_groups(result)[:MAX_GROUP_PNGS]:
        shown = group[:MAX_GROUP_MEMBERS_SHOWN]
        distinct = sorted({class_name(int(labels[i])) for i in group})
        verdict = "LABEL CONFLICT" if len(distinct) > 1 else "labels agree"
        title = (f"{kind} duplicate group {k}: {len(group)} images ({verdict}: {', '.join(distinct)})"
                 + (f", first {len(shown)} shown" if len(shown) < len(group) else ""))
        name = f"group_{kind}_{k:03d}.png"
        captions = [f"#{i}\n{class_name(int(labels[i]))}" for i in shown]
        _image_grid(images[shown], captions, title, out_dir / name, cols=min(8, len(shown)))
        names.append(name)
    return names


def _copies_of(result: InspectionResult) -> dict[int, list[int]]:
    return {i: g for g in result.exact_groups for i in g}


def plot_outliers(
    result: InspectionResult, images: np.ndarray, labels: np.ndarray, path: Path
) -> Path:
    """Top-scoring outliers (one tile per distinct image, with its number of copies)."""
    copies = _copies_of(result)
    order = sorted(result.outlier_indices, key=lambda i: (-result.outlier_scores[i], i))
    shown, seen = [], set()
    for i in order:
        first = copies.get(i, [i])[0]
        if first not in seen:
            seen.add(first)
            shown.append(i)
        if len(shown) == MAX_OUTLIERS_SHOWN:
            break
    captions = []
    for i in shown:
        n_copies = len(copies.get(i, [i]))
        extra = f" x{n_copies}" if n_copies > 1 else ""
        captions.append(
            f"#{i}{extra} {result.outlier_by.get(i, '')}\n"
            f"{class_name(int(labels[i]))[:13]} s={result.outlier_scores[i]:.2f}"
        )
    title = (f"{len(result.outlier_indices)} outliers ({len(shown)} distinct shown, highest score first; "
             "score >= 1 = flagged, xN = identical copies)")
    if not shown:
        title = "no outliers found"
        return _image_grid(images[:0], [], title, path)
    return _image_grid(images[shown], captions, title, path)


def plot_embedding(
    result: InspectionResult, images: np.ndarray, labels: np.ndarray, path: Path, seed: int = 0
) -> Path:
    """2-D PCA of the appearance features, coloured by class; outliers marked with x."""
    features = result.features if result.features is not None else describe_images(images)[0]
    outliers = np.zeros(len(labels), dtype=bool)
    outliers[result.outlier_indices] = True
    # scale on the non-outliers, clip so a few extreme images cannot take over both axes
    fit = ~outliers if (~outliers).sum() > 2 else np.ones(len(labels), dtype=bool)
    scaled = np.clip(StandardScaler().fit(features[fit]).transform(features), -8, 8)
    xy = PCA(n_components=2, random_state=seed).fit(scaled[fit]).transform(scaled)
    rng = np.random.default_rng(seed)
    normal = np.flatnonzero(~outliers)
    if len(normal) > MAX_EMBEDDING_POINTS:
        normal = np.sort(rng.choice(normal, MAX_EMBEDDING_POINTS, replace=False))
    fig = Figure(figsize=(8, 6.5))
    ax = fig.add_subplot(1, 1, 1)
    for c in np.unique(labels[normal]):
        pts = normal[labels[normal] == c]
        ax.scatter(xy[pts, 0], xy[pts, 1], s=6, alpha=0.6, color=CLASS_COLOURS[int(c) % len(CLASS_COLOURS)],
                   label=f"{int(c)} {class_name(int(c))} ({int((labels == c).sum())})")
    if outliers.any():
        out = np.flatnonzero(outliers)
        ax.scatter(xy[out, 0], xy[out, 1], s=40, marker="x", color="red", linewidths=1.2,
                   label=f"outlier ({len(out)}, copies overlap)")
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")
    shown = f"{len(normal)} of {int((~outliers).sum())} non-outliers shown"
    ax.set_title(f"PCA of colour/texture features: {shown}", fontsize=9)
    ax.legend(fontsize=7, markerscale=2, loc="best")
    fig.tight_layout()
    return save_figure(fig, path)


def write_inspection(
    result: InspectionResult, images: np.ndarray, labels: np.ndarray, out_dir: Path
) -> Path:
    """Write report.json, group PNGs, outliers.png and embedding.png into out_dir; returns the json."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    labels = np.asarray(labels).reshape(-1).astype(np.int64)
    group_pngs = plot_groups(result, images, labels, out_dir)
    plot_outliers(result, images, labels, out_dir / "outliers.png")
    plot_embedding(result, images, labels, out_dir / "embedding.png")
    n_groups = len(result.exact_groups) + len(result.near_groups)
    report = result.to_json(labels)
    report["class_names"] = {str(i): name for i, name in enumerate(CLASS_NAMES)}
    report["summary"] = {
        "n_images": int(len(labels)),
        "exact_groups": len(result.exact_groups),
        "images_in_exact_groups": sum(len(g) for g in result.exact_groups),
        "near_groups": len(result.near_groups),
        "conflict_groups": len(result.conflict_groups),
        "outliers": len(result.outlier_indices),
    }
    report["figures"] = {
        "groups": group_pngs,
        "groups_total": n_groups,
        "groups_shown": len(group_pngs),
        "group_png_cap": MAX_GROUP_PNGS,
        "groups_note": (
            f"one PNG per group, conflicting groups first then largest, at most {MAX_GROUP_PNGS} "
            f"PNGs and {MAX_GROUP_MEMBERS_SHOWN} members each"
            + (f"; {n_groups - len(group_pngs)} groups not drawn" if n_groups > len(group_pngs) else "")
        ),
        "outliers": "outliers.png",
        "embedding": "embedding.png",
    }
    return write_json(out_dir / "report.json", report)


def write_clean_npz(
    images: np.ndarray, labels: np.ndarray, plan: CleaningPlan, out_path: Path, manifest_path: Path
) -> tuple[Path, Path]:
    """Save the kept images/labels (labels shaped (N,)) and a JSON manifest of every removal."""
    labels = np.asarray(labels).reshape(-1)
    if len(plan.keep) != len(labels) or len(labels) != len(images):
        raise BcsubError(
            f"plan covers {len(plan.keep)} images but got {len(images)} images / {len(labels)} labels; "
            "pass the arrays the plan was made from"
        )
    save_npz(out_path, images[plan.keep], labels[plan.keep])
    manifest = {
        "output": str(out_path),
        "n_input": int(len(labels)),
        "n_kept": int(plan.keep.sum()),
        "n_removed": len(plan.removed),
        "removed_by_reason": plan.summary(),
        "kept_class_counts": {
            class_name(int(c)): int(k) for c, k in zip(*np.unique(labels[plan.keep], return_counts=True),
                                                        strict=True)
        },
        "removed": plan.removed,
    }
    return Path(out_path), write_json(manifest_path, manifest)

