"""The checks a submission zip must pass (used by `bcsub package` and `bcsub check`), of two kinds.

Blocking checks decide a CodaBench run: model.py at the zip root, ``import model``, ``Model()``, predict on a realistic
batch of real images (run as the ingestion runs it, from the submission folder), the output contract, and
the projected time for 10,000 images against the limit; with ``--env``, the same run under the server's
tensorflow 2.17 / keras 3.4.1 / numpy < 2. Advisory checks are good practice that CodaBench does not need:
n=0, n=1, determinism, float input, no reliance on the working directory, size, the imports' availability.
An advisory failure is a warning with its fix; it never stops the blocking checks, and only blocking
failures fail a zip.
"""

from __future__ import annotations

import ast
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tools.harness import (
    DEFAULT_TIME_LIMIT_S,
    PROJECTED_IMAGES,
    IngestionResult,
    projected_seconds,
    run_submission,
    safe_extract,
)
from tools.load_error import summarise_error

CODABENCH_TIME_LIMIT_S = DEFAULT_TIME_LIMIT_S
SIZE_WARNING_MB = 300
ALLOWED_IMPORTS = {"numpy", "tensorflow", "keras"}
PROJECT_PACKAGES = {"train", "tools", "submission", "bcsub"}
CWD_PROBE_IMAGES = 4


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    advisory: bool = False  # good practice only: a failure is a warning and does not fail the zip

    @property
    def warning(self) -> bool:
        return self.advisory and not self.ok


@dataclass
class ValidationReport:
    checks: list[Check] = field(default_factory=list)
    seconds_per_1000: float | None = None
    init_seconds: float | None = None
    projected_seconds: float | None = None
    zip_mb: float | None = None
    versions: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """Every blocking check passed (advisory ones may have failed)."""
        return not self.failures()

    def add(self, name: str, ok: bool, detail: str, advisory: bool = False) -> bool:
        self.checks.append(Check(name, ok, detail, advisory))
        return ok

    def failures(self) -> list[Check]:
        return [c for c in self.checks if not c.ok and not c.advisory]

    def warnings(self) -> list[Check]:
        return [c for c in self.checks if c.warning]


def first_failure(*reports: ValidationReport | None) -> Check | None:
    """The first failed blocking check over several reports, or None when all passed."""
    return next((c for r in reports if r is not None for c in r.failures()), None)


def describe_failure(report: ValidationReport, compat: ValidationReport | None) -> str | None:
    """One line for the first failed blocking check (saying when it failed under the server's versions)."""
    failed = first_failure(report)
    where = ""
    if failed is None and compat is not None and (failed := first_failure(compat)):
        where = " under " + ", ".join(f"{k} {v}" for k, v in compat.versions.items())
    return None if failed is None else f"failed '{failed.name}'{where}: {failed.detail}"


MACOS_METADATA = ("__MACOSX/", ".DS_Store")  # what macOS "Compress" adds: nothing reads it


def check_layout(zip_path: Path, report: ValidationReport) -> bool:
    """Blocking: ``model.py`` at the zip root, where the ingestion imports it from. Sub-folders beside it
    pass: CodaBench unzips the whole archive as it is (``ZipFile.extractall``), as the 2023 AN2DL template's
    ``SubmissionModel/`` folder did; macOS metadata (``__MACOSX/``, ``.DS_Store``) is named and left alone.
    Advisory: the zip's size."""
    with zipfile.ZipFile(zip_path) as archive:
        names = archive.namelist()
    ok = report.add("layout", *layout_verdict(names))
    report.zip_mb = zip_path.stat().st_size / 2**20
    report.add("zip size", report.zip_mb <= SIZE_WARNING_MB,
               f"{report.zip_mb:.1f} MB" + ("" if report.zip_mb <= SIZE_WARNING_MB else
                                            f" (over {SIZE_WARNING_MB} MB: uploads may fail; use fewer or "
                                            "smaller members)"), advisory=True)
    return ok


def layout_fix(zip_path: str | Path) -> str | None:
    """What to change in a zip whose ``model.py`` is not at its root (None when it is, or it is no zip)."""
    try:
        with zipfile.ZipFile(zip_path) as archive:
            ok, detail = layout_verdict(archive.namelist())
    except (OSError, zipfile.BadZipFile):
        return None
    return None if ok else detail


