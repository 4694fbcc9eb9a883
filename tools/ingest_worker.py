"""Child process of the CodaBench ingestion replica. Standard library and numpy only.

Run as ``python ingest_worker.py SUBMISSION_DIR JOB_DIR``, from a working directory that is neither
of them. It does what the CodaBench ingestion program does — ``sys.path.append(submission_dir);
from model import Model; Model().predict(X)`` with the whole array in one call — for every input listed
in ``JOB_DIR/inputs.json``, and writes ``JOB_DIR/result.json`` plus one ``pred_<name>.npy`` per input.
Errors are written to the result, never raised: the parent reports them.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import threading
import time
import traceback


def _rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        pages = int(handle.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


class PeakMemory:
    """Samples this process's resident memory every few milliseconds while active."""

    def __init__(self) -> None:
        self.peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_mb())
            time.sleep(0.005)

    def __enter__(self) -> PeakMemory:
        self.peak = _rss_mb()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_mb())


def _write(job_dir: str, result: dict) -> None:
    tmp = os.path.join(job_dir, ".result.json.tmp")
    with open(tmp, "w") as handle:
        json.dump(result, handle, indent=2)
    os.replace(tmp, os.path.join(job_dir, "result.json"))


def main(submission_dir: str, job_dir: str) -> int:
    import numpy as np

    result: dict = {"stage": "import", "ok": False, "variants": {}, "python": sys.version.split()[0]}
    _write(job_dir, result)
    with open(os.path.join(job_dir, "inputs.json")) as handle:
        inputs = json.load(handle)
    start = time.perf_counter()
    try:
        sys.path.append(submission_dir)
        from model import Model  # noqa: PLC0415  (the CodaBench ingestion does exactly this)

        result["stage"] = "init"
        model = Model()
    except BaseException:  # noqa: BLE001 - report anything the submission raises
        result["error"] = traceback.format_exc()
        result["init_seconds"] = time.perf_counter() - start
        _write(job_dir, result)
        return 0
    result["init_seconds"] = time.perf_counter() - start
    result["stage"] = "predict"
    result["rss_after_init_mb"] = _rss_mb()
    versions = {}
    for name in ("tensorflow", "keras", "numpy"):
        module = sys.modules.get(name)
        versions[name] = getattr(module, "__version__", None) if module else None
    result["versions"] = versions
    _write(job_dir, result)
    for entry in inputs:
        name = entry["name"]
        X = np.load(entry["path"], allow_pickle=False)
        record: dict = {"n": int(len(X)), "rss_before_mb": _rss_mb()}
        try:
            with PeakMemory() as memory:
                t0 = time.perf_counter()
                y = model.predict(X)
                record["seconds"] = time.perf_counter() - t0
            record["peak_rss_mb"] = memory.peak
            y = np.asarray(y)
            record["output_shape"] = list(y.shape)
            record["output_dtype"] = str(y.dtype)
            np.save(os.path.join(job_dir, f"pred_{name}.npy"), y, allow_pickle=False)
        except BaseException:  # noqa: BLE001
            record["error"] = traceback.format_exc()
        result["variants"][name] = record
        del X
        _write(job_dir, result)
    result["ok"] = True
    result["stage"] = "done"
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    _write(job_dir, result)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
