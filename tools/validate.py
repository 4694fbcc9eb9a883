"""Checks a submission must pass before it is called done (used by `bcsub package` and `bcsub check`)."""

from __future__ import annotations

import ast
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tools.harness import IngestionResult, run_submission

CODABENCH_TIME_LIMIT_S = 600
PROJECTED_IMAGES = 10_000
SIZE_WARNING_MB = 300
ALLOWED_IMPORTS = {"numpy", "tensorflow", "keras"}
PROJECT_PACKAGES = {"train", "tools", "submission", "bcsub"}


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    warning: bool = False  # a warning does not fail the submission


@dataclass
class ValidationReport:
    checks: list[Check] = field(default_factory=list)
    seconds_per_1000: float | None = None
    init_seconds: float | None = None
    zip_mb: float | None = None
    versions: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(c.ok or c.warning for c in self.checks)

    def add(self, name: str, ok: bool, detail: str, warning: bool = False) -> bool:
        self.checks.append(Check(name, ok, detail, warning and not ok))
        return ok

    def failures(self) -> list[Check]:
        return [c for c in self.checks if not c.ok and not c.warning]


def first_failure(*reports: ValidationReport | None) -> Check | None:
    """The first failed (non-warning) check over several reports, or None when all passed."""
    return next((c for r in reports if r is not None for c in r.failures()), None)


def check_layout(zip_path: Path, report: ValidationReport) -> bool:
    with zipfile.ZipFile(zip_path) as archive:
        names = archive.namelist()
    report.zip_mb = zip_path.stat().st_size / 2**20
    nested = [n for n in names if "/" in n.rstrip("/")]
    ok = report.add("flat layout", not nested and "model.py" in names,
                    "model.py and weight files at the zip root" if not nested and "model.py" in names else
                    f"model.py must be at the zip root and nothing in sub-folders (found {nested[:3] or names[:3]}); "
                    "zip the files, not their folder")
    report.add("zip size", report.zip_mb <= SIZE_WARNING_MB,
               f"{report.zip_mb:.1f} MB" + ("" if report.zip_mb <= SIZE_WARNING_MB else
                                            f" (over {SIZE_WARNING_MB} MB: uploads may fail; use fewer or "
                                            "smaller members)"), warning=True)
    return ok


def imported_modules(source: str) -> set[str]:
    """Top-level names of the modules a Python source imports (absolute imports only)."""
    modules = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            modules.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules.add(node.module.split(".")[0])
    return modules


def check_imports(model_py: Path, report: ValidationReport) -> bool:
    modules = imported_modules(model_py.read_text()) - {"__future__"}
    stdlib = set(sys.stdlib_module_names)
    foreign = sorted(m for m in modules if m not in ALLOWED_IMPORTS and m not in stdlib)
    project = sorted(modules & PROJECT_PACKAGES)
    bad = project or foreign
    return report.add("imports", not bad,
                      "only numpy, tensorflow, keras and the standard library" if not bad else
                      f"model.py imports {bad}, which the server does not have; keep it self-contained")


def validate_extracted(program: Path, probe: np.ndarray, expected: np.ndarray | None,
                       report: ValidationReport, python: str | None = None,
                       time_limit: float = CODABENCH_TIME_LIMIT_S) -> IngestionResult:
    """Run the unzipped submission in a fresh process and check its answers and speed."""
    inputs = {"probe": probe, "probe_again": probe, "probe_float": probe.astype(np.float32),
              "single": probe[:1], "empty": probe[:0]}
    result = run_submission(program, inputs, time_limit=time_limit, python=python)
    report.init_seconds = result.init_seconds
    report.versions = result.versions
    if not report.add("runs in a fresh process", result.status in ("ok", "predict_error"),
                      "Model() loads from another working directory" if result.status in ("ok", "predict_error")
                      else f"{result.status}: {result.error}"):
        return result
    failures = result.failed_variants()
    report.add("output shape/dtype/range", not failures,
               "int labels (n,) in 0..7 for uint8, float, n=1 and n=0 inputs" if not failures else
               "; ".join(f"{name}: {err.strip().splitlines()[-1]}" for name, err in failures.items()))
    if failures:
        return result
    preds = result.predictions
    report.add("deterministic", np.array_equal(preds["probe"], preds["probe_again"]),
               "same labels twice" if np.array_equal(preds["probe"], preds["probe_again"]) else
               "two calls on the same images gave different labels; avoid random ops at inference")
    same_float = float(np.mean(preds["probe"] == preds["probe_float"]))
    report.add("uint8 and float agree", same_float >= 0.99, f"{same_float:.1%} of labels agree")
    if expected is not None:
        agree = float(np.mean(preds["probe"] == expected))
        report.add("matches in-process prediction", agree >= 0.98,
                   f"{agree:.1%} of labels agree" + ("" if agree >= 0.98 else
                                                     "; the zip does not hold the trained weights"))
    steady = result.variants["probe_again"]["seconds"]
    report.seconds_per_1000 = steady / max(1, len(probe)) * 1000
    projected = (result.init_seconds or 0) + report.seconds_per_1000 * PROJECTED_IMAGES / 1000
    report.add("time limit", projected <= time_limit,
               f"projected {projected:.0f} s for {PROJECTED_IMAGES:,} images (limit {time_limit:.0f} s)"
               + ("" if projected <= time_limit else "; use fewer TTA views (--tta) or fewer/smaller members"))
    return result
