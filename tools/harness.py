"""The CodaBench ingestion replica: unzip a submission safely and run it in separate processes."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tools.contract import judge_output
from train.errors import BcsubError

WORKER = Path(__file__).with_name("ingest_worker.py")
MAX_UNZIPPED_BYTES = 2 * 2**30
MAX_MEMBERS = 10_000
DEFAULT_TIME_LIMIT_S = 600  # CodaBench's limit for Model() and one prediction
PROJECTED_IMAGES = 10_000  # about the size of a hidden test set


def safe_extract(zip_path: str | Path, target: Path, max_bytes: int = MAX_UNZIPPED_BYTES) -> list[str]:
    """Extract ``zip_path`` into ``target``, refusing absolute paths, ``..``, links and zip bombs."""
    zip_path = Path(zip_path)
    if not zip_path.is_file():
        raise BcsubError(f"{zip_path}: no such file; pass the zip written by `bcsub package`")
    try:
        archive = zipfile.ZipFile(zip_path)
    except zipfile.BadZipFile:
        raise BcsubError(f"{zip_path}: not a zip file; rebuild it with `bcsub package`") from None
    with archive:
        infos = archive.infolist()
        if len(infos) > MAX_MEMBERS:
            raise BcsubError(f"{zip_path}: {len(infos)} entries is too many; rebuild it with `bcsub package`")
        total = 0
        for info in infos:
            name = info.filename
            parts = Path(name).parts
            if name.startswith(("/", "\\")) or (parts and ":" in parts[0]) or ".." in parts:
                raise BcsubError(f"{zip_path}: unsafe member path '{name}' (absolute or '..'); "
                                 "rebuild the zip with `bcsub package`")
            if stat.S_ISLNK(info.external_attr >> 16):
                raise BcsubError(f"{zip_path}: member '{name}' is a symbolic link; zip real files only")
            total += info.file_size
            if total > max_bytes:
                raise BcsubError(f"{zip_path}: unzips to more than {max_bytes / 2**30:.1f} GiB; "
                                 "make the submission smaller")
        target.mkdir(parents=True, exist_ok=True)
        root = target.resolve()
        for info in infos:
            destination = (target / info.filename).resolve()
            if root not in destination.parents and destination != root:
                raise BcsubError(f"{zip_path}: member '{info.filename}' escapes the folder; rebuild the zip")
            archive.extract(info, target)
        return [info.filename for info in infos]


@dataclass
class IngestionResult:
    """What the submission did in the child process(es): one record per input, in ``variants``.

    A record's ``status`` is "ok", "import_error", "init_error", "predict_error" (predict raised),
    "bad_output" (the answer breaks the output contract), "timeout" or "crash"; failed records carry
    ``error``, scored ones may carry advisory ``warnings``. The result's ``status``/``error`` are those of
    the first failed input ("ok" when none failed).
    """

    ok: bool
    status: str
    init_seconds: float | None = None
    wall_seconds: float = 0.0
    peak_rss_mb: float | None = None
    error: str | None = None
    versions: dict = field(default_factory=dict)
    gpus: int | None = None  # GPUs TensorFlow saw in the child (its times are that device's); None: no TF
    variants: dict[str, dict] = field(default_factory=dict)
    predictions: dict[str, np.ndarray] = field(default_factory=dict)
    children: int = 0  # processes started: 1, plus one per input that timed out or crashed
    init_ok: bool = False  # the first process got through import and Model()
    time_limit: float = DEFAULT_TIME_LIMIT_S

    def failed_variants(self) -> dict[str, str]:
        return {name: rec["error"] for name, rec in self.variants.items() if rec["status"] != "ok"}

    def warnings(self) -> dict[str, list[str]]:
        return {name: rec["warnings"] for name, rec in self.variants.items() if rec.get("warnings")}

    def per_image_seconds(self) -> float | None:
        """Predict seconds per image over the inputs that were scored."""
        done = [rec for rec in self.variants.values() if rec["status"] == "ok" and rec.get("n")]
        images = sum(rec["n"] for rec in done)
        return sum(rec["seconds"] for rec in done) / images if images else None

    def projected_seconds(self, images: int = PROJECTED_IMAGES) -> float | None:
        """``Model()`` plus one predict of ``images`` images at the measured per-image time."""
        per_image = self.per_image_seconds()
        return None if per_image is None else projected_seconds(self.init_seconds, per_image, images)


def projected_seconds(init_seconds: float | None, per_image_seconds: float, images: int = PROJECTED_IMAGES) -> float:
    """What CodaBench's limit bounds for a hidden set of ``images`` images: ``Model()`` plus its one predict."""
    return (init_seconds or 0.0) + per_image_seconds * images


