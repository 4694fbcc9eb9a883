"""`bcsub runs`: one row per run dir found under some folders (what it trained, how long, how well), with
the local score of its zip when a `bcsub local-score --json` file of that zip lies next to it.

A run's zip is found by content, not by name: a zip in the run dir, next to it or in a scanned folder whose
``member_K.weights.npz`` files are exactly the run's weight files (same sizes and CRC-32s, read from the
zip's directory without unpacking it). Half-written and foreign folders are rows marked incomplete; reading
a run never raises."""

from __future__ import annotations

import csv
import json
import os
import zipfile
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tools.seen import FEW_SEEN_SHARE, seen_share
from train.errors import BcsubError
from train.runs import (
    CONFIG_FILE,
    ENSEMBLE_FILE,
    HISTORY_FILE,
    METRICS_FILE,
    MODEL_SPEC_FILE,
    SIDE_FILE,
    WEIGHTS_FILE,
    is_complete_run,
)
from train.splits import split_key

# A folder holding any of these is a run dir (complete or not); its sub-folders are its members.
RUN_MARKERS = (CONFIG_FILE, METRICS_FILE, ENSEMBLE_FILE, MODEL_SPEC_FILE)
# Sort keys of `bcsub runs --sort`: text ascending, numbers best (largest) first; empty cells last.
SORT_KEYS = {"run": "run", "backbone": "backbone", "preset": "preset", "size": "image_size", "epochs": "epochs",
             "minutes": "train_minutes", "acc": "val_accuracy", "f1": "val_macro_f1", "members": "members",
             "clean": "clean_accuracy", "shift": "shift_mean_accuracy", "hidden": "expected_hidden_accuracy"}


@dataclass
class RunRow:
    """What `bcsub runs` shows of one run dir (None: not known)."""

    run: str
    status: str = "complete"
    backbone: str | None = None
    preset: str | None = None
    image_size: int | None = None
    epochs: int | None = None
    train_minutes: float | None = None
    val_accuracy: float | None = None
    val_macro_f1: float | None = None
    members: int | None = None
    fold: str | None = None
    split: str | None = None
    zip: str | None = None
    score_file: str | None = None
    clean_accuracy: float | None = None
    shift_mean_accuracy: float | None = None
    expected_hidden_accuracy: float | None = None
    hidden_calibrated: bool | None = None
    scored_on_seen: bool | None = None  # the score's images include ones the zip trained or validated on
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return asdict(self)


def find_run_dirs(folders: list[Path]) -> list[Path]:
    """Every run dir in or under ``folders`` (not their members, backups or TensorBoard logs), sorted."""
    found: list[Path] = []
    for folder in folders:
        if not folder.is_dir():
            raise BcsubError(f"{folder}: not a folder; pass folders that hold `bcsub train` run dirs (e.g. runs/)")
        for root, dirs, files in os.walk(folder):
            if any(marker in files for marker in RUN_MARKERS):
                found.append(Path(root))
                dirs.clear()  # its sub-folders are members, snapshots, backups or logs
            else:
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
    return sorted(set(found))


def read_run(run_dir: Path, zips: list[Path], label: str | None = None) -> RunRow:
    """The row of one run dir; whatever cannot be read makes it an incomplete row with a reason."""
    row = RunRow(label or str(run_dir))
    try:
        _fill(row, run_dir, zips)
    except (OSError, ValueError, KeyError, TypeError, AttributeError, zipfile.BadZipFile, csv.Error) as err:
        row.status = f"incomplete: unreadable ({type(err).__name__}: {err})"
    return row


def _read_json(path: Path) -> dict:
    """A JSON object file; {} when it is missing; ValueError when it is not an object."""
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except ValueError as err:
        raise ValueError(f"{path.name}: {err}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path.name} is not a JSON object")
    return data


