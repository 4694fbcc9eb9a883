"""`bcsub package`: the CodaBench zip, step by step (as ``package`` reads): find and load the members,
choose the TTA views, fit them to the time limit, stage and zip a draft, validate it in a fresh
process, publish it."""

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
from tools.edge_cases import check_edge_cases
from tools.equivalence import check_equivalence, import_runtime, member_name
from tools.eval_data import EvalData, planned_selection_share, validation_data
from tools.seen import SEEN_FILE, Seen, seen_by
from tools.tta_select import CANDIDATE_VIEW_SETS, ZOOM_UNDO_RULES, TTAChoice, choose_tta, shifted_eval_sets
from tools.validate import (
    CODABENCH_TIME_LIMIT_S,
    PROJECTED_IMAGES,
    ValidationReport,
    describe_failure,
    first_failure,
    validate_zip,
)
from tools.zoom_fit import zoom_fitter
from train.atomic import atomic_output, check_output
from train.errors import BcsubError, check_choices
from train.planner import MAX_PACKAGE_SHARE
from train.runs import Member, find_members, read_equivalence

RUNTIME_SOURCE = Path(runtime.__file__)
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
    tta_share: float | None = None  # of the validation images to choose TTA on; None: the runs' time plans'
    zoom_undo: str = "auto"  # ZOOM_UNDO_RULES: when --tta auto ships the zoom undo


@dataclass
class PackageReport:
    zip_path: Path
    members: list[Member]
    tta: TTAChoice | None
    views: tuple[str, ...]
    validation: ValidationReport
    compat: ValidationReport | None = None
    notes: list[str] = field(default_factory=list)


@dataclass
class TTAPlan:
    """The views and member weights to ship, the selection behind them (--tta auto) and notes."""

    views: tuple[str, ...]
    weights: list[float]
    choice: TTAChoice | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def adapt_bn(self) -> float | None:
        return self.choice.adapt_bn if self.choice else None

    @property
    def repair(self) -> runtime.ImageRepair | None:
        return self.choice.repair if self.choice else None

    @property
    def zoom(self) -> runtime.ZoomUndo | None:
        return self.choice.zoom if self.choice else None


def package(options: PackageOptions, progress=print) -> PackageReport:
    """Build, validate (and optionally check under the server's versions), then publish the zip."""
    resolve_views(options.tta)
    check_choices([options.zoom_undo], ZOOM_UNDO_RULES, "--zoom-undo rule")
    out = output_zip(options.out)
    members = find_run_members(options.run_dirs)
    progress(f"loading {len(members)} member(s)")
    models = load_models(members)
    failed = first_failure(equivalence_report(members, models))  # in seconds; the zip's model.py is checked last
    if failed:
        raise BcsubError(f"{failed.name}: {failed.detail}")
    share = selection_share(options)
    data, reason = validation_data(members, options.val, options.seed, share) \
        if options.tta == "auto" or options.val else (None, None)
    tta = plan_tta(models, members, data, options, progress, reason, share)
    if share < 1.0 and tta.choice is not None:
        why = "--tta-share" if options.tta_share is not None else \
            f"the time plan kept packaging within {MAX_PACKAGE_SHARE:.0%} of --time-budget"
        tta.notes.append(f"TTA chosen on {len(data.data)} validation images ({share:.0%}): {why}; "
                         "--tta-share 1 chooses on all of them")
    probe = probe_images(data, members, options.seed)
    tta, expected = fit_time_limit(tta, models, probe, options.batch_size)
    seen, note = seen_by(members, data.data.images if data is not None else None)
    tta.notes += [note] if note else []
    with tempfile.TemporaryDirectory(prefix="bcsub_pkg_") as tmp:
        draft = write_draft(Path(tmp), members, tta, options.batch_size, seen)
        progress("validating the zip in a fresh process, then its model.py here")
        validation, compat = check_draft(draft, probe, expected, options.check_env, members)
        publish(draft, out)
    return PackageReport(out, members, tta.choice, tta.views, validation, compat, tta.notes)


