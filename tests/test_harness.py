"""The CodaBench ingestion replica: safe unzip, the submission folder as working directory, a time limit per
prediction, and failures reported per input as results, not crashes."""

from __future__ import annotations

import stat
import zipfile

import numpy as np
import pytest

from tools.harness import run_zip, safe_extract
from train.errors import BcsubError

X = np.zeros((4, 96, 96, 3), np.uint8)


def _zip(tmp_path, model_py: str, extra: dict[str, bytes] | None = None):
    path = tmp_path / "sub.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("model.py", model_py)
        for name, data in (extra or {}).items():
            archive.writestr(name, data)
    return path


GOOD = """
import os, numpy as np
class Model:
    def __init__(self):
        self.k = int(open(os.path.join(os.path.dirname(__file__), 'k.txt')).read())
    def predict(self, X):
        return np.full(len(X), self.k, dtype=np.int64)
"""


def test_good_submission_loads_files_next_to_model_py(tmp_path):
    result = run_zip(_zip(tmp_path, GOOD, {"k.txt": b"5"}), {"x": X, "empty": X[:0]})
    assert result.ok and result.status == "ok"
    assert result.predictions["x"].tolist() == [5, 5, 5, 5] and result.predictions["empty"].shape == (0,)
    assert result.init_seconds is not None and result.peak_rss_mb > 0


@pytest.mark.parametrize("name", ["../evil.py", "/abs/evil.py", "a/../../evil.py"])
def test_zip_slip_is_rejected(tmp_path, name):
    path = _zip(tmp_path, GOOD, {name: b"x"})
    with pytest.raises(BcsubError, match="unsafe member path"):
        safe_extract(path, tmp_path / "out")
    assert not (tmp_path / "evil.py").exists() and not (tmp_path / "out").exists()


def test_symlink_member_is_rejected(tmp_path):
    path = tmp_path / "link.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("model.py", GOOD)
        info = zipfile.ZipInfo("k.txt")
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        archive.writestr(info, "/etc/passwd")
    with pytest.raises(BcsubError, match="symbolic link"):
        safe_extract(path, tmp_path / "out")


def test_zip_bomb_limit(tmp_path):
    path = _zip(tmp_path, GOOD, {"big.bin": b"\0" * 10_000})
    with pytest.raises(BcsubError, match="unzips to more than"):
        safe_extract(path, tmp_path / "out", max_bytes=5_000)


def test_not_a_zip(tmp_path):
    bad = tmp_path / "bad.zip"
    bad.write_text("hello")
    with pytest.raises(BcsubError, match="not a zip"):
        run_zip(bad, {"x": X})


def test_import_error_is_reported(tmp_path):
    result = run_zip(_zip(tmp_path, "import bcsub_missing_module\n"), {"x": X})
    assert not result.ok and result.status == "import_error"
    assert "ModuleNotFoundError" in result.error and "bcsub_missing_module" in result.error


def test_init_error_is_reported(tmp_path):
    result = run_zip(_zip(tmp_path, GOOD), {"x": X})  # k.txt is missing
    assert result.status == "init_error" and "FileNotFoundError" in result.error


def test_timeout_is_reported(tmp_path):
    slow = "import time\nclass Model:\n    def predict(self, X):\n        time.sleep(60)\n"
    result = run_zip(_zip(tmp_path, slow), {"x": X}, time_limit=5)
    assert result.status == "timeout" and "5 s limit" in result.error


SLOW_ON_THREE = """
import os, time, numpy as np
class Model:
    def predict(self, X):
        if len(X) == 3:
            time.sleep(60)
        if len(X) == 2:
            os._exit(3)
        return np.zeros(len(X), dtype=np.int64)
"""


def test_a_timeout_or_crash_costs_only_its_own_input(tmp_path):
    """Each predict gets the limit less Model()'s time; the inputs after a killed one run in a fresh child."""
    inputs = {"a": X, "slow": X[:3], "b": X, "dies": X[:2], "c": X[:1]}
    result = run_zip(_zip(tmp_path, SLOW_ON_THREE), inputs, time_limit=3)
    status = {name: rec["status"] for name, rec in result.variants.items()}
    assert status == {"a": "ok", "slow": "timeout", "b": "ok", "dies": "crash", "c": "ok"}
    assert result.children == 3 and set(result.predictions) == {"a", "b", "c"}
    assert not result.ok and result.status == "timeout" and "less" in result.variants["slow"]["error"]
    assert "exit code 3" in result.variants["dies"]["error"]


def test_slow_model_init_fails_every_input(tmp_path):
    slow = "import time\nclass Model:\n    def __init__(self):\n        time.sleep(60)\n"
    result = run_zip(_zip(tmp_path, slow), {"x": X, "y": X}, time_limit=2)
    assert {rec["status"] for rec in result.variants.values()} == {"timeout"} and result.children == 1
    assert "Model() did not finish within the 2 s limit" in result.error