Progress = Callable[[str, int, int], None]  # (stage, done, total)


@dataclass
class _ChildEnd:
    """How one child process ended: its last result, and which stage the time limit stopped (if any)."""

    raw: dict
    timed_out: str | None  # None | "init" | "predict"
    returncode: int | None
    log: str


def run_submission(submission_dir: Path, inputs: Mapping[str, np.ndarray] | Iterable[tuple[str, np.ndarray]],
                   time_limit: float = DEFAULT_TIME_LIMIT_S, python: str | None = None,
                   env: dict[str, str] | None = None, progress: Progress | None = None,
                   total: int | None = None, cwd: Path | None = None) -> IngestionResult:
    """Run ``Model().predict`` on each input in a fresh process, as the CodaBench ingestion does.

    The child runs with the submission folder appended to ``sys.path`` and, unless ``cwd`` says
    otherwise, as its working directory; ``Model()`` once, then ``predict`` on each whole input in one
    call. As on CodaBench, where ``Model()`` and the prediction of its one test set share one limit,
    ``Model()`` gets ``time_limit`` seconds and each input's predict the time left after it. An input
    that times out or crashes the process is recorded as such and a fresh child (``Model()`` again)
    goes on with the rest, so every other input keeps its answer. A failing import or ``Model()`` fails
    every input left. ``inputs`` may be a generator of (name, images): each array goes to disk as it
    comes. ``progress`` is called with ("prepare" | "predict", done, total).
    """
    report = progress or (lambda *_: None)
    program = Path(submission_dir).resolve()
    with tempfile.TemporaryDirectory(prefix="bcsub_job_") as job:
        listing = _stage_inputs(Path(job), inputs, total, report)
        result = IngestionResult(ok=False, status="ok", time_limit=time_limit)
        start = time.perf_counter()
        pending = listing
        while pending:
            end = _run_child(program, Path(job), result.children, pending, time_limit, python, env,
                             Path(cwd) if cwd else program, report, len(listing) - len(pending))
            result.children += 1
            _merge(result, end, pending, Path(job))
            left = [entry for entry in pending if entry["name"] not in result.variants]
            if len(left) == len(pending):  # no input finished or blamed: do not loop on it
                _fail_all(result, left, "crash", _died(end, end.raw))
                left = []
            pending = left
        report("predict", len(listing), len(listing))
        result.wall_seconds = time.perf_counter() - start
        _conclude(result, [entry["name"] for entry in listing])
        return result


def _stage_inputs(job: Path, inputs, total: int | None, report: Progress) -> list[dict]:
    """Write each input to ``job`` as .npy; the listing holds name, path and n."""
    listing = []
    items = inputs.items() if isinstance(inputs, Mapping) else inputs
    total = len(inputs) if isinstance(inputs, Mapping) else total
    for name, array in items:
        path = job / f"input_{name}.npy"
        np.save(path, array, allow_pickle=False)
        listing.append({"name": name, "path": str(path), "n": len(array)})
        report("prepare", len(listing), total or len(listing))
    return listing


def _run_child(program: Path, job: Path, attempt: int, pending: list[dict], time_limit: float,
               python: str | None, env: dict[str, str] | None, cwd: Path, report: Progress,
               done_before: int) -> _ChildEnd:
    (job / f"inputs_{attempt}.json").write_text(json.dumps(pending))
    command = [python or sys.executable, str(WORKER), str(program), str(job), str(attempt)]
    child_env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})}
    child_env.pop("PYTHONPATH", None)  # the submission must not see this project
    log_path = job / f"child_{attempt}.log"
    result_file = job / f"result_{attempt}.json"
    with open(log_path, "w") as log:
        child = subprocess.Popen(command, cwd=cwd, env=child_env, stdout=log, stderr=subprocess.STDOUT,
                                 start_new_session=True)
        timed_out = _wait(child, result_file, time_limit, done_before, done_before + len(pending), report)
    return _ChildEnd(_read_result(result_file), timed_out, child.returncode, log_path.read_text(errors="replace"))


