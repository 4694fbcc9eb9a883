"""The packaged zip loads and predicts under the CodaBench server's likely versions (TF 2.17, Keras 3.4.1).

Slow: the first run creates a cached virtual environment from the package index (about 1.5 GB).
"""

from __future__ import annotations

import json

import pytest

from tests.conftest import run_cli


@pytest.mark.slow
def test_zip_loads_in_tensorflow_2_17_keras_3_4(packaged_zip):
    proc = run_cli("check", str(packaged_zip[0]), "--env", timeout=1800)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "keras 3.4.1" in proc.stdout.replace("\n", " ") or "3.4.1" in proc.stdout
    assert "FAIL" not in proc.stdout


SHAPES_SCRIPT = """
import hashlib, json, sys
sys.path.insert(0, sys.argv[1])
import model as runtime
out = {}
for name in sorted(runtime.BACKBONES):
    net = runtime.build_network({"backbone": name, "image_size": 75 if name == "xception" else 32})
    shapes = [tuple(w.shape) for w in net.weights]
    out[name] = [len(shapes), hashlib.md5(str(shapes).encode()).hexdigest()]
print("SHAPES" + json.dumps(out))
"""


@pytest.mark.slow
def test_every_backbone_has_the_same_weight_layout_in_keras_3_4(tmp_path):
    """Weights ship as arrays in get_weights() order: that order must be the same in the server's Keras."""
    import shutil
    import subprocess
    import sys

    from submission import model as runtime
    from tools.compat_env import compat_python

    shutil.copyfile(runtime.__file__, tmp_path / "model.py")
    (tmp_path / "shapes.py").write_text(SHAPES_SCRIPT)
    layouts = []
    for python in (sys.executable, str(compat_python())):
        proc = subprocess.run([python, str(tmp_path / "shapes.py"), str(tmp_path)], capture_output=True, text=True,
                              cwd=tmp_path, timeout=900)
        line = [x for x in proc.stdout.splitlines() if x.startswith("SHAPES")]
        assert line, proc.stderr[-2000:]
        layouts.append(json.loads(line[0][len("SHAPES"):]))
    assert layouts[0] == layouts[1]