def _fill(row: RunRow, run_dir: Path, zips: list[Path]) -> None:
    config, metrics = _read_json(run_dir / CONFIG_FILE), _read_json(run_dir / METRICS_FILE)
    ensemble, spec = _read_json(run_dir / ENSEMBLE_FILE), _read_json(run_dir / MODEL_SPEC_FILE)
    member_dirs = [run_dir / str(name) for name in ensemble.get("members", [])] or [run_dir]
    if config and "backbone" not in config and not spec:
        row.status = "incomplete: not a bcsub run (its config.json has no backbone)"
    elif not is_complete_run(run_dir):
        row.status = "incomplete: training did not finish (re-run the same `bcsub train` to resume)"
    backbones = config.get("backbones") or [config.get("backbone") or spec.get("backbone")]
    row.backbone = ",".join(str(b) for b in backbones if b) or None
    row.preset = config.get("preset")
    # The side it trained at (--auto-image-size may change the one asked for): the network's, or while it trains
    # the probe's choice, else the config's.
    trained = spec or _read_json(member_dirs[0] / MODEL_SPEC_FILE) or _read_json(run_dir / SIDE_FILE)
    row.image_size = trained.get("image_size") or config.get("image_size")
    member_metrics = [_read_json(d / METRICS_FILE) for d in member_dirs if d != run_dir]
    row.members = len(member_dirs) if ensemble else (1 if spec else None)
    row.epochs = sum(_history_rows(d / HISTORY_FILE) for d in member_dirs) if member_dirs else None
    row.epochs = row.epochs or _history_rows(run_dir / HISTORY_FILE) or None
    seconds = metrics.get("train_seconds")
    if seconds is None and member_metrics and all("train_seconds" in m for m in member_metrics):
        seconds = sum(m["train_seconds"] for m in member_metrics)
    row.train_minutes = round(seconds / 60, 2) if seconds is not None else None
    scored = metrics or _mean_metrics(member_metrics)
    row.val_accuracy, row.val_macro_f1 = scored.get("accuracy"), scored.get("macro_f1")
    if not metrics and member_metrics:
        row.notes.append("validation: mean of the members")
    if config.get("fold") is not None:
        row.fold = f"{config['fold']}/{config.get('folds')}"
    row.split = split_key(run_dir)
    if row.status == "complete":
        _fill_scores(row, member_dirs, zips)


def _history_rows(path: Path) -> int:
    if not path.is_file():
        return 0
    with open(path, newline="") as handle:
        return sum(1 for _ in csv.DictReader(handle))


def _mean_metrics(member_metrics: list[dict]) -> dict:
    values = {key: [m[key] for m in member_metrics if isinstance(m.get(key), (int, float))]
              for key in ("accuracy", "macro_f1")}
    return {key: sum(v) / len(v) for key, v in values.items() if v}


def _fingerprints(weight_files: list[Path]) -> list[tuple[int, int]]:
    """(size, CRC-32) of each weight file, as a zip's directory lists them."""
    prints = []
    for path in weight_files:
        crc = 0
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                crc = zlib.crc32(chunk, crc)
        prints.append((path.stat().st_size, crc))
    return sorted(prints)


def zip_fingerprints(zip_path: Path) -> list[tuple[int, int]]:
    """(size, CRC-32) of the member weight files in a submission zip (empty for another kind of zip)."""
    try:
        with zipfile.ZipFile(zip_path) as archive:
            return sorted((info.file_size, info.CRC) for info in archive.infolist()
                          if info.filename.startswith("member_") and info.filename.endswith(".weights.npz"))
    except (OSError, zipfile.BadZipFile):
        return []


def _fill_scores(row: RunRow, member_dirs: list[Path], zips: list[Path]) -> None:
    """The run's zip (exactly its members) and the newest local-score JSON of it next to the zip."""
    weights = [d / WEIGHTS_FILE for d in member_dirs]
    if not all(w.is_file() for w in weights):
        return
    mine = _fingerprints(weights)
    matching = [z for z in zips if zip_fingerprints(z) == mine]
    if not matching:
        return
    zip_path = max(matching, key=lambda z: z.stat().st_mtime)
    row.zip = str(zip_path)
    found = [(path, summary) for path in sorted(zip_path.parent.glob("*.json"))
             for summary in [local_score_summary(path, zip_path)] if summary is not None]
    if not found:
        return
    path, summary = max(found, key=lambda item: (score_rank(item[1]), item[0].stat().st_mtime))
    row.score_file = str(path)
    row.clean_accuracy = summary.get("clean_accuracy")
    row.shift_mean_accuracy = summary.get("shift_mean_accuracy")
    row.expected_hidden_accuracy = summary.get("expected_hidden_accuracy")
    row.hidden_calibrated = summary.get("calibrated")
    seen = summary.get("seen")
    if isinstance(seen, dict) and {"images", "training", "validation"} <= seen.keys():
        row.scored_on_seen = seen_share(seen) >= FEW_SEEN_SHARE