def layout_verdict(names: list[str]) -> tuple[bool, str]:
    """Whether a zip's member ``names`` put ``model.py`` where the ingestion imports it from, and what they hold
    (a leading ``./`` is the root: ``extractall`` writes ``./model.py`` as ``model.py``)."""
    names = [name.removeprefix("./") for name in names]
    content = [n for n in names if not any(mark in n for mark in MACOS_METADATA)]
    if "model.py" in names:
        folders = sorted({n.split("/")[0] + "/" for n in content if "/" in n.rstrip("/")})
        beside = f"; beside it {', '.join(folders[:3])}{' ...' if len(folders) > 3 else ''}" if folders else ""
        metadata = "; macOS metadata (harmless: nothing reads it)" if len(content) < len(names) else ""
        return True, f"model.py at the zip root{beside}{metadata}"
    misnamed = [n for n in content if n.lower() == "model.py"]
    nested = [n for n in content if n.rsplit("/", 1)[-1] == "model.py"]
    if misnamed:
        return False, (f"the zip root has {misnamed[0]}, not model.py: CodaBench runs `from model import Model` "
                       "on Linux, where file names are case-sensitive; rename it model.py")
    if nested:
        return False, (f"model.py is in a folder ({nested[0]}), where `from model import Model` cannot find it; "
                       "zip the files, not their folder")
    return False, f"no model.py in the zip (found {content[:3] or names[:3]}); add the model.py with class Model"


def imported_modules(source: str) -> set[str]:
    """Top-level names of the modules a Python source imports (absolute imports only)."""
    modules = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            modules.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules.add(node.module.split(".")[0])
    return modules


def check_imports(program: Path, report: ValidationReport) -> bool:
    """bcsub's own packages are blocking (they import here only because bcsub is installed); other
    packages are advisory (the server's set is unknown; ``--env`` runs without them). Modules and packages
    (folders) the zip holds at its root are its own: the ingestion puts that root on ``sys.path``."""
    try:
        modules = imported_modules((program / "model.py").read_text()) - {"__future__"}
    except SyntaxError as err:
        return report.add("imports", False, f"model.py does not parse: {err}")
    local = {path.stem for path in program.glob("*.py")} | {path.name for path in program.iterdir() if path.is_dir()}
    project = sorted(modules & PROJECT_PACKAGES - local)
    report.add("imports", not project, "no bcsub package" if not project else
               f"model.py imports {project}, which exist here only because bcsub is installed; keep it "
               "self-contained")
    foreign = sorted(m for m in modules - local - PROJECT_PACKAGES
                     if m not in ALLOWED_IMPORTS and m not in sys.stdlib_module_names)
    report.add("imports available", not foreign,
               "only numpy, tensorflow, keras and the standard library" if not foreign else
               f"model.py imports {foreign}, which the server may lack (--env runs without them)", advisory=True)
    return not project


def _error_detail(error: str, server_keras: str | None) -> str:
    """The cause of a failure, verbatim; under the server's versions, with the one-line fix."""
    summary = summarise_error(error)
    return summary.cause if server_keras is None else f"{summary.cause} -- fix: {summary.server_fix(server_keras)}"


def _check_started(result: IngestionResult, report: ValidationReport, server_keras: str | None) -> bool:
    """The blocking `import model` and `Model()` checks."""
    if result.status == "import_error":
        report.add("import model", False, _error_detail(result.error, server_keras))
        return False
    report.add("import model", True, "from model import Model (the submission folder on sys.path)")
    if not result.init_ok:
        report.add("Model()", False, _error_detail(result.error, server_keras))
        return False
    report.add("Model()", True, f"{result.init_seconds:.1f} s, from the submission folder as working directory")
    return True


def validate_extracted(program: Path, probe: np.ndarray, expected: np.ndarray | None,
                       report: ValidationReport, python: str | None = None,
                       time_limit: float = CODABENCH_TIME_LIMIT_S, server_keras: str | None = None,
                       advisory: bool = True) -> IngestionResult:
    """Run the unzipped submission as the ingestion does and add the blocking checks of its answers and
    speed; with ``advisory``, also n=0, n=1, determinism and float input. ``server_keras`` (the
    server-version run) adds the one-line fix to a failure."""
    inputs = {"probe": probe, "probe_again": probe}
    if advisory:
        inputs |= {"probe_float": probe.astype(np.float32), "single": probe[:1], "empty": probe[:0]}
    result = run_submission(program, inputs, time_limit=time_limit, python=python)
    report.init_seconds = result.init_seconds
    report.versions = result.versions or report.versions
    if not _check_started(result, report, server_keras):
        return result
    record = result.variants["probe"]
    if not report.add(f"predict ({len(probe)} images)", record["status"] in ("ok", "bad_output"),
                      f"one call in {record.get('seconds', 0):.1f} s" if "seconds" in record else
                      f"{record['status']}: {_error_detail(record['error'], server_keras)}"):
        return result
    if not report.add("output contract", record["status"] == "ok",
                      "(n,) integer labels 0..7" if record["status"] == "ok" else record["error"]):
        return result
    if record.get("warnings"):
        report.add("output format", False, "; ".join(record["warnings"]), advisory=True)
    again = result.variants["probe_again"]
    per_image = (again if again["status"] == "ok" else record)["seconds"] / max(1, len(probe))
    report.seconds_per_1000 = per_image * 1000
    report.projected_seconds = projected_seconds(result.init_seconds, per_image)
    report.add(f"time for {PROJECTED_IMAGES:,} images", report.projected_seconds <= time_limit,
               f"projected {report.projected_seconds:.0f} s = Model() {result.init_seconds:.1f} s + "
               f"{report.seconds_per_1000:.1f} s per 1,000 images (limit {time_limit:.0f} s)"
               + ("" if report.projected_seconds <= time_limit else
                  "; use fewer TTA views (--tta) or fewer/smaller members"))
    check_timing_device(result.gpus, report)
    if expected is not None:
        agree = float(np.mean(result.predictions["probe"] == expected))
        report.add("matches in-process prediction", agree >= 0.98,
                   f"{agree:.1%} of labels agree" + ("" if agree >= 0.98 else
                                                     "; the zip does not hold the trained weights"))
    if advisory:
        _advisory_checks(result, report)
    return result


