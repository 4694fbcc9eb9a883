"""Rich tables for the CLI: training summary, package report, local scores."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from tools.shift.suite import SHIFT_SUITES

console = Console()


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _num(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def run_failures(result) -> list[str]:
    """What went wrong in one zip's run, one line per failed variant (one line when all failed alike)."""
    from tools.load_error import summarise_error
    from tools.validate import layout_fix

    failed = result.run.failed_variants()
    if not failed:
        return []
    statuses = {result.run.variants[name]["status"] for name in failed}
    if len(failed) == len(result.run.variants) and len(set(failed.values())) == 1:
        status = statuses.pop()
        fix = layout_fix(result.zip_path) if status == "import_error" else None
        return [f"every variant: {status}: {summarise_error(next(iter(failed.values()))).cause}"] + (
            [f"fix: {fix}"] if fix else [])
    return [f"{name}: {result.run.variants[name]['status']}: {summarise_error(error).cause}"
            for name, error in failed.items()]


def training_table(results) -> Table:
    table = Table(title="Training summary")
    for column in ("member", "backbone", "seed", "val acc", "val macro-F1"):
        table.add_column(column)
    for r in results:
        table.add_row(r.name, r.backbone, str(r.seed), _pct(r.metrics["accuracy"]), _pct(r.metrics["macro_f1"]))
    return table


def per_class_table(metrics: dict, title: str) -> Table:
    table = Table(title=title)
    for column in ("class", "precision", "recall", "F1", "n"):
        table.add_column(column)
    for row in metrics["per_class"]:
        table.add_row(row["name"], _pct(row["precision"]), _pct(row["recall"]), _pct(row["f1"]),
                      str(row["support"]))
    return table


def tta_table(choice) -> Table:
    table = Table(title="TTA choice (validation accuracy, clean and shifted)")
    for column in ("views", "n", "members", "repair", "zoom", "BN adapt", "clean", "shifted", "score", ""):
        table.add_column(column)
    for row in choice.table:
        mark = "<- chosen" if row.get("chosen") else ("" if row.get("eligible", True) else "not eligible")
        on = ["on" if row.get(option) else "off" for option in ("repair", "zoom", "adapt_bn")]
        table.add_row(row["name"], str(row["views"]), row["weighting"], *on, _pct(row["clean"]), _pct(row["shifted"]),
                      _pct(row["score"]), mark)
    return table


def checks_table(report, title: str) -> Table:
    table = Table(title=title)
    for column in ("check", "kind", "result", "detail"):
        table.add_column(column)
    for check in report.checks:
        mark = "[green]ok[/]" if check.ok else ("[yellow]warn[/]" if check.warning else "[red]FAIL[/]")
        table.add_row(check.name, "advisory" if check.advisory else "blocking", mark, escape(check.detail))
    return table


def print_warnings(report) -> None:
    """One yellow line per failed advisory check, with its fix (they do not fail the zip)."""
    for check in report.warnings():
        console.print(f"[yellow]warning (advisory, CodaBench does not need it): {check.name}: "
                      f"{escape(check.detail)}[/]")


def scores_table(results) -> Table:
    """One row per variant, one column per submission (side by side when several)."""
    table = Table(title="Local score (accuracy; macro-F1 for clean)")
    table.add_column("variant")
    for r in results:
        table.add_column(r.zip_path.split("/")[-1])
    variants = results[0].variants
    rows = [("clean macro-F1", [_pct(r.summary.get("clean_macro_f1")) for r in results])]
    for v in variants:
        rows.append((v.name, [_pct(r.scores.get(v.name, {}).get("accuracy")) for r in results]))
    for suite in SHIFT_SUITES:
        if any(suite in r.summary.get("suite_mean_accuracy", {}) for r in results):
            rows.append((f"mean {suite}", [_pct(r.summary["suite_mean_accuracy"].get(suite)) for r in results]))
    rows.append(("mean over shifts", [_pct(r.summary.get("shift_mean_accuracy")) for r in results]))
    first = results[0].summary
    if first.get("calibrated"):
        mae = first.get("calibration_mae")
        label = "[bold]expected hidden score[/]" + (f" (calibrated, MAE {mae:.2f})" if mae is not None else "")
    else:
        label = "[bold]expected hidden score[/] (uncalibrated: add --suite hidden)"
    rows.append((label, [
        f"[bold]{_pct(r.summary.get('expected_hidden_accuracy'))}[/] "
        f"({_pct(r.summary['ci95'][0])}-{_pct(r.summary['ci95'][1])})" if r.summary.get("ci95") else "-"
        for r in results]))
    rows.append(("variants failed", [str(len(r.summary.get("variants_failed", {}))) for r in results]))
    rows.append(("Model() s / predict s", [f"{r.summary.get('init_seconds') or 0:.1f} / "
                                           f"{r.summary.get('predict_seconds') or 0:.1f}" for r in results]))
    rows.append(("s per 1,000 images", [_num(r.summary.get("seconds_per_1000_images"), ".2f") for r in results]))
    rows.append(("projected 10,000 images", [
        f"{_num(r.summary.get('projected_seconds_10000_images'), '.0f')} s (limit "
        f"{r.summary.get('time_limit_seconds', 0):.0f} s)" for r in results]))
    rows.append(("images/s", [f"{r.summary.get('images_per_second') or 0:.0f}" for r in results]))
    rows.append(("timed on", [_device(r.summary.get("gpus")) for r in results]))
    rows.append(("peak memory MB", [f"{r.summary.get('peak_rss_mb') or 0:.0f}" for r in results]))
    for name, values in rows:
        table.add_row(name, *values)
    return table


def _device(gpus: int | None) -> str:
    """The device the times were measured on (a GPU's times flatter a CPU-only server)."""
    if gpus is None:
        return "-"
    return "CPU" if gpus == 0 else f"[yellow]{gpus} GPU(s)[/]: CUDA_VISIBLE_DEVICES=-1 times the CPU"
