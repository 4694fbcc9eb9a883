"""The packaged zip loads and predicts under the CodaBench server's likely versions (TF 2.17, Keras 3.4.1).

Slow: the first run creates a cached virtual environment from the package index (about 1.5 GB).
"""

from __future__ import annotations

import pytest

from tests.conftest import run_cli


@pytest.mark.slow
def test_zip_loads_in_tensorflow_2_17_keras_3_4(packaged_zip):
    proc = run_cli("check", str(packaged_zip[0]), "--env", timeout=1800)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "keras 3.4.1" in proc.stdout.replace("\n", " ") or "3.4.1" in proc.stdout
    assert "FAIL" not in proc.stdout
