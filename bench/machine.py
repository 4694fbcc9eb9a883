"""What the benchmarks ran on, for their results files: speeds differ several-fold between 2-core machines."""

from __future__ import annotations

import os
from pathlib import Path


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else ''."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return ""


def describe(gpu: bool = False) -> str:
    """'GPU' or 'CPU (N cores, MODEL)'."""
    if gpu:
        return "GPU"
    model = cpu_model()
    return f"CPU ({os.cpu_count()} cores{', ' + model if model else ''})"
