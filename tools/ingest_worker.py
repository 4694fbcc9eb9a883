"""Child process of the CodaBench ingestion replica. Standard library and numpy only.

Run as ``python ingest_worker.py SUBMISSION_DIR JOB_DIR ATTEMPT``, normally from SUBMISSION_DIR as the
working directory (the parent chooses). It does what the CodaBench ingestion program does —
``sys.path.append(submission_dir); from model import Model; Model().predict(X)`` with the whole array
in one call — for every input listed in ``JOB_DIR/inputs_<ATTEMPT>.json``, and writes
``JOB_DIR/result_<ATTEMPT>.json`` plus one ``pred_<name>.npy`` per input. Before each predict it records
which input it is on and when it started, so the parent can apply the time limit to that prediction.
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


def _write(path: str, result: dict) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as handle:
        json.dump(result, handle, indent=2)
    os.replace(tmp, path)


def _gpu_count() -> int | None:
    """GPUs TensorFlow sees in this process (the timing's device), None when the submission did not load it."""
    tf = sys.modules.get("tensorflow")
    return len(tf.config.list_physical_devices("GPU")) if tf is not None else None


def main(submission_dir: str, job_dir: str, attempt: str = "0") -> int:
    import numpy as np

    result_path = os.path.join(job_dir, f"result_{attempt}.json")
    result: dict = {"stage": "import", "ok": False, "variants": {}, "python": sys.version.split()[0],
                    "cwd": os.getcwd()}
    _write(result_path, result)
    with open(os.path.join(job_dir, f"inputs_{attempt}.json")) as handle:
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
        _write(result_path, result)
        return 0
    result["init_seconds"] = time.perf_counter() - start
    result["stage"] = "predict"
    result["rss_after_init_mb"] = _rss_mb()
    versions = {}
    for name in ("tensorflow", "keras", "numpy"):
        module = sys.modules.get(name)
        versions[name] = getattr(module, "__version__", None) if module else None
    result["versions"] = versions
    result["gpus"] = _gpu_count()
    for entry in inputs:
        name = entry["name"]
        X = np.load(entry["path"], allow_pickle=False)
        record: dict = {"n": int(len(X)), "rss_before_mb": _rss_mb()}
        result["current"], result["current_started"] = name, time.time()
        _write(result_path, result)
        try:
            with PeakMemory() as memory:
                t0 = time.perf_counter()
                y = model.predict(X)
                record["seconds"] = time.perf_counter() - t0
            record["peak_rss_mb"] = memory.peak
        except BaseException:  # noqa: BLE001
            record["error"] = traceback.format_exc()
        else:
            _save_output(y, os.path.join(job_dir, f"pred_{name}.npy"), record)
        result["variants"][name] = record
        result["current"] = None
        del X
        _write(result_path, result)
    result["ok"] = True
    result["stage"] = "done"
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    _write(result_path, result)
    return 0


def _save_output(y, path: str, record: dict) -> None:
    """Save what predict returned as a numeric array; anything else is recorded as an output error."""
    import numpy as np

    try:
        y = np.asarray(y)
        record["output_shape"] = list(y.shape)
        record["output_dtype"] = str(y.dtype)
        np.save(path, y, allow_pickle=False)
    except BaseException as err:  # noqa: BLE001
        record["output_error"] = (f"predict returned {type(y).__name__}, not a numeric array "
                                  f"({type(err).__name__}: {err}); return a numpy array of integer labels")


def _forget_own_folder() -> None:
    """Python put this script's folder (bcsub's ``tools/``) first on ``sys.path``. On CodaBench that place holds
    AN2DL's ingestion program, none of bcsub's modules: a zip's own ``validate.py`` or ``display.py`` must not
    meet bcsub's modules of those names here either."""
    here = os.path.realpath(os.path.dirname(__file__))
    sys.path[:] = [p for p in sys.path if os.path.realpath(p or os.curdir) != here]


if __name__ == "__main__":
    _forget_own_folder()
    sys.exit(main(*sys.argv[1:4]))
