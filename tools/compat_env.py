"""A cached virtual environment with the CodaBench server's likely versions, to run submissions in."""

from __future__ import annotations

import os
import subprocess
import sys
import venv
from pathlib import Path

from train.errors import BcsubError

SERVER_VERSIONS = {"tensorflow": "2.17.0", "keras": "3.4.1", "numpy": "<2"}
SERVER_REQUIREMENTS = (f"tensorflow-cpu=={SERVER_VERSIONS['tensorflow']}", f"keras=={SERVER_VERSIONS['keras']}",
                       f"numpy{SERVER_VERSIONS['numpy']}")
DEFAULT_ROOT = Path(os.environ.get("BCSUB_CACHE", Path.home() / ".cache" / "bcsub"))
ENV_NAME = "codabench-tf2.17-keras3.4.1"
READY_MARKER = ".bcsub-ready"


def compat_python(root: Path = DEFAULT_ROOT, progress=print) -> Path:
    """Path of the compat environment's python, creating and installing it once (cached)."""
    env_dir = root / ENV_NAME
    python = env_dir / "bin" / "python"
    if (env_dir / READY_MARKER).is_file() and python.exists():
        return python
    progress(f"creating {env_dir} with {' '.join(SERVER_REQUIREMENTS)} (once; about 1.5 GB)")
    if sys.version_info >= (3, 13):
        raise BcsubError("tensorflow 2.17 has no wheels for Python >= 3.13; run bcsub with Python 3.9-3.12 "
                         "to use --check-env")
    venv.EnvBuilder(with_pip=True, clear=True).create(env_dir)
    command = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
               *SERVER_REQUIREMENTS]
    proc = subprocess.run(command, capture_output=True, text=True)
    if proc.returncode != 0:
        raise BcsubError(f"could not install {' '.join(SERVER_REQUIREMENTS)} into {env_dir} "
                         f"({proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else 'pip failed'}); "
                         "check the network/package index, or skip --check-env")
    (env_dir / READY_MARKER).write_text(" ".join(SERVER_REQUIREMENTS) + "\n")
    return python