def selection_share(options: PackageOptions) -> float:
    """--tta-share, else the share the runs' time plans left time for (1.0 without a plan)."""
    if options.tta_share is None:
        return planned_selection_share(options.run_dirs)
    if not 0.0 < options.tta_share <= 1.0:
        raise BcsubError(f"--tta-share {options.tta_share}: give a share of the validation images, above 0 and "
                         "at most 1")
    return options.tta_share


def find_run_members(run_dirs: list[str]) -> list[Member]:
    """Every member of the run dirs, checked to fit this challenge."""
    members = [m for run_dir in run_dirs for m in find_members(run_dir)]
    check_members(members)
    return members


def output_zip(out: str) -> Path:
    """The --out path, which must name a .zip file."""
    return check_output(out, "--out", ".zip")


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


def plan_tta(models: list, members: list[Member], data: EvalData | None, options: PackageOptions, progress=print,
             reason: str | None = None, share: float = 1.0) -> TTAPlan:
    """The views named by --tta; for 'auto', the views and member weights scored best on the validation
    data and shifted copies of it (the 8 dihedral views, uniform, without validation data: ``reason``)."""
    uniform = [1.0 / len(models)] * len(models)
    views = resolve_views(options.tta)
    if views is not None:
        return TTAPlan(views, uniform)
    if data is None:
        return TTAPlan(runtime.DIHEDRAL_VIEWS, uniform,
                       notes=[f"{reason or 'no validation data'}; using the 8 dihedral TTA views"])
    progress(f"choosing TTA views and member weights on {len(data.data)} images of {data.source} + shifts")
    # the zoom estimate reads its own copy of the first member, as the zip's does: adaptation never moves it
    fit_zoom, note = zoom_fitter(load_models(members[:1])[0], members, options.seed, progress, share) \
        if options.zoom_undo != "off" else (None, None)
    choice = choose_tta(models, shifted_eval_sets(data.data, options.seed), options.batch_size, data.usable, fit_zoom,
                        zoom_max_clean_cost=ZOOM_UNDO_RULES[options.zoom_undo] or 0.0)
    return TTAPlan(choice.views, choice.member_weights, choice, [note] if note else [])


def fit_time_limit(tta: TTAPlan, models: list, probe: np.ndarray, batch_size: int) -> tuple[TTAPlan, np.ndarray]:
    """Time the plan on the probe images; an auto choice projected over ``TIME_SHARE`` of the limit for
    10,000 images is re-chosen with fewer views. Returns the plan and its in-process labels of the probe."""
    expected, seconds_per_image = timed_predict(models, tta, batch_size, probe)
    budget = TIME_SHARE * CODABENCH_TIME_LIMIT_S
    if tta.choice is None or seconds_per_image * PROJECTED_IMAGES <= budget:
        return tta, expected
    max_views = max(1, int(len(tta.views) * budget / (seconds_per_image * PROJECTED_IMAGES)))
    choice = tta.choice.limited_to(max_views)
    note = f"TTA limited to {len(choice.views)} views to stay well inside the {CODABENCH_TIME_LIMIT_S} s limit"
    limited = TTAPlan(choice.views, choice.member_weights, choice, [*tta.notes, note])
    expected, _ = timed_predict(models, limited, batch_size, probe)
    return limited, expected


def probe_images(data: EvalData | None, members: list[Member], seed: int) -> np.ndarray:
    """Images for the fresh-process check: validation images, else those the members kept for the
    equivalence check, else random pixels."""
    rng = np.random.default_rng(seed)
    if data is not None:
        images = data.data.images
    else:
        kept = [ref["images"] for ref in map(read_equivalence, (m.run_dir for m in members)) if ref is not None]
        images = np.concatenate(kept) if kept else None
    if images is not None and len(images):
        return images[rng.integers(0, len(images), PROBE_IMAGES)]
    return rng.integers(0, 256, (PROBE_IMAGES, *runtime.IMAGE_SHAPE), dtype=np.uint8)


