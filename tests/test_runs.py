"""Run tracking: TensorBoard logs in every run dir, and `bcsub runs` over complete, half-written and
foreign run dirs, with the local score of each run's zip."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import SAMPLE_TEST, run_cli
from tools.runs_table import collect_runs, find_run_dirs


def _tags(log_dir: Path) -> set[str]:
    import tensorflow as tf

    tags = set()
    for events in log_dir.glob("events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(str(events)):
            tags.update(value.tag for value in event.summary.value)
    return tags


def test_a_run_writes_tensorboard_scalars_images_and_the_confusion_matrix(trained_run):
    train_tags = _tags(trained_run / "tb" / "full" / "train")
    assert {"epoch_loss", "epoch_accuracy", "epoch_learning_rate", "augmented training images"} <= train_tags
    assert {"epoch_loss", "epoch_accuracy"} <= _tags(trained_run / "tb" / "full" / "validation")
    assert "validation confusion matrix" in _tags(trained_run / "tb" / "final")
    header = (trained_run / "history.csv").read_text().splitlines()[0].split(",")
    assert "learning_rate" in header and "val_accuracy" in header


@pytest.fixture(scope="module")
def runs_folder(trained_run, packaged_zip, tmp_path_factory) -> Path:
    """runs/: the tiny run with its zip and local score next to it, a half-written run, a foreign folder,
    a run with a corrupt metrics.json, and a run's backups and logs (which are not runs)."""
    runs = tmp_path_factory.mktemp("compare") / "runs"
    shutil.copytree(trained_run, runs / "tiny")
    shutil.copyfile(packaged_zip[0], runs / "tiny.zip")
    scored = run_cli("local-score", str(runs / "tiny.zip"), "--data", str(SAMPLE_TEST), "--suite", "clean",
                     "--limit", "40", "--json", str(runs / "tiny-score.json"))
    assert scored.returncode == 0, scored.stdout + scored.stderr
    (runs / "half").mkdir()
    shutil.copyfile(trained_run / "config.json", runs / "half" / "config.json")
    (runs / "half" / "history.csv").write_text("epoch,accuracy\n0,0.1\n1,0.2\n")
    (runs / "group" / "foreign").mkdir(parents=True)
    (runs / "group" / "foreign" / "config.json").write_text('{"model_type": "bert", "hidden_size": 768}')
    shutil.copytree(trained_run, runs / "group" / "corrupt")
    (runs / "group" / "corrupt" / "metrics.json").write_text('{"accuracy": 0.9')
    (runs / "group" / "listing").mkdir()
    (runs / "group" / "listing" / "ensemble.json").write_text("[1, 2]")
    return runs


def test_runs_finds_every_run_dir_but_not_members_backups_or_logs(runs_folder):
    found = [p.relative_to(runs_folder).as_posix() for p in find_run_dirs([runs_folder])]
    assert found == ["group/corrupt", "group/foreign", "group/listing", "half", "tiny"]


def test_runs_rows_complete_half_written_and_foreign(runs_folder, trained_run):
    rows = {Path(r.run).relative_to(runs_folder).as_posix(): r for r in collect_runs([runs_folder])}
    tiny = rows["tiny"]
    metrics = json.loads((trained_run / "metrics.json").read_text())
    assert tiny.status == "complete" and tiny.backbone == "tinycnn" and tiny.members == 1 and tiny.epochs == 1
    assert tiny.val_accuracy == metrics["accuracy"] and tiny.train_minutes == round(metrics["train_seconds"] / 60, 2)
    assert tiny.zip == str(runs_folder / "tiny.zip") and tiny.score_file == str(runs_folder / "tiny-score.json")
    summary = json.loads((runs_folder / "tiny-score.json").read_text())["submissions"][0]["summary"]
    assert tiny.clean_accuracy == summary["clean_accuracy"]
    assert tiny.expected_hidden_accuracy == summary.get("expected_hidden_accuracy")
    assert tiny.scored_on_seen is False  # scored on the sample's test images: none seen (tools/seen.py)
    assert rows["half"].status.startswith("incomplete: training did not finish") and rows["half"].epochs == 2
    assert rows["half"].backbone == "tinycnn" and rows["half"].zip is None
    assert rows["group/foreign"].status.startswith("incomplete: not a bcsub run")
    assert rows["group/corrupt"].status.startswith("incomplete: unreadable")
    assert rows["group/listing"].status.startswith("incomplete: unreadable")


def test_a_score_on_images_the_zip_saw_is_marked(runs_folder, tmp_path):
    from rich.console import Console

    from tools.runs_table import runs_table

    runs = tmp_path / "runs"
    shutil.copytree(runs_folder / "tiny", runs / "tiny")
    shutil.copyfile(runs_folder / "tiny.zip", runs / "tiny.zip")
    score = json.loads((runs_folder / "tiny-score.json").read_text())
    score["submissions"][0]["summary"]["seen"] = {"images": 40, "training": 0, "validation": 7}
    (runs / "tiny-score.json").write_text(json.dumps(score))
    [row] = collect_runs([runs])
    assert row.scored_on_seen is True
    console = Console(width=300, record=True)
    console.print(runs_table([row]))
    text = console.export_text()
    assert f"{row.clean_accuracy:.3f}+" in text and "+ scored on images the zip trained or validated on" in text


def test_a_later_diagnostic_score_does_not_hide_the_calibrated_one(runs_folder, tmp_path):
    import os

    runs = tmp_path / "runs"
    shutil.copytree(runs_folder / "tiny", runs / "tiny")
    shutil.copyfile(runs_folder / "tiny.zip", runs / "tiny.zip")
    score = json.loads((runs_folder / "tiny-score.json").read_text())
    summary = score["submissions"][0]["summary"]
    calibrated = {**summary, "clean_accuracy": 0.5, "expected_hidden_accuracy": 0.4, "calibrated": True}
    diagnostic = {**summary, "clean_accuracy": None, "expected_hidden_accuracy": 0.9, "calibrated": False}
    for name, (value, when) in {"a-hidden.json": (calibrated, 1000), "b-shift.json": (diagnostic, 2000)}.items():
        score["submissions"][0]["summary"] = value
        (runs / name).write_text(json.dumps(score))
        os.utime(runs / name, (when, when))  # the diagnostic file is the newer one
    [row] = collect_runs([runs])
    assert row.score_file == str(runs / "a-hidden.json") and row.expected_hidden_accuracy == 0.4
    (runs / "a-hidden.json").unlink()
    [row] = collect_runs([runs])  # alone, the diagnostic score is shown (marked uncalibrated in the table)
    assert row.score_file == str(runs / "b-shift.json") and row.hidden_calibrated is False


def test_runs_cli_table_sort_and_json(runs_folder):
    table = run_cli("runs", str(runs_folder), "--sort", "acc")
    assert table.returncode == 0, table.stderr
    assert "tiny" in table.stdout and "incomplete" in table.stdout and "training did not finish" in table.stdout
    listed = run_cli("runs", str(runs_folder), "--sort", "acc", "--json")
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    assert Path(rows[0]["run"]).name == "tiny"  # the only run with a validation accuracy comes first
    assert {"clean_accuracy", "shift_mean_accuracy", "expected_hidden_accuracy", "status"} <= set(rows[0])
    bad_sort = run_cli("runs", str(runs_folder), "--sort", "speed")
    assert bad_sort.returncode == 2 and "--sort speed" in bad_sort.stderr
    missing = run_cli("runs", str(runs_folder / "nope"))
    assert missing.returncode == 2 and "not a folder" in missing.stderr
