"""Cached virtual environments with pinned versions: the CodaBench server's likely ones, to run submissions
in (``compat_python``), and the oldest ones bcsub's training supports, to prove those floors
(``floor_python``)."""

from __future__ import annotations

import os
import subprocess
import sys
import venv
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from train.errors import BcsubError

DEFAULT_ROOT = Path(os.environ.get("BCSUB_CACHE", Path.home() / ".cache" / "bcsub"))
READY_MARKER = ".bcsub-ready"


@dataclass(frozen=True)
class EnvSpec:
    """A cached environment: its folder name, what pip installs into it, and what it is for (errors say)."""

    name: str
    requirements: tuple[str, ...]
    purpose: str
    size: str


# The submission runtime (submission/model.py) must load and predict here: the server's versions.
SERVER_VERSIONS = {"tensorflow": "2.17.0", "keras": "3.4.1", "numpy": "<2"}
SERVER_REQUIREMENTS = (f"tensorflow-cpu=={SERVER_VERSIONS['tensorflow']}", f"keras=={SERVER_VERSIONS['keras']}",
                       f"numpy{SERVER_VERSIONS['numpy']}")
ENV_NAME = "codabench-tf2.17-keras3.4.1"
SERVER_ENV = EnvSpec(ENV_NAME, SERVER_REQUIREMENTS, "skip --check-env", "about 1.5 GB")
# bcsub's training at the floors pyproject.toml states (tensorflow>=2.16, keras>=3.11), with the other
# dependencies at their newest compatible versions; tests/test_floors.py trains in it.
FLOOR_ENV = EnvSpec("training-floor-tf2.16.2-keras3.11.0",
                    ("tensorflow-cpu==2.16.2", "keras==3.11.0", "numpy<2", "scikit-learn", "scipy", "pillow",
                     "typer", "rich", "matplotlib"),
                    "the floor test needs the package index", "about 1.5 GB")


def compat_python(root: Path = DEFAULT_ROOT, progress=print) -> Path:
    """Path of the server-versions environment's python, creating and installing it once (cached)."""
    return env_python(SERVER_ENV, root, progress)


def floor_python(root: Path = DEFAULT_ROOT, progress=print) -> Path:
    """Path of the training-floor environment's python, creating and installing it once (cached)."""
    return env_python(FLOOR_ENV, root, progress)


@contextmanager
def _exclusive(lock_file: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``lock_file`` (two processes must not build one environment at once)."""
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # Windows: no flock; builds are rare enough to go unguarded
        yield
        return
    with open(lock_file, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def env_python(spec: EnvSpec, root: Path = DEFAULT_ROOT, progress=print) -> Path:
    """Path of ``spec``'s python under ``root``, creating and installing the environment once (a process that
    finds another one building it waits for that build instead of starting its own)."""
    env_dir = root / spec.name
    python = env_dir / "bin" / "python"
    if (env_dir / READY_MARKER).is_file() and python.exists():
        return python
    with _exclusive(root / f"{spec.name}.lock"):
        if (env_dir / READY_MARKER).is_file() and python.exists():  # built while we waited
            return python
        _build(spec, env_dir, python, progress)
    return python


def _build(spec: EnvSpec, env_dir: Path, python: Path, progress) -> None:
    progress(f"creating {env_dir} with {' '.join(spec.requirements)} (once; {spec.size})")
    if sys.version_info >= (3, 13):
        raise BcsubError(f"{spec.requirements[0]} has no wheels for Python >= 3.13; run bcsub with "
                         f"Python 3.10-3.12, or {spec.purpose}")
    venv.EnvBuilder(with_pip=True, clear=True).create(env_dir)
    command = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *spec.requirements]
    proc = subprocess.run(command, capture_output=True, text=True)
    if proc.returncode != 0:
        raise BcsubError(f"could not install {' '.join(spec.requirements)} into {env_dir} "
                         f"({proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else 'pip failed'}); "
                         f"check the network/package index, or {spec.purpose}")
    (env_dir / READY_MARKER).write_text(" ".join(spec.requirements) + "\n")
