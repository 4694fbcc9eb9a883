"""The CodaBench ingestion replica: unzip a submission safely and run it in a separate process."""

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

from submission.model import NUM_CLASSES
from train.errors import BcsubError

WORKER = Path(__file__).with_name("ingest_worker.py")
MAX_UNZIPPED_BYTES = 2 * 2**30
MAX_MEMBERS = 10_000
DEFAULT_TIME_LIMIT_S = 600


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
    """What the submission did in the child process."""

    ok: bool
    status: str  # "ok" | "import_error" | "init_error" | "predict_error" | "timeout" | "crash"
    init_seconds: float | None = None
    wall_seconds: float = 0.0
    peak_rss_mb: float | None = None
    error: str | None = None
    versions: dict = field(default_factory=dict)
    variants: dict[str, dict] = field(default_factory=dict)
    predictions: dict[str, np.ndarray] = field(default_factory=dict)

    def failed_variants(self) -> dict[str, str]:
        return {name: rec["error"] for name, rec in self.variants.items() if rec.get("error")}


def check_predictions(pred: np.ndarray, n: int) -> str | None:
    """Why ``pred`` is not a valid CodaBench answer for n images, or None when it is."""
    if pred.shape != (n,):
        hint = " (return labels, not probabilities: use argmax(axis=1))" if pred.ndim == 2 else ""
        return f"predict returned shape {pred.shape}, expected ({n},){hint}"
    if pred.dtype.kind not in "iu":
        return f"predict returned dtype {pred.dtype}, expected integer labels"
    if n and (pred.min() < 0 or pred.max() >= NUM_CLASSES):
        return f"predict returned labels outside 0..{NUM_CLASSES - 1} (min {pred.min()}, max {pred.max()})"
    return None


Progress = Callable[[str, int, int], None]  # (stage, done, total)


def run_submission(submission_dir: Path, inputs: Mapping[str, np.ndarray] | Iterable[tuple[str, np.ndarray]],
                   time_limit: float = DEFAULT_TIME_LIMIT_S, python: str | None = None,
                   env: dict[str, str] | None = None, progress: Progress | None = None,
                   total: int | None = None) -> IngestionResult:
    """Run ``Model().predict`` on each input in a fresh process, like the CodaBench ingestion.

    ``inputs`` may be a generator of (name, images): each array is written to disk as it comes, so
    a large shift suite never sits in memory at once. The model is loaded once for all inputs.
    ``progress`` is called with ("prepare" | "predict", done, total) while the work goes on.
    """
    report = progress or (lambda *_: None)
    with tempfile.TemporaryDirectory(prefix="bcsub_job_") as job, \
            tempfile.TemporaryDirectory(prefix="bcsub_cwd_") as cwd:
        listing, sizes = [], {}
        items = inputs.items() if isinstance(inputs, Mapping) else inputs
        total = len(inputs) if isinstance(inputs, Mapping) else total
        for name, array in items:
            path = os.path.join(job, f"input_{name}.npy")
            np.save(path, array, allow_pickle=False)
            listing.append({"name": name, "path": path})
            sizes[name] = len(array)
            report("prepare", len(listing), total or len(listing))
        with open(os.path.join(job, "inputs.json"), "w") as handle:
            json.dump(listing, handle)
        command = [python or sys.executable, str(WORKER), str(Path(submission_dir).resolve()), job]
        child_env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})}
        child_env.pop("PYTHONPATH", None)  # the submission must not see this project
        log_path = Path(job) / "child.log"
        start = time.perf_counter()
        with open(log_path, "w") as log:
            child = subprocess.Popen(command, cwd=cwd, env=child_env, stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
            timed_out = _wait(child, job, time_limit, len(listing), report)
        wall = time.perf_counter() - start
        return _collect(job, child.returncode, log_path.read_text(errors="replace"), timed_out, wall,
                        time_limit, sizes)


def _wait(child: subprocess.Popen, job: str, time_limit: float, total: int, report: Progress) -> bool:
    """Wait for the child, reporting finished inputs; kill its process group at the time limit."""
    deadline = time.monotonic() + time_limit
    result_file = Path(job) / "result.json"
    while child.poll() is None:
        if time.monotonic() > deadline:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()
            return True
        try:
            done = len(json.loads(result_file.read_text()).get("variants", {}))
        except (OSError, ValueError):
            done = 0
        report("predict", done, total)
        time.sleep(0.2)
    report("predict", total, total)
    return False


def _collect(job: str, returncode: int | None, output: str, timed_out: bool, wall: float, time_limit: float,
             sizes: dict[str, int]) -> IngestionResult:
    result_file = Path(job) / "result.json"
    raw = json.loads(result_file.read_text()) if result_file.exists() else {"stage": "start"}
    result = IngestionResult(ok=False, status="ok", init_seconds=raw.get("init_seconds"), wall_seconds=wall,
                             peak_rss_mb=raw.get("peak_rss_mb"), versions=raw.get("versions", {}),
                             variants=raw.get("variants", {}))
    if timed_out:
        result.status = "timeout"
        result.error = f"the submission did not finish within the {time_limit:.0f} s limit (stage: {raw['stage']})"
        return result
    if raw.get("error"):
        result.status = "import_error" if raw["stage"] == "import" else "init_error"
        result.error = raw["error"]
        return result
    if not raw.get("ok"):
        result.status = "crash"
        result.error = f"the process died (exit code {returncode}) in stage {raw['stage']}:\n{output[-3000:]}"
        return result
    for name, record in result.variants.items():
        pred_file = Path(job) / f"pred_{name}.npy"
        if not record.get("error") and pred_file.exists():
            pred = np.load(pred_file, allow_pickle=False)
            problem = check_predictions(pred, sizes[name])
            if problem:
                record["error"] = problem
            else:
                result.predictions[name] = pred.astype(np.int64)
    failures = result.failed_variants()
    if failures:
        result.status = "predict_error"
        result.error = next(iter(failures.values()))
        return result
    result.ok = True
    return result


def run_zip(zip_path: str | Path, inputs: dict[str, np.ndarray], **kwargs) -> IngestionResult:
    """Unzip into a temporary ``ingested_program`` folder and run it (see ``run_submission``)."""
    with tempfile.TemporaryDirectory(prefix="bcsub_ingest_") as root:
        program = Path(root) / "ingested_program"
        safe_extract(zip_path, program)
        return run_submission(program, inputs, **kwargs)
