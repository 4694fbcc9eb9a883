"""The `bcsub` command line: train, package, check, local-score, runs, inspect, clean, augment-preview."""

from __future__ import annotations

import inspect
import os
import sys
import typing
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Annotated

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import typer  # noqa: E402

from train.config import AUGMENT_PRESETS, TrainConfig  # noqa: E402  (plain data: no TensorFlow yet)
from train.errors import BcsubError  # noqa: E402

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Train, package and locally score AN2DL blood-cell submissions for CodaBench.")


def _split_csv(value: str, cast=str) -> tuple:
    try:
        return tuple(cast(v.strip()) for v in value.split(",") if v.strip())
    except ValueError:
        raise BcsubError(f"cannot read '{value}' as a comma-separated list") from None


def train(**options) -> None:
    """Train a model (or an ensemble) into a run dir."""
    from tools.display import console, per_class_table, training_table
    from train.trainer import run_training

    cfg = TrainConfig.from_options(**{k: str(v) if isinstance(v, Path) else v for k, v in options.items()})
    console.print(f"[bold]bcsub train[/] {cfg.backbone} weights={cfg.weights} augment={cfg.augment} "
                  f"epochs={cfg.epochs} -> {cfg.out}")
    task = None
    if cfg.multi_worker:
        from train.multiworker import read_tf_config

        task = read_tf_config()
        console.print(f"multi-worker: {task.name} of {task.num_workers} workers"
                      f"{' (the chief: writes the run dir)' if task.is_chief else ''}; waiting for all to connect")
    results = run_training(cfg)
    console.print(training_table(results))
    if len(results) == 1:
        console.print(per_class_table(results[0].metrics, "Validation per class"))
    if task and not task.is_chief:
        console.print(f"{task.name} done; the chief wrote the run dir {cfg.out} on its machine")
    else:
        console.print(f"run dir: {cfg.out}  (next: bcsub package {cfg.out} --out submission.zip)")


def train_options() -> list[inspect.Parameter]:
    """`bcsub train`'s options: the ``TrainConfig`` fields that carry a help text, in field order. Each
    defaults to None (not given), so the preset, then the dataclass, fills it in."""
    types = typing.get_type_hints(TrainConfig)
    params = []
    for f in fields(TrainConfig):
        if "help" not in f.metadata:
            continue
        kind = Path if f.metadata["path"] else next(
            t for t in typing.get_args(types[f.name]) or (types[f.name],) if t is not type(None))
        flags = [f.metadata["flag"]] if "flag" in f.metadata else []  # else typer's --name (and --no-name)
        required = f.default is MISSING
        params.append(inspect.Parameter(
            f.name, inspect.Parameter.KEYWORD_ONLY, default=inspect.Parameter.empty if required else None,
            annotation=Annotated[kind if required else kind | None, typer.Option(*flags, help=f.metadata["help"])]))
    return params


train.__signature__ = inspect.Signature(train_options())
app.command()(train)


@app.command()
def package(
    run_dirs: Annotated[list[Path], typer.Argument(help="Run dirs from `bcsub train` (several = ensemble)")],
    out: Annotated[Path, typer.Option(help="The zip to write")] = Path("submission.zip"),
    tta: Annotated[str, typer.Option(help="auto | 1..8 dihedral views | a view-set name | comma list")] = "auto",
    val: Annotated[Path | None, typer.Option(help="Validation npz for --tta auto (default: the run's)")] = None,
    batch_size: Annotated[int, typer.Option(help="Images x views per forward pass in model.py")] = 256,
    check_env: Annotated[bool, typer.Option(help="Also validate under tensorflow 2.17 / keras 3.4.1")] = False,
    tta_share: Annotated[float | None, typer.Option(
        help="Share of the validation images to choose TTA on (default: what the run's time plan left time "
             "for, else all)")] = None,
    zoom_undo: Annotated[str, typer.Option(
        help="auto: ship the zoom undo where it raises the shifted validation score at <= 0.2 clean points; on: "
             "wherever it raises the shifted score (a heavily zoomed hidden set); off: do not try it")] = "auto",
) -> None:
    """Build the CodaBench zip and validate it in a fresh process."""
    from tools.display import checks_table, console, print_warnings, tta_table
    from tools.package import PackageOptions
    from tools.package import package as build

    options = PackageOptions([str(p) for p in run_dirs], str(out), tta, str(val) if val else None, batch_size,
                             check_env, tta_share=tta_share, zoom_undo=zoom_undo)
    report = build(options, progress=lambda msg: console.print(f"[dim]{msg}[/]"))
    if report.tta:
        console.print(tta_table(report.tta))
    for note in report.notes:
        console.print(f"[yellow]note:[/] {note}")
    console.print(checks_table(report.validation, "Validation (fresh process, as the ingestion runs it)"))
    if report.compat:
        versions = ", ".join(f"{k} {v}" for k, v in report.compat.versions.items())
        console.print(checks_table(report.compat, f"Validation under the server's versions ({versions})"))
    print_warnings(report.validation)
    size_mb = report.zip_path.stat().st_size / 2**20
    console.print(f"[bold green]wrote {report.zip_path}[/] ({size_mb:.1f} MB, {len(report.members)} member(s), "
                  f"{len(report.views)} TTA views, {report.validation.seconds_per_1000:.1f} s per 1,000 images)")


