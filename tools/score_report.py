"""`local-score --report DIR`: PNG plots and one index.html that shows them."""

from __future__ import annotations

import html
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from submission.model import CLASS_NAMES  # noqa: E402
from train.atomic import write_text  # noqa: E402
from train.data import Dataset  # noqa: E402
from train.plots import plot_confusion, save_figure  # noqa: E402

MAX_MISCLASSIFIED = 40


def plot_shift_accuracy(results, path: Path) -> Path:
    """Accuracy per corruption against severity (one line each), clean and AN2DL shift for reference."""
    kinds = sorted({v.kind for v in results[0].variants if v.suite != "clean"})
    cols = len(results)
    fig, axes = plt.subplots(1, cols, figsize=(7 * cols, 5), squeeze=False)
    for ax, result in zip(axes[0], results):
        colours = plt.cm.tab20(np.linspace(0, 1, max(len(kinds), 1)))
        for colour, kind in zip(colours, kinds):
            points = sorted((v.severity, result.scores[v.name]["accuracy"]) for v in result.variants
                            if v.kind == kind and v.name in result.scores)
            if points:
                xs, ys = zip(*points)
                ax.plot(xs, ys, marker="o", label=kind, color="black" if kind == "an2dl" else colour,
                        linewidth=2.5 if kind == "an2dl" else 1.2)
        if "clean" in result.scores:
            ax.axhline(result.scores["clean"]["accuracy"], color="grey", linestyle="--", label="clean")
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("severity (an2dl: strength)")
        ax.set_ylabel("accuracy")
        ax.set_title(Path(result.zip_path).name)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
    return save_figure(fig, path)


def plot_per_class_f1(result, path: Path) -> Path:
    names = [v.name for v in result.variants if v.name in result.scores]
    f1 = np.array([[row["f1"] for row in result.scores[name]["per_class"]] for name in names])
    fig, ax = plt.subplots(figsize=(9, 4))
    x = np.arange(len(CLASS_NAMES))
    ax.bar(x - 0.2, f1[names.index("clean")] if "clean" in names else 0, 0.4, label="clean")
    shifted = [i for i, n in enumerate(names) if n != "clean"]
    if shifted:
        ax.bar(x + 0.2, f1[shifted].mean(axis=0), 0.4, label="mean over shifts")
    ax.set_xticks(x, CLASS_NAMES, rotation=30, ha="right")
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("F1")
    ax.legend()
    return save_figure(fig, path)


def plot_misclassified(data: Dataset, predictions: np.ndarray, path: Path) -> Path:
    wrong = np.flatnonzero(predictions != data.labels)[:MAX_MISCLASSIFIED]
    cols = 8
    rows = max(1, int(np.ceil(len(wrong) / cols)))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.6, rows * 1.9), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, i in zip(axes.ravel(), wrong):
        ax.imshow(data.images[i])
        ax.set_title(f"true {CLASS_NAMES[data.labels[i]][:10]}\npred {CLASS_NAMES[predictions[i]][:10]}",
                     fontsize=7)
    if not len(wrong):
        axes[0, 0].set_title("no misclassified images")
    return save_figure(fig, path)


def write_report(data: Dataset, results, out_dir: str | Path, seed: int = 0) -> Path:
    """Write the PNGs and ``index.html``; returns the index path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sections = []
    if len(results[0].variants) > 1:
        plot_shift_accuracy(results, out / "shift_accuracy.png")
        sections.append(("Accuracy per corruption and severity", "shift_accuracy.png"))
    for k, result in enumerate(results):
        tag = f"sub{k}_"
        label = html.escape(Path(result.zip_path).name)
        if "clean" in result.scores:
            plot_confusion(result.scores["clean"]["confusion"], out / f"{tag}confusion.png", f"{label}: clean")
            sections.append((f"{label}: confusion matrix (clean)", f"{tag}confusion.png"))
            plot_misclassified(data, result.run.predictions["clean"], out / f"{tag}misclassified.png")
            sections.append((f"{label}: misclassified clean images", f"{tag}misclassified.png"))
        plot_per_class_f1(result, out / f"{tag}per_class_f1.png")
        sections.append((f"{label}: per-class F1", f"{tag}per_class_f1.png"))
    rows = "".join(
        f"<tr><td>{html.escape(Path(r.zip_path).name)}</td><td>{_fmt(r.summary.get('clean_accuracy'))}</td>"
        f"<td>{_fmt(r.summary.get('shift_mean_accuracy'))}</td>"
        f"<td><b>{_fmt(r.summary.get('expected_hidden_accuracy'))}</b> "
        f"({_fmt((r.summary.get('ci95') or [None])[0])}–{_fmt((r.summary.get('ci95') or [None, None])[1])})</td></tr>"
        for r in results)
    advisories = "".join(f"<li>{html.escape(Path(r.zip_path).name)}: {html.escape(w)}</li>"
                         for r in results for w in r.summary.get("warnings", []))
    figures = "".join(f"<h2>{title}</h2><img src='{name}' style='max-width:100%'>" for title, name in sections)
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>bcsub local score</title></head><body>"
            f"<h1>bcsub local score</h1><p>{len(data)} images from {html.escape(data.source)}</p>"
            f"<table border='1' cellpadding='4'><tr><th>submission</th><th>clean accuracy</th>"
            f"<th>mean over shifts</th><th>expected hidden score (95% CI)</th></tr>{rows}</table>"
            + (f"<h2>Advisories (still scored)</h2><ul>{advisories}</ul>" if advisories else "")
            + f"{figures}</body></html>")
    return write_text(out / "index.html", page)


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.3f}"
