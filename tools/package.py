"""Build the CodaBench zip: the shipping runtime, member weights, the TTA choice; then validate it."""

from __future__ import annotations

import json
import shutil
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np

import submission.model as runtime
from tools.harness import safe_extract
from tools.tta_select import CANDIDATE_VIEW_SETS, TTAChoice, choose_tta
from tools.validate import (
    CODABENCH_TIME_LIMIT_S,
    PROJECTED_IMAGES,
    ValidationReport,
    check_imports,
    check_layout,
    first_failure,
    validate_extracted,
)
from train.atomic import atomic_output
from train.config import TrainConfig
from train.data import Dataset, load_dataset, stratified_split, stratified_subsample
from train.errors import BcsubError
from train.runs import CONFIG_FILE, Member, find_members

RUNTIME_SOURCE = Path(runtime.__file__)
MAX_EVAL_IMAGES = 800
PROBE_IMAGES = 200
# --tta auto keeps the projected time for 10,000 images under this share of the limit (servers vary).
TIME_SHARE = 0.5


@dataclass
class PackageOptions:
    run_dirs: list[str]
    out: str
    tta: str = "auto"  # "auto", a view count 1..8, or comma-separated view names
    val: str | None = None
    batch_size: int = runtime.DEFAULT_BATCH_SIZE
    check_env: bool = False
    seed: int = 0


@dataclass
class PackageReport:
    zip_path: Path
    members: list[Member]
    tta: TTAChoice | None
    views: tuple[str, ...]
    validation: ValidationReport
    compat: ValidationReport | None = None
    notes: list[str] = field(default_factory=list)


def check_members(members: list[Member]) -> None:
    """All members must predict the challenge's classes from its images."""
    if not members:
        raise BcsubError("no trained members found; pass run dirs written by `bcsub train`")
    for member in members:
        if int(member.spec.get("num_classes", runtime.NUM_CLASSES)) != runtime.NUM_CLASSES:
            raise BcsubError(f"{member.run_dir}: predicts {member.spec.get('num_classes')} classes, "
                             f"expected {runtime.NUM_CLASSES}; "
                             "package members trained for this challenge")
        if member.spec.get("backbone") not in runtime.BACKBONES:
            raise BcsubError(f"{member.run_dir}: unknown backbone {member.spec.get('backbone')!r}; "
                             "retrain it with this version of bcsub")


def load_models(members: list[Member]) -> list:
    models = []
    for member in members:
        model = runtime.build_network(member.spec)
        try:
            runtime.load_weights(model, str(member.weights_path))
        except (ValueError, OSError) as err:
            raise BcsubError(f"{member.weights_path}: does not fit its model spec ({err}); retrain the run") from None
        models.append(model)
    return models


def validation_data(members: list[Member], val: str | None, seed: int) -> Dataset | None:
    """The data used to choose TTA: --val, else the run's own validation split."""
    if val:
        data = load_dataset(val, require_all_classes=False)
    else:
        config_file = members[0].run_dir / CONFIG_FILE
        if not config_file.is_file():
            return None
        cfg = TrainConfig.load(config_file)
        if cfg.val and Path(cfg.val).is_file():
            data = load_dataset(cfg.val, require_all_classes=False)
        elif Path(cfg.data).exists() and not cfg.folds and not cfg.clean:
            data = load_dataset(cfg.data)
            if cfg.limit:
                data = stratified_subsample(data, cfg.limit, cfg.seed)
            data = stratified_split(data, cfg.val_fraction, cfg.seed)[1]
        else:
            return None
    return stratified_subsample(data, MAX_EVAL_IMAGES, seed) if len(data) > MAX_EVAL_IMAGES else data


