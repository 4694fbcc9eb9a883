"""The devices TensorFlow sees: one place that asks, for the strategy, precision, XLA and recipe checks."""

from __future__ import annotations

from pathlib import Path

import tensorflow as tf

BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")  # /proc/cpuinfo flags of CPUs with bfloat16 matrix instructions


def gpu_count() -> int:
    """GPUs TensorFlow sees in this process."""
    return len(tf.config.list_physical_devices("GPU"))


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str]:
    """The CPU's feature flags as Linux lists them (empty elsewhere)."""
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.partition(":")[2].split())
    return set()


def cpu_has_bf16(flags: set[str] | None = None) -> bool:
    """Whether the CPU computes bfloat16 in hardware (oneDNN then runs mixed_bfloat16 convolutions faster than
    float32; without these instructions bfloat16 is emulated, and slower)."""
    return bool((cpu_flags() if flags is None else flags) & set(BF16_CPU_FLAGS))


# The policies --precision can resolve to, in the order of the workers' votes (``agreed_precision``).
POLICIES = ("float32", "mixed_bfloat16", "mixed_float16")


def agreed_precision(votes) -> str:
    """The policy all workers of a multi-worker run train with, from the sum over the workers (or replicas) of each
    one's one-hot vote over ``POLICIES``: the one they all chose, else float32, which every device computes the
    same way (a cluster that mixes CPU families: ``auto`` is bfloat16 on some and float32 on others)."""
    chosen = [policy for policy, count in zip(POLICIES, votes) if count > 0]
    return chosen[0] if len(chosen) == 1 else "float32"


def training_precision(choice: str, gpus: int | None = None, flags: set[str] | None = None) -> str:
    """The Keras dtype policy ``--precision choice`` trains with: auto is mixed_float16 on a GPU, mixed_bfloat16
    on a CPU with bfloat16 instructions (``cpu_has_bf16``: 1.2x as fast there, measured on an AMX Xeon and an
    AVX512-BF16 EPYC, and level with float32 on validation: README, ``--precision``), float32 on other CPUs."""
    if choice != "auto":
        return choice
    if gpu_count() if gpus is None else gpus:
        return "mixed_float16"
    return "mixed_bfloat16" if cpu_has_bf16(flags) else "float32"
