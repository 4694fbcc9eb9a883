"""The packaged zip loads and predicts under the CodaBench server's likely versions (TF 2.17, Keras 3.4.1).

Slow: the first run creates a cached virtual environment from the package index (about 1.5 GB).
"""

from __future__ import annotations

import json

import numpy as np
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
import numpy as np
x = np.linspace(0, 255, 48, dtype="float32").reshape(1, 4, 4, 3)
prep = {k: np.asarray(make()(x)).ravel().tolist() for k, make in runtime.PREPROCESSING.items() if make}
print("PREP" + json.dumps(prep))
"""


@pytest.mark.slow
def test_every_backbone_has_the_same_weight_layout_and_preprocessing_in_keras_3_4(tmp_path):
    """Weights ship as arrays in get_weights() order: that order must be the same in the server's Keras, and
    every preprocessing the spec can name must compute the same pixels there."""
    import shutil
    import subprocess
    import sys

    from submission import model as runtime
    from tools.compat_env import compat_python

    shutil.copyfile(runtime.__file__, tmp_path / "model.py")
    (tmp_path / "shapes.py").write_text(SHAPES_SCRIPT)
    layouts, pixels = [], []
    for python in (sys.executable, str(compat_python())):
        proc = subprocess.run([python, str(tmp_path / "shapes.py"), str(tmp_path)], capture_output=True, text=True,
                              cwd=tmp_path, timeout=900)
        found = {tag: json.loads(line[len(tag):]) for line in proc.stdout.splitlines()
                 for tag in ("SHAPES", "PREP") if line.startswith(tag)}
        assert {"SHAPES", "PREP"} <= set(found), proc.stderr[-2000:]
        layouts.append(found["SHAPES"])
        pixels.append(found["PREP"])
    assert layouts[0] == layouts[1]
    assert set(pixels[0]) == set(pixels[1]) == {k for k, make in runtime.PREPROCESSING.items() if make}
    for name, ours in pixels[0].items():
        assert np.allclose(ours, pixels[1][name], atol=1e-5), name


RUNTIME_SCRIPT = """
import json, sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])  # the project: the edge-case table and the validation report
import keras
import numpy as np
from tools.edge_cases import check_edge_cases
from tools.equivalence import import_runtime
from tools.validate import ValidationReport
shipped = import_runtime(Path(sys.argv[2]))
report = ValidationReport()
check_edge_cases(shipped.Model(), np.load(sys.argv[3]), report)
net = shipped.build_network({"backbone": "efficientnetb0", "image_size": 32})
shipped.load_weights(net, sys.argv[4])
norm = next(layer for layer in shipped.iter_layers(net) if isinstance(layer, keras.layers.Normalization))
print("RESULT" + json.dumps({"keras": keras.__version__, "checks": [[c.name, c.ok, c.warning] for c in report.checks],
                             "mean": np.asarray(norm.mean).ravel().tolist(),
                             "variance": np.asarray(norm.variance).ravel().tolist()}))
"""


@pytest.mark.slow
def test_runtime_repairs_inputs_and_loads_normalization_in_keras_3_4(packaged_zip, sample_test, tmp_path):
    """Under TF 2.17 / Keras 3.4.1 / numpy 1.26: predict's edge cases pass, and ``load_weights`` puts the
    mean and variance of EfficientNet's Normalization into use (``set_weights`` alone does not)."""
    import subprocess

    import keras
    import numpy as np

    from submission import model as runtime
    from tests.conftest import ROOT
    from tools.compat_env import compat_python
    from tools.harness import safe_extract

    safe_extract(packaged_zip[0], tmp_path / "program")
    np.save(tmp_path / "probe.npy", sample_test[0][:8])
    net = runtime.build_network({"backbone": "efficientnetb0", "image_size": 32})
    norm = next(layer for layer in runtime.iter_layers(net) if isinstance(layer, keras.layers.Normalization))
    mean, variance = [0.485, 0.456, 0.406], [0.052441, 0.050176, 0.050625]
    norm.adapt_mean.assign(mean)
    norm.adapt_variance.assign(variance)
    runtime.save_weights(net, str(tmp_path / "b0.npz"))
    (tmp_path / "script.py").write_text(RUNTIME_SCRIPT)
    proc = subprocess.run([str(compat_python()), str(tmp_path / "script.py"), str(ROOT), str(tmp_path / "program"),
                           str(tmp_path / "probe.npy"), str(tmp_path / "b0.npz")], capture_output=True, text=True,
                          cwd=tmp_path, timeout=900)
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT")]
    assert line, proc.stderr[-3000:]
    result = json.loads(line[0][len("RESULT"):])
    assert result["keras"] == "3.4.1"
    assert all(ok for _, ok, _ in result["checks"]), result["checks"]
    assert np.allclose(result["mean"], mean) and np.allclose(result["variance"], variance)


WAITER_SCRIPT = """
import sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from tools.compat_env import EnvSpec, env_python
spec = EnvSpec("fake-env", ("bcsub-no-such-package==0",), "never mind", "tiny")
print("PATH", env_python(spec, Path(sys.argv[2])))
"""


def test_a_second_process_waits_for_the_build_in_progress_and_uses_it(tmp_path):
    """While one process builds an environment (holds its lock), another waits, then uses that build instead of
    starting its own (its own would fail: the requirement does not exist)."""
    import fcntl
    import subprocess
    import sys
    import time

    from tests.conftest import ROOT
    from tools.compat_env import READY_MARKER

    root = tmp_path / "cache"
    root.mkdir()
    (tmp_path / "waiter.py").write_text(WAITER_SCRIPT)
    with open(root / "fake-env.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # "we" are building
        waiter = subprocess.Popen([sys.executable, str(tmp_path / "waiter.py"), str(ROOT), str(root)],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(2)
        assert waiter.poll() is None, "the second process must wait for the lock"
        (root / "fake-env" / "bin").mkdir(parents=True)
        (root / "fake-env" / "bin" / "python").symlink_to(sys.executable)
        (root / "fake-env" / READY_MARKER).write_text("built\n")
        fcntl.flock(lock, fcntl.LOCK_UN)
    out, err = waiter.communicate(timeout=60)
    assert waiter.returncode == 0, err
    assert "creating" not in out and f"PATH {root / 'fake-env' / 'bin' / 'python'}" in out