def _read_result(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {"stage": "start", "variants": {}}


def _wait(child: subprocess.Popen, result_file: Path, time_limit: float, done_before: int, total: int,
          report: Progress) -> str | None:
    """Wait for the child, reporting finished inputs. Kill its process group when ``Model()`` runs past
    ``time_limit`` ("init") or a predict runs past the time ``Model()`` left of it ("predict")."""
    init_deadline = time.time() + time_limit
    while child.poll() is None:
        raw = _read_result(result_file)
        if raw.get("current") and raw.get("init_seconds") is not None:
            deadline, stage = raw["current_started"] + max(0.0, time_limit - raw["init_seconds"]), "predict"
        elif raw.get("stage") in ("start", "import", "init"):
            deadline, stage = init_deadline, "init"
        else:
            deadline, stage = float("inf"), None
        if time.time() > deadline:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()
            return stage
        report("predict", done_before + len(raw.get("variants", {})), total)
        time.sleep(0.1)
    return None


def _merge(result: IngestionResult, end: _ChildEnd, pending: list[dict], job: Path) -> None:
    """Add one child's records to ``result``: its finished inputs, and the blame for how it ended."""
    raw, limit = end.raw, result.time_limit
    if result.children == 1:
        result.init_seconds, result.versions = raw.get("init_seconds"), raw.get("versions", {})
        result.gpus = raw.get("gpus")
        result.init_ok = raw.get("stage") in ("predict", "done")
    result.peak_rss_mb = max(result.peak_rss_mb or 0.0, raw.get("peak_rss_mb") or 0.0) or None
    sizes = {entry["name"]: entry["n"] for entry in pending}
    for name, record in raw.get("variants", {}).items():
        result.variants[name] = record
        labels = _judge(record, job / f"pred_{name}.npy", sizes[name])
        if labels is not None:
            result.predictions[name] = labels
    left = [entry for entry in pending if entry["name"] not in result.variants]
    if raw.get("error"):
        _fail_all(result, left, "import_error" if raw["stage"] == "import" else "init_error", raw["error"])
    elif end.timed_out == "init":
        _fail_all(result, left, "timeout", f"import and Model() did not finish within the {limit:.0f} s limit")
    elif raw.get("ok"):
        return
    elif raw.get("current") in sizes and raw["current"] not in result.variants:
        name, n = raw["current"], sizes[raw["current"]]
        if end.timed_out == "predict":
            budget = max(0.0, limit - raw["init_seconds"])
            result.variants[name] = {
                "n": n, "status": "timeout", "seconds": budget,
                "error": f"predict on {n} images did not finish within {budget:.0f} s "
                         f"(the {limit:.0f} s limit less {raw['init_seconds']:.1f} s for Model())"}
        else:
            result.variants[name] = {"n": n, "status": "crash", "error": _died(end, raw)}
    elif raw["stage"] != "predict":
        _fail_all(result, left, "crash", _died(end, raw))


def _died(end: _ChildEnd, raw: dict) -> str:
    return f"the process died (exit code {end.returncode}) in stage {raw['stage']}:\n{end.log[-3000:]}"


def _judge(record: dict, pred_file: Path, n: int) -> np.ndarray | None:
    """Set the record's status (and warnings) from what predict did; the labels when they can be scored."""
    if record.get("error"):
        record["status"] = "predict_error"
        return None
    if record.get("output_error") or not pred_file.exists():
        record["status"], record["error"] = "bad_output", record.get("output_error", "predict returned nothing")
        return None
    verdict = judge_output(np.load(pred_file, allow_pickle=False), n)
    if verdict.problem:
        record["status"], record["error"] = "bad_output", verdict.problem
        return None
    record["status"], record["warnings"] = "ok", list(verdict.warnings)
    return verdict.labels


def _fail_all(result: IngestionResult, entries: list[dict], status: str, error: str) -> None:
    for entry in entries:
        result.variants[entry["name"]] = {"n": entry["n"], "status": status, "error": error}


def _conclude(result: IngestionResult, order: list[str]) -> None:
    """The result's status and error: those of the first failed input, in input order."""
    failed = next((result.variants[name] for name in order if result.variants[name]["status"] != "ok"), None)
    result.ok = failed is None
    if failed is not None:
        result.status, result.error = failed["status"], failed["error"]


def run_zip(zip_path: str | Path, inputs: dict[str, np.ndarray], **kwargs) -> IngestionResult:
    """Unzip into a temporary ``ingested_program`` folder and run it (see ``run_submission``)."""
    with tempfile.TemporaryDirectory(prefix="bcsub_ingest_") as root:
        program = Path(root) / "ingested_program"
        safe_extract(zip_path, program)
        return run_submission(program, inputs, **kwargs)