def timed_predict(models: list, tta: TTAPlan, batch_size: int, probe: np.ndarray) -> tuple[np.ndarray, float]:
    """In-process labels for ``probe`` and the seconds per image they took (after a warm-up)."""
    ensemble = runtime.TTAEnsemble(models, tta.weights, tta.views, batch_size, tta.adapt_bn, tta.repair, tta.zoom)
    ensemble.predict(probe[:8])
    start = time.perf_counter()
    labels = ensemble.predict(probe)
    return labels, (time.perf_counter() - start) / len(probe)


def write_draft(folder: Path, members: list[Member], tta: TTAPlan, batch_size: int, seen: Seen | None = None) -> Path:
    """Stage the zip's files in ``folder`` and zip them there (the draft is published only once valid); ``seen``:
    the images the zip has seen, for `bcsub local-score` (``tools/seen.py``)."""
    staging = folder / "staging"
    staging.mkdir()
    stage_files(staging, members, tta, batch_size)
    if seen is not None:
        seen.save(staging / SEEN_FILE)
    return write_zip(staging, folder / "submission.zip")


def check_draft(draft: Path, probe: np.ndarray, expected: np.ndarray, check_env: bool,
                members: list[Member]) -> tuple[ValidationReport, ValidationReport | None]:
    """Every check of the draft zip, with its model.py run here against the members it was made from; the
    first blocking failure stops packaging (advisories are reported)."""
    validation, compat = validate_zip(draft, probe, expected, check_env=check_env,
                                      in_process=lambda program, report: check_shipped_runtime(program, probe,
                                                                                               members, report))
    failed = describe_failure(validation, compat)
    if failed:
        raise BcsubError(f"the packaged submission {failed}")
    return validation, compat


def publish(draft: Path, out: Path) -> Path:
    """Copy the validated draft to ``out`` atomically."""
    with atomic_output(out) as final:
        shutil.copyfile(draft, final)
    return out


def stage_files(staging: Path, members: list[Member], tta: TTAPlan, batch_size: int) -> None:
    shutil.copyfile(RUNTIME_SOURCE, staging / "model.py")
    entries = []
    for k, (member, weight) in enumerate(zip(members, tta.weights)):
        name = f"member_{k}.weights.npz"
        shutil.copyfile(member.weights_path, staging / name)
        entries.append({"spec": member.spec, "weights": name, "weight": weight,
                        "source": str(member.run_dir), "val_accuracy": member.val_accuracy})
    manifest = {
        "format": runtime.WEIGHTS_FORMAT,
        "members": entries,
        "tta": {"views": list(tta.views), "adapt_bn": tta.adapt_bn,
                "repair": tta.repair.to_json() if tta.repair else None,
                "zoom": tta.zoom.to_json() if tta.zoom else None,
                "selection": tta.choice.table if tta.choice else None},
        "batch_size": batch_size,
        "built_with": {"keras": keras.__version__},
    }
    (staging / runtime.MANIFEST_NAME).write_text(json.dumps(manifest, indent=2))


def write_zip(staging: Path, out: Path) -> Path:
    """Zip the staged files flat (the draft lives in a temporary folder; publishing is atomic)."""
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for file in sorted(staging.iterdir()):
            archive.write(file, arcname=file.name)
    return out


def check_shipped_runtime(program: Path, probe: np.ndarray, members: list[Member], report: ValidationReport) -> None:
    """In this process, the unzipped model.py (our own runtime, as shipped): each member it loads against
    the member's training graph (blocking), then the edge-case inputs of ``predict``."""
    shipped = import_runtime(program)
    model = shipped.Model()
    check_equivalence(shipped, model.ensemble.models, [read_equivalence(m.run_dir) for m in members],
                      [member_name(m.run_dir) for m in members], report)
    check_edge_cases(model, probe, report)


def equivalence_report(members: list[Member], models: list) -> ValidationReport:
    """Each member, rebuilt as the runtime rebuilds it (``models``), against its training graph."""
    report = ValidationReport()
    check_equivalence(runtime, models, [read_equivalence(m.run_dir) for m in members],
                      [member_name(m.run_dir) for m in members], report)
    return report


def check_run(run_dirs: list[str]) -> ValidationReport:
    """`bcsub check RUN_DIR`: the equivalence check of every member."""
    members = find_run_members(run_dirs)
    return equivalence_report(members, load_models(members))
