"""The input side that fits the time budget (``--auto-image-size``, on in ``--preset cpu``).

On a machine where the budget fits only part of the main stage's epochs at the recipe's side, a from-scratch network
trains more epochs at ``SMALL_INPUT_SIDE`` px and scores higher (README, Benchmarks: a 2-core machine that fitted 8
of 70 epochs at 72 px fitted 16 at 56 px, validation 0.967 -> 0.979; one that fitted 33 fitted 56, expected hidden
0.792 -> 0.805 at the same clean accuracy; 39 -> 66: 0.982 -> 0.993 clean). Before the first epoch a short probe
times the real training step at the recipe's side (or takes the ``--xla auto`` probe's time) and a validation pass
(which sizes the packaging reserve, as the run's plan will after its first epoch); when the plan would give the main
stage fewer than ``FEW_EPOCHS_SHARE`` of its epochs, the network is rebuilt at the smaller side (the weights of
these networks do not depend on the side, so nothing else changes). The choice is saved in ``side.json`` in the run
dir, so a resumed run keeps it.
"""

from __future__ import annotations

from submission.model import network_input_size
from train.config import TrainConfig
from train.planner import FEW_EPOCHS_SHARE, BudgetPlanner

SMALL_INPUT_SIDE = 56  # the from-scratch side for slow machines (README, Benchmarks)


def can_shrink(cfg: TrainConfig, spec: dict) -> bool:
    """A from-scratch network whose backbone sees more than ``SMALL_INPUT_SIDE`` px (``spec``): a pretrained one
    keeps the side its weights were trained at."""
    return not cfg.pretrained and network_input_size(spec) > SMALL_INPUT_SIDE


def auto_side_applies(cfg: TrainConfig, spec: dict) -> bool:
    """``--auto-image-size`` with a time budget, on one machine (a probe per worker could disagree)."""
    return cfg.auto_image_size and bool(cfg.time_budget_minutes) and not cfg.multi_worker and can_shrink(cfg, spec)


def choose_side(planner: BudgetPlanner, side: int, seconds_per_epoch: float, validation_s: float | None = None) -> dict:
    """The side to train at, from the first stage's training time per epoch at ``side`` and a validation pass's
    (the record ``side.json`` keeps)."""
    few, fits = planner.first_stage_at(seconds_per_epoch + (validation_s or 0.0), validation_s)
    first = planner.stages[0]
    return {"probed_side": side, "seconds_per_epoch": round(seconds_per_epoch, 1),
            "validation_pass_s": None if validation_s is None else round(validation_s, 2), "fits_epochs": fits,
            "max_epochs": first.max_epochs, "few_epochs_share": FEW_EPOCHS_SHARE,
            "image_size": SMALL_INPUT_SIDE if few else side}


def side_message(choice: dict) -> str:
    """One line for the log: what the probe found and what was chosen."""
    found = (f"image size: at {choice['probed_side']} px an epoch takes {choice['seconds_per_epoch']:.0f} s here, "
             f"so the budget fits about {choice['fits_epochs']} of the {choice['max_epochs']} main epochs")
    if choice["image_size"] == choice["probed_side"]:
        return f"{found}; keeping {choice['probed_side']} px"
    return (f"{found}; training at {choice['image_size']} px instead, about "
            f"{(choice['probed_side'] / choice['image_size']) ** 2:.1f}x the epochs (--no-auto-image-size keeps "
            f"{choice['probed_side']} px)")


def smaller_input_hint(cfg: TrainConfig, spec: dict) -> str | None:
    """What to try when the time budget fits few epochs (None when the network cannot shrink)."""
    if not can_shrink(cfg, spec):
        return None
    side = network_input_size(spec)
    return (f"from scratch, --image-size {SMALL_INPUT_SIDE} trains about {(side / SMALL_INPUT_SIDE) ** 2:.1f}x "
            "the epochs in the same time (2-core machines that fitted 8, 33 and 39 of 70 epochs at 72 px fitted 16, "
            "56 and 66 at 56 px: expected hidden on validation 0.683 -> 0.717, 0.792 -> 0.805, 0.818 -> 0.823; "
            "README, Benchmarks)")
