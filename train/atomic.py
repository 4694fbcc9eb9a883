"""Atomic file writes: write to a temporary sibling, then rename, so nothing is half-written."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from train.errors import BcsubError

_UMASK = os.umask(0)
os.umask(_UMASK)


@contextmanager
def atomic_output(path: str | Path, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path next to ``path`` (ending in ``suffix``, for writers that check it); it
    replaces ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    tmp = Path(tmp_name)
    os.chmod(tmp, 0o666 & ~_UMASK)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: str | Path, text: str) -> Path:
    with atomic_output(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_weights(model: Any, path: str | Path) -> Path:
    """``model.save_weights`` (a Keras model: weights and optimizer state) that a kill mid-write cannot
    corrupt."""
    with atomic_output(path, suffix=".weights.h5") as tmp:
        model.save_weights(str(tmp))
    return Path(path)


def write_json(path: str | Path, obj: Any) -> Path:
    return write_text(path, json.dumps(obj, indent=2, default=_json_default) + "\n")


def read_json(path: str | Path) -> Any | None:
    """What ``write_json`` wrote at ``path``; None when there is no file."""
    path = Path(path)
    return json.loads(path.read_text()) if path.is_file() else None


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot serialise {type(obj).__name__}")


def check_output(path: str | Path, option: str, suffix: str | None = None, folder: bool = False) -> Path:
    """``path`` if a command may write it there (checked before any work): a file path ending in ``suffix``
    that is not a folder, or (``folder``) a path that is not a file. ``option`` names it in the error."""
    path = Path(path)
    if folder:
        if path.exists() and not path.is_dir():
            raise BcsubError(f"{option} {path}: is a file; pass a folder")
        return path
    if suffix and path.suffix != suffix:
        raise BcsubError(f"{option} {path}: must end in {suffix}")
    if path.is_dir():
        raise BcsubError(f"{option} {path}: is a folder; pass a file name ending in {suffix or 'a suffix'}")
    return path
