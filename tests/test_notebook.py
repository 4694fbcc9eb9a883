"""examples/quickstart.ipynb runs top to bottom (on CPU, with the embedded sample and the demo preset, through
its parameter cell), so it cannot rot; it is committed without outputs."""

from __future__ import annotations

import os
import re
import stat
import sys
from pathlib import Path

import nbformat
import pytest

from tests.conftest import ROOT, SAMPLE_TRAIN

NOTEBOOK = ROOT / "examples" / "quickstart.ipynb"


def _parameter_cell(nb) -> nbformat.NotebookNode:
    cells = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(cells) == 1, "the notebook needs exactly one cell tagged 'parameters'"
    return cells[0]


def test_notebook_is_valid_and_committed_without_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, "strip the outputs before committing"


def _names(source: str) -> list[str]:
    return re.findall(r"^(\w+) = ", source, flags=re.M)


@pytest.mark.slow
def test_quickstart_notebook_runs_on_cpu_with_the_sample(tmp_path):
    from nbclient import NotebookClient

    nb = nbformat.read(NOTEBOOK, as_version=4)
    cell = _parameter_cell(nb)
    work = tmp_path / "work"
    params = {"BCSUB_REPO": "", "INSTALL": False, "DATA": str(SAMPLE_TRAIN), "WORK": str(work), "PRESET": "demo",
              "TRAIN_ARGS": "--epochs 4", "PACKAGE_ARGS": "--tta 1", "HOLDOUT": 0.2, "SCORE_ARGS": "--limit 40"}
    assert _names(cell.source) == list(params), "the test must set every parameter the notebook has"
    cell.source = "\n".join(f"{name} = {value!r}" for name, value in params.items())
    bin_dir = tmp_path / "bin"  # `bcsub` on the kernel's PATH: this checkout's CLI
    bin_dir.mkdir()
    shim = bin_dir / "bcsub"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m tools.cli "$@"\n')
    shim.chmod(shim.stat().st_mode | stat.S_IEXEC)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": str(ROOT),
           "TF_CPP_MIN_LOG_LEVEL": "2"}
    client = NotebookClient(nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}})
    client.execute(env=env)
    outputs = "".join(out.get("text", "") for c in nb.cells if c.cell_type == "code" for out in c.outputs)
    run = work / "runs" / "demo"
    assert (run / "model.json").is_file() and (work / "runs" / "demo.zip").is_file()
    assert (work / "runs" / "demo-score.json").is_file() and (work / "clean.removed.json").is_file()
    assert "expected hidden" in outputs and "demo" in outputs
    assert "FAIL" not in outputs
    assert Path(work / "holdout.npz").is_file()