@app.command()
def check(
    path: Annotated[Path, typer.Argument(help="A submission zip (bcsub's or any other), or a run dir (its "
                                              "members against their training graphs)")],
    env: Annotated[bool, typer.Option("--env", help="Also run it under tensorflow 2.17 / keras 3.4.1")] = False,
) -> None:
    """Validate any submission zip: blocking checks (what decides a CodaBench run) and advisory ones; or a
    run dir: each member, rebuilt as the zip rebuilds it, against its training graph."""
    from tools.display import checks_table, console, print_warnings
    from tools.package import check_run, probe_images
    from tools.validate import describe_failure, validate_zip
    from train.data import load_dataset

    if path.is_dir():
        report, compat = check_run([str(path)]), None
    else:
        sample = Path(__file__).resolve().parent.parent / "data" / "sample" / "test.npz"
        probe = load_dataset(sample).images if sample.is_file() else probe_images(None, [], seed=0)
        report, compat = validate_zip(path, probe, None, check_env=env)
    console.print(checks_table(report, f"{path}"))
    if compat:
        versions = ", ".join(f"{k} {v}" for k, v in compat.versions.items())
        console.print(checks_table(compat, f"under the server's versions ({versions})"))
    print_warnings(report)
    failed = describe_failure(report, compat)
    if failed:
        raise BcsubError(f"{path}: {failed}")
    if report.seconds_per_1000 is None:  # a run dir
        console.print(f"[bold green]{path} passed[/]: its networks are the ones trained")
        return
    console.print(f"[bold green]{path} passed[/] the blocking checks ({report.seconds_per_1000:.1f} s per "
                  f"1,000 images; projected {report.projected_seconds:.0f} s for 10,000 images"
                  + (", also under the server's versions)" if compat else ")"))