def check_timing_device(gpus: int | None, report: ValidationReport) -> None:
    """A warning when the times above are a GPU's: a server without one predicts several times slower."""
    if gpus:
        report.add("timed on", False, f"{gpus} GPU(s): a CodaBench worker without a GPU predicts several times "
                   "slower; `CUDA_VISIBLE_DEVICES=-1 bcsub check ZIP` times it on the CPU alone", advisory=True)


def _advisory_checks(result: IngestionResult, report: ValidationReport) -> None:
    """n=0, n=1, determinism and float input: CodaBench sends none of these twice, but a sound model.py copes."""
    preds, records = result.predictions, result.variants

    def answered(name: str) -> str | None:
        record = records[name]
        return None if record["status"] == "ok" else f"{record['status']}: {_error_detail(record['error'], None)}"

    problem = answered("empty")
    report.add("n=0", problem is None, "an empty batch gives an empty answer" if problem is None else
               f"{problem} (CodaBench never sends an empty batch; to be safe, return np.zeros(0, int) "
               "when len(X) == 0)", advisory=True)
    problem = answered("single")
    report.add("n=1", problem is None, "one image gives one label" if problem is None else
               f"{problem}; make predict work on a batch of one", advisory=True)
    problem = answered("probe_again")
    same = problem is None and np.array_equal(preds["probe"], preds["probe_again"])
    report.add("deterministic", same, "same labels twice" if same else
               f"the second call on the same images: {problem}" if problem else
               "two calls on the same images gave different labels; avoid random ops at inference", advisory=True)
    problem = answered("probe_float")
    if problem is None:
        agree = float(np.mean(preds["probe"] == preds["probe_float"]))
        report.add("float input", agree >= 0.99, f"{agree:.1%} of labels agree with uint8 input" +
                   ("" if agree >= 0.99 else "; cast X to one dtype before predicting"), advisory=True)
    else:
        report.add("float input", False, f"{problem}; accept float32 pixels 0-255 as well as uint8", advisory=True)


def check_working_directory(program: Path, probe: np.ndarray, report: ValidationReport,
                            python: str | None = None) -> None:
    """Advisory: ``Model()`` and predict also work from another working directory."""
    with tempfile.TemporaryDirectory(prefix="bcsub_cwd_") as elsewhere:
        result = run_submission(program, {"few": probe[:CWD_PROBE_IMAGES]}, python=python, cwd=Path(elsewhere))
    report.add("working directory", result.ok, "also runs from another working directory" if result.ok else
               f"fails from another working directory ({summarise_error(result.error).cause}): it loads files "
               "relative to the working directory, which CodaBench sets to the submission folder; to be "
               "safe, use os.path.join(os.path.dirname(__file__), name)", advisory=True)


def validate_zip(zip_path: Path, probe: np.ndarray, expected: np.ndarray | None = None,
                 check_env: bool = False, in_process: Callable[[Path, ValidationReport], None] | None = None
                 ) -> tuple[ValidationReport, ValidationReport | None]:
    """Every check of a zip: layout and imports, the replica run and the advisory checks; ``in_process``
    (`bcsub package`: its own zip's model.py against the trained members) once the replica run passed;
    with ``check_env`` the blocking run again under the server's versions (whatever the advisories said)."""
    report = ValidationReport()
    compat = None
    with tempfile.TemporaryDirectory(prefix="bcsub_check_") as tmp:
        program = Path(tmp) / "ingested_program"
        safe_extract(zip_path, program)
        if not check_layout(zip_path, report) or not check_imports(program, report):
            return report, None
        validate_extracted(program, probe, expected, report)
        if any(c.name == "Model()" and c.ok for c in report.checks):
            check_working_directory(program, probe, report)
        if in_process is not None and report.ok:
            in_process(program, report)
        if check_env:
            from tools.compat_env import SERVER_VERSIONS, compat_python

            compat = ValidationReport(versions=dict(SERVER_VERSIONS))
            validate_extracted(program, probe, expected, compat, python=str(compat_python()),
                               server_keras=SERVER_VERSIONS["keras"], advisory=False)
    return report, compat