def score_rank(summary: dict) -> tuple[bool, bool]:
    """Which local score of a zip a row shows: one with the calibrated expected hidden score and the clean
    accuracy before a diagnostic one (e.g. `--suite corruptions,an2dl` written after it); then the newest."""
    return summary.get("calibrated") is True, summary.get("clean_accuracy") is not None


def local_score_summary(json_path: Path, zip_path: Path) -> dict | None:
    """The summary of ``zip_path`` in a `bcsub local-score --json` file, or None (another file, another zip)."""
    try:
        data = json.loads(json_path.read_text())
    except (OSError, ValueError):
        return None
    submissions = data.get("submissions") if isinstance(data, dict) else None
    for entry in submissions if isinstance(submissions, list) else []:
        if isinstance(entry, dict) and isinstance(entry.get("summary"), dict) and \
                Path(str(entry.get("zip", ""))).name == zip_path.name:
            return entry["summary"]
    return None


def candidate_zips(folders: list[Path], run_dirs: list[Path]) -> list[Path]:
    """Zips in the scanned folders, in the run dirs and next to them."""
    places = {*folders, *run_dirs, *(d.parent for d in run_dirs)}
    return sorted({z for place in places for z in place.glob("*.zip") if z.is_file()})


def collect_runs(folders: list[Path], sort: str = "run") -> list[RunRow]:
    """Every run dir under ``folders`` as a row, sorted by ``sort`` (a ``SORT_KEYS`` name)."""
    if sort not in SORT_KEYS:
        raise BcsubError(f"--sort {sort}: unknown column; choose one of: {', '.join(SORT_KEYS)}")
    run_dirs = find_run_dirs(folders)
    zips = candidate_zips(folders, run_dirs)
    rows = [read_run(d, zips) for d in run_dirs]
    return sort_rows(rows, SORT_KEYS[sort])


def sort_rows(rows: list[RunRow], attribute: str) -> list[RunRow]:
    """Text ascending, numbers largest first; rows without the value last."""
    present = [r for r in rows if getattr(r, attribute) is not None]
    missing = [r for r in rows if getattr(r, attribute) is None]
    numeric = all(isinstance(getattr(r, attribute), (int, float)) for r in present)
    return sorted(present, key=lambda r: getattr(r, attribute), reverse=numeric and attribute != "run") + missing


def runs_table(rows: list[RunRow]):
    """The rich table `bcsub runs` prints; why a run is incomplete goes in the caption."""
    from rich.table import Table

    notes = [f"{r.run}: {r.status}" for r in rows if r.status != "complete"]
    if any(r.hidden_calibrated is False for r in rows):
        notes.append("* expected hidden score not calibrated (local-score ran without the hidden suite)")
    if any(r.scored_on_seen for r in rows):
        notes.append("+ scored on images the zip trained or validated on: optimistic (score a held-out test split)")
    table = Table(title=f"{len(rows)} run(s)", caption="\n".join(notes) or None, caption_justify="left")
    for column in ("run", "backbone", "preset", "px", "epochs", "min", "val acc", "val F1", "members", "fold",
                   "clean", "shift", "hidden", "status"):
        table.add_column(column, overflow="fold", no_wrap=column not in ("run", "backbone"),
                         min_width=12 if column == "run" else None)
    for r in rows:
        hidden = _num(r.expected_hidden_accuracy) + ("*" if r.hidden_calibrated is False else "")
        seen = "+" if r.scored_on_seen else ""
        status = "[green]ok[/]" if r.status == "complete" else "[yellow]incomplete[/]"
        table.add_row(r.run, r.backbone or "-", r.preset or "-", _num(r.image_size, "d"), _num(r.epochs, "d"),
                      _num(r.train_minutes, ".1f"), _num(r.val_accuracy), _num(r.val_macro_f1), _num(r.members, "d"),
                      f"{r.fold} {r.split}" if r.fold else (r.split or "-"), _num(r.clean_accuracy) + seen,
                      _num(r.shift_mean_accuracy), hidden + seen, status)
    return table


def _num(value, spec: str = ".3f") -> str:
    return "-" if value is None else format(value, spec)