@app.command("local-score")
def local_score(
    zips: Annotated[list[Path], typer.Argument(help="Submission zip(s); several are compared side by side")],
    data: Annotated[Path, typer.Option(help="Labelled test data (npz or class folders)")],
    suite: Annotated[str, typer.Option(
        help="Comma list of clean, hidden (the calibrated hidden-set shift), corruptions, an2dl "
             "(diagnostic views)")] = "clean,hidden",
    severities: Annotated[str, typer.Option(help="Comma list of severities 1..5")] = "1,2,3,4,5",
    time_limit: Annotated[float, typer.Option(help="Seconds the submission may run (CodaBench: 600)")] = 600,
    python: Annotated[Path | None, typer.Option(help="Run the submission under this interpreter")] = None,
    limit: Annotated[int, typer.Option(help="Score on about N images (stratified); 0 = all")] = 0,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write every number to this JSON file")] = None,
    report: Annotated[Path | None, typer.Option(help="Write PNG plots and index.html into this folder")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the shifted variants")] = 0,
) -> None:
    """Run zips like the CodaBench ingestion and score them on clean and shifted data."""
    from rich.markup import escape

    from tools.display import console, per_class_table, run_failures, scores_table
    from tools.local_score import ScoreOptions, to_json
    from tools.local_score import local_score as run
    from train.atomic import write_json

    options = ScoreOptions([str(z) for z in zips], str(data), _split_csv(suite), _split_csv(severities, int),
                           time_limit, str(python) if python else None, limit, seed)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as bar:
        tasks: dict[str, int] = {}

        def show(stage: str, done: int, total: int) -> None:
            label = "shifting the data" if stage == "prepare" else "predicting (fresh process)"
            if stage not in tasks:
                tasks[stage] = bar.add_task(label, total=total)
            bar.update(tasks[stage], completed=done, total=total)
            if stage == "prepare" and done == 1 and "predict" in tasks:  # next zip
                for task in tasks.values():
                    bar.reset(task)

        dataset, results = run(options, show)
    for r in results:
        failures = run_failures(r)
        if failures:
            console.print(f"[red]{r.zip_path}: {len(r.run.failed_variants())} of {len(r.variants)} variants failed; "
                          "the others keep their scores[/]")
            for line in failures:
                console.print(f"  [red]{escape(line)}[/]")
            if not r.scores:
                console.print(escape(r.run.error))
        for warning in r.summary.get("warnings", []):
            console.print(f"[yellow]{r.zip_path}: advisory: {escape(warning)} (still scored)[/]")
    scored = [r for r in results if r.scores]
    if scored:
        console.print(scores_table(scored))
        if "clean" in scored[0].scores:
            console.print(per_class_table(scored[0].scores["clean"], f"{scored[0].zip_path}: clean, per class"))
    if json_out:
        write_json(json_out, to_json(dataset, results))
        console.print(f"wrote {json_out}")
    if report and scored:
        from tools.score_report import write_report

        index = write_report(dataset, scored, report, options.seed)
        console.print(f"wrote {index}")
    if any(not r.run.ok for r in results):
        raise typer.Exit(1)


@app.command()
def runs(
    folders: Annotated[list[Path] | None, typer.Argument(help="Folders holding run dirs (default: runs)")] = None,
    sort: Annotated[str, typer.Option(help="Sort by run | backbone | preset | size | epochs | minutes | acc | f1 | "
                                           "members | clean | shift | hidden (numbers: best first)")] = "run",
    json_out: Annotated[bool, typer.Option("--json", help="Print the rows as JSON instead of a table")] = False,
) -> None:
    """Compare runs: one row per run dir (what, how long, how well, and its zip's local score when a
    `local-score --json` file of it lies next to the zip)."""
    import json

    from tools.display import console
    from tools.runs_table import collect_runs, runs_table

    rows = collect_runs(folders or [Path("runs")], sort)
    if json_out:
        print(json.dumps([r.to_json() for r in rows], indent=2))
    else:
        from rich.console import Console

        Console(width=max(console.width, 160)).print(runs_table(rows))  # one line per run, even when piped


@app.command("augment-preview")
def augment_preview(
    data: Annotated[Path, typer.Option(help="Images to show (npz or class folders)")],
    out: Annotated[Path, typer.Option(help="PNG to write")] = Path("augment_preview.png"),
    preset: Annotated[str, typer.Option(help=" | ".join(AUGMENT_PRESETS))] = "hybrid",
    n_images: Annotated[int, typer.Option(help="Rows (images)")] = 8,
    seed: Annotated[int, typer.Option(help="Random seed")] = 0,
) -> None:
    """Write a grid showing what an augmentation preset does."""
    from tools.augment_preview import preview_grid
    from tools.display import console
    from train.data import load_dataset

    dataset = load_dataset(data, require_all_classes=False)
    path = preview_grid(dataset.images, preset, out, n_images=n_images, seed=seed)
    console.print(f"wrote {path}")


@app.command()
def inspect(
    data: Annotated[Path, typer.Argument(help="Dataset to inspect (npz or class folders)")],
    out: Annotated[Path, typer.Option(help="Folder for report.json and PNG grids")] = Path("inspect_report"),
    near_threshold: Annotated[int, typer.Option(help="Max Hamming distance of near-duplicates (0-64)")] = 4,
) -> None:
    """Report class counts, duplicates, label conflicts and outliers, with pictures."""
    from tools.display import console
    from tools.inspect_report import write_inspection
    from train.atomic import check_output
    from train.cleaning import inspect_arrays
    from train.data import load_dataset

    check_output(out, "--out", folder=True)
    dataset = load_dataset(data, require_all_classes=False)
    with console.status(f"inspecting {len(dataset)} images"):
        result = inspect_arrays(dataset.images, dataset.labels, near_threshold=near_threshold)
        path = write_inspection(result, dataset.images, dataset.labels, out)
    console.print(f"classes: {result.class_counts} (imbalance {result.imbalance_ratio:.2f}x)")
    console.print(f"exact duplicate groups: {len(result.exact_groups)} "
                  f"({sum(len(g) for g in result.exact_groups)} images); near-duplicate groups: "
                  f"{len(result.near_groups)}; label conflicts: {len(result.conflict_groups)}; "
                  f"outliers: {len(result.outlier_indices)}")
    console.print(f"wrote {path}")


@app.command()
def clean(
    data: Annotated[Path, typer.Argument(help="Dataset to clean (npz or class folders)")],
    out: Annotated[Path, typer.Option(help="Cleaned npz to write")] = Path("clean.npz"),
    dry_run: Annotated[bool, typer.Option(help="Only report what would be removed")] = False,
    near_threshold: Annotated[int, typer.Option(help="Max Hamming distance of near-duplicates (0-64)")] = 4,
) -> None:
    """Remove outliers and duplicate copies; writes a manifest of every removed image."""
    from tools.display import console
    from tools.inspect_report import write_clean_npz
    from train.atomic import check_output
    from train.cleaning import inspect_arrays, plan_cleaning
    from train.data import load_dataset

    check_output(out, "--out", ".npz")
    dataset = load_dataset(data, require_all_classes=False)
    result = inspect_arrays(dataset.images, dataset.labels, near_threshold=near_threshold)
    plan = plan_cleaning(result, dataset.labels, len(dataset))
    console.print(f"keep {int(plan.keep.sum())} of {len(dataset)}; remove {len(plan.removed)}: {plan.summary()}")
    if dry_run:
        console.print("dry run: nothing written")
        return
    manifest = out.with_suffix(".removed.json")
    write_clean_npz(dataset.images, dataset.labels, plan, out, manifest)
    console.print(f"wrote {out} and {manifest}")


def main() -> None:
    """Entry point: one-line errors (exit 2) for bad input instead of tracebacks."""
    try:
        app()
    except BcsubError as err:
        typer.secho(f"error: {err}", fg="red", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.secho("interrupted: re-run the same command to resume", fg="yellow", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