def shifted_eval_sets(data: Dataset, seed: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Clean validation data plus a few shifted copies from the local-score suite."""
    from tools.shift.suite import apply_variant, make_variant

    sets = {"clean": (data.images, data.labels)}
    for suite, kind, severity in (("an2dl", "an2dl", 2), ("corruptions", "defocus_blur", 3),
                                  ("corruptions", "contrast_down", 3), ("corruptions", "saturate", 3),
                                  ("corruptions", "stain_deposit", 3)):
        variant = make_variant(suite, kind, severity)
        sets[variant.name] = (apply_variant(data.images, variant, seed), data.labels)
    return sets


def resolve_views(tta: str) -> tuple[str, ...] | None:
    """None for 'auto'; else the views named by a count, a candidate set name or a comma list."""
    if tta == "auto":
        return None
    try:
        if tta.isdigit():
            return runtime.tta_views(int(tta))
        if tta in CANDIDATE_VIEW_SETS:
            return CANDIDATE_VIEW_SETS[tta]
        return runtime.tta_views([v.strip() for v in tta.split(",")])
    except ValueError as err:
        raise BcsubError(f"--tta {tta}: {err}; use auto, 1..8, or view names") from None


def write_zip(staging: Path, out: Path) -> Path:
    """Zip the staged files flat (the draft lives in a temporary folder; publishing is atomic)."""
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for file in sorted(staging.iterdir()):
            archive.write(file, arcname=file.name)
    return out


def stage_files(staging: Path, members: list[Member], views: tuple[str, ...], weights: list[float],
                batch_size: int, tta: TTAChoice | None) -> None:
    shutil.copyfile(RUNTIME_SOURCE, staging / "model.py")
    entries = []
    for k, (member, weight) in enumerate(zip(members, weights)):
        name = f"member_{k}.weights.npz"
        shutil.copyfile(member.weights_path, staging / name)
        entries.append({"spec": member.spec, "weights": name, "weight": weight,
                        "source": str(member.run_dir), "val_accuracy": member.val_accuracy})
    manifest = {
        "format": runtime.WEIGHTS_FORMAT,
        "members": entries,
        "tta": {"views": list(views), "selection": tta.table if tta else None},
        "batch_size": batch_size,
        "built_with": {"keras": keras.__version__},
    }
    (staging / runtime.MANIFEST_NAME).write_text(json.dumps(manifest, indent=2))


def probe_images(data: Dataset | None, seed: int) -> np.ndarray:
    """Images for the fresh-process check: validation images, or random pixels."""
    rng = np.random.default_rng(seed)
    if data is not None and len(data):
        return data.images[rng.integers(0, len(data), PROBE_IMAGES)]
    return rng.integers(0, 256, (PROBE_IMAGES, *runtime.IMAGE_SHAPE), dtype=np.uint8)


def timed_predict(models: list, weights: list[float], views: tuple[str, ...], batch_size: int,
                  probe: np.ndarray) -> tuple[np.ndarray, float]:
    """In-process labels for ``probe`` and the seconds per image they took (after a warm-up)."""
    ensemble = runtime.TTAEnsemble(models, weights, views, batch_size)
    ensemble.predict(probe[:8])
    start = time.perf_counter()
    labels = ensemble.predict(probe)
    return labels, (time.perf_counter() - start) / len(probe)


def package(options: PackageOptions, progress=print) -> PackageReport:
    """Build, validate (and optionally check under the server's versions), then publish the zip."""
    members = [m for run_dir in options.run_dirs for m in find_members(run_dir)]
    check_members(members)
    out = Path(options.out)
    if out.suffix != ".zip":
        raise BcsubError(f"--out {out}: must end in .zip")
    progress(f"loading {len(members)} member(s)")
    models = load_models(members)
    data = validation_data(members, options.val, options.seed)
    views = resolve_views(options.tta)
    choice, notes = None, []
    weights = [1.0 / len(models)] * len(models)
    if views is None:
        if data is None:
            views = runtime.DIHEDRAL_VIEWS
            notes.append("no validation data found (pass --val): using the 8 dihedral TTA views")
        else:
            progress(f"choosing TTA views and member weights on {len(data)} validation images + shifts")
            choice = choose_tta(models, shifted_eval_sets(data, options.seed), options.batch_size)
            views, weights = choice.views, choice.member_weights
    probe = probe_images(data, options.seed)
    expected, seconds_per_image = timed_predict(models, weights, views, options.batch_size, probe)
    if choice is not None and seconds_per_image * PROJECTED_IMAGES > TIME_SHARE * CODABENCH_TIME_LIMIT_S:
        max_views = max(1, int(len(views) * TIME_SHARE * CODABENCH_TIME_LIMIT_S
                               / (seconds_per_image * PROJECTED_IMAGES)))
        choice = choice.limited_to(max_views)
        views, weights = choice.views, choice.member_weights
        notes.append(f"TTA limited to {len(views)} views to stay well inside the {CODABENCH_TIME_LIMIT_S} s limit")
        expected, seconds_per_image = timed_predict(models, weights, views, options.batch_size, probe)
    with tempfile.TemporaryDirectory(prefix="bcsub_pkg_") as tmp:
        staging = Path(tmp) / "staging"
        staging.mkdir()
        stage_files(staging, members, views, weights, options.batch_size, choice)
        draft = Path(tmp) / "submission.zip"
        write_zip(staging, draft)
        progress("validating the zip in a fresh process")
        validation, compat = validate_zip(draft, probe, expected, check_env=options.check_env)
        failed = first_failure(validation, compat)
        if failed:
            raise BcsubError(f"the packaged submission failed the check '{failed.name}': {failed.detail}")
        with atomic_output(out) as final:
            shutil.copyfile(draft, final)
    return PackageReport(out, members, choice, views, validation, compat, notes)


def validate_zip(zip_path: Path, probe: np.ndarray, expected: np.ndarray | None = None,
                 check_env: bool = False) -> tuple[ValidationReport, ValidationReport | None]:
    """All checks of a zip: layout, imports, fresh-process run; optionally under the server's versions."""
    report = ValidationReport()
    compat = None
    with tempfile.TemporaryDirectory(prefix="bcsub_check_") as tmp:
        program = Path(tmp) / "ingested_program"
        safe_extract(zip_path, program)
        if not check_layout(zip_path, report) or not check_imports(program / "model.py", report):
            return report, None
        validate_extracted(program, probe, expected, report)
        if check_env and report.ok:
            from tools.compat_env import compat_python

            compat = ValidationReport()
            validate_extracted(program, probe, expected, compat, python=str(compat_python()))
    return report, compat