def test_working_directory_is_the_submission_folder(tmp_path):
    """The template loads 'weights.keras' by a relative path, and it scored on CodaBench: so must it here."""
    relative = ("import os, numpy as np\nclass Model:\n    def __init__(self):\n"
                "        self.k = int(open('k.txt').read())\n        self.cwd = os.getcwd()\n"
                "    def predict(self, X):\n        assert os.getcwd() == self.cwd\n"
                "        return np.full(len(X), self.k)\n")
    result = run_zip(_zip(tmp_path, relative, {"k.txt": b"6"}), {"x": X})
    assert result.ok, result.error
    assert result.predictions["x"].tolist() == [6, 6, 6, 6]


def test_a_zip_imports_its_own_modules_and_packages_even_where_bcsub_has_the_same_names(tmp_path):
    """On CodaBench nothing of bcsub is installed: a team's validate.py, contract.py or tools/ is what
    `import` finds. The replica must not hand the zip bcsub's modules of those names instead."""
    own = ("import numpy as np\nfrom validate import A\nfrom contract import B\nfrom tools.helpers import C\n"
           "class Model:\n    def predict(self, X):\n        return np.full(len(X), A + B + C)\n")
    files = {"validate.py": b"A = 1\n", "contract.py": b"B = 2\n", "tools/__init__.py": b"",
             "tools/helpers.py": b"C = 4\n"}
    result = run_zip(_zip(tmp_path, own, files), {"x": X})
    assert result.ok, result.error
    assert result.predictions["x"].tolist() == [7, 7, 7, 7]


def test_column_of_float_labels_is_scored_with_a_warning(tmp_path):
    column = "import numpy as np\nclass Model:\n    def predict(self, X):\n        return np.ones((len(X), 1))\n"
    result = run_zip(_zip(tmp_path, column), {"x": X})
    assert result.ok and result.predictions["x"].tolist() == [1, 1, 1, 1]
    assert any("column" in w for w in result.warnings()["x"]) and any("float64" in w for w in result.warnings()["x"])


def test_wrong_output_shape_is_reported(tmp_path):
    probs = "import numpy as np\nclass Model:\n    def predict(self, X):\n        return np.zeros((len(X), 8))\n"
    result = run_zip(_zip(tmp_path, probs), {"x": X})
    assert result.status == "bad_output" and "shape (4, 8)" in result.error and "argmax" in result.error


def test_exception_in_predict_is_reported(tmp_path):
    boom = "class Model:\n    def predict(self, X):\n        raise RuntimeError('boom')\n"
    result = run_zip(_zip(tmp_path, boom), {"x": X})
    assert result.status == "predict_error" and "RuntimeError: boom" in result.error


def test_hard_crash_is_reported(tmp_path):
    crash = "import os\nclass Model:\n    def predict(self, X):\n        os._exit(3)\n"
    result = run_zip(_zip(tmp_path, crash), {"x": X})
    assert result.status == "crash" and "exit code 3" in result.error


def test_progress_is_reported(tmp_path):
    seen = []
    result = run_zip(_zip(tmp_path, GOOD, {"k.txt": b"1"}), ((f"v{i}", X) for i in range(3)),
                     progress=lambda stage, done, total: seen.append((stage, done, total)), total=3)
    assert result.ok
    assert ("prepare", 3, 3) in seen and seen[-1] == ("predict", 3, 3)


TF_MODEL = """
import os, numpy as np, tensorflow as tf
class Model:
    def predict(self, X):  # 7 where the GPUs are hidden
        hidden = os.environ.get("CUDA_VISIBLE_DEVICES") == "-1"
        return np.zeros(len(X), dtype=np.int64) + int(tf.reduce_sum(tf.fill([1], 7 if hidden else 0)))
"""


def test_the_result_says_which_device_timed_it(tmp_path):
    """The GPUs TensorFlow saw in the child (none here; the env of the run reaches it, so CUDA_VISIBLE_DEVICES=-1
    hides a GPU), None for a submission that never loaded TensorFlow; a GPU's times get a warning in a check."""
    from tools.validate import ValidationReport, check_timing_device

    assert run_zip(_zip(tmp_path, GOOD, {"k.txt": b"1"}), {"x": X}).gpus is None
    (tmp_path / "tf").mkdir()
    result = run_zip(_zip(tmp_path / "tf", TF_MODEL), {"x": X}, env={"CUDA_VISIBLE_DEVICES": "-1"})
    assert result.ok and result.gpus == 0 and result.predictions["x"].tolist() == [7] * len(X)
    on_cpu, on_gpu = ValidationReport(), ValidationReport()
    check_timing_device(result.gpus, on_cpu)
    check_timing_device(2, on_gpu)
    assert on_cpu.checks == [] and on_gpu.ok
    assert [(c.name, c.warning) for c in on_gpu.checks] == [("timed on", True)]
    assert "CUDA_VISIBLE_DEVICES=-1 bcsub check" in on_gpu.checks[0].detail
