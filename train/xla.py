"""``--xla``: whether the training step is XLA-compiled.

Which step is faster on a CPU depends on the machine: on a 2-core AMD EPYC the XLA step ran the CPU preset
1.2-1.4x as fast as the plain one, on a 2-core Intel Xeon (AVX-512, AMX) the plain step was 1.3-1.4x as fast
(README, Benchmarks). So ``--xla auto``, where it would compile a long CPU stage, measures instead of assuming:
before the first epoch it times the first stage's real step both ways (``TIMED_BATCHES`` batches each, weights
restored) and trains every stage with the faster one. The choice is saved in ``xla.json`` in the run dir, so a
resumed run keeps it.
"""

from __future__ import annotations

from collections.abc import Callable

from train.devices import gpu_count

XLA_FILE = "xla.json"
XLA_MIN_STEPS = 500  # --xla auto: compiling costs seconds per stage (5 s for the tiny test network), so short
# stages (tests, quick looks) stay plain; the CPU preset's main stage has 7,840 steps


def xla_for(choice: str, distributed: bool, steps: int) -> bool | str:
    """``jit_compile`` for ``model.compile``: ``--xla auto`` considers XLA for CPU-only training without a
    distribution strategy in a stage of at least ``XLA_MIN_STEPS`` steps, where Keras' own "auto" leaves it off
    (the probe then keeps it only where it is faster, ``choose_xla``); elsewhere Keras decides (on for one GPU,
    off under tf.distribute)."""
    if choice != "auto":
        return choice == "on"
    cpu_only = not gpu_count()
    return True if cpu_only and not distributed and steps >= XLA_MIN_STEPS else "auto"


def xla_probe_applies(choice: str, distributed: bool, steps: int) -> bool:
    """Whether ``--xla auto`` would compile this stage on the CPU, so the probe decides instead."""
    return choice == "auto" and xla_for(choice, distributed, steps) is True


def choose_xla(side: int, seconds_per_epoch: Callable[[bool], float]) -> dict:
    """Time an epoch with the XLA-compiled step and with the plain one (``seconds_per_epoch(xla)``) and keep the
    faster: the record ``xla.json`` keeps."""
    timed = {"xla": seconds_per_epoch(True), "plain": seconds_per_epoch(False)}
    return {"probed_side": side, "seconds_per_epoch": {k: round(v, 3) for k, v in timed.items()},
            "xla": timed["xla"] < timed["plain"]}


def fastest_epoch_s(choice: dict) -> float:
    """The epoch time of the step the choice kept."""
    return min(choice["seconds_per_epoch"].values())


def xla_message(choice: dict) -> str:
    """One line for the log: both timings and what was kept."""
    timed = choice["seconds_per_epoch"]
    kept = "the XLA-compiled step" if choice["xla"] else "the plain step"
    return (f"xla: at {choice['probed_side']} px an epoch takes {timed['xla']:.0f} s XLA-compiled and "
            f"{timed['plain']:.0f} s plain here; training with {kept} (--xla on|off decides)")
