"""The time budget as a plan (``--time-budget``): measure how long an epoch really takes on this machine,
then choose every stage's epochs (main stage(s) and polish) so the whole schedule, packaging included,
ends inside the budget; re-plan when the speed changes by more than ``REPLAN_CHANGE``.

The learning-rate schedule follows the plan: ``PlannedCosineDecay`` reads its length from a variable
that the plan updates, so a shortened run still ends its cosine decay (and still polishes) instead of
being cut off mid-schedule. ``plan.json`` in the run dir records every plan and what actually ran.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import keras
import tensorflow as tf

from train.atomic import write_json

PLAN_FILE = "plan.json"
REPLAN_CHANGE = 0.2  # re-plan when an epoch takes this much longer or shorter than planned for
RECENT = 3  # speeds are the median of the last RECENT epochs (validation passes): one slow epoch is noise
TIMED_BATCHES = (3, 13)  # batches [3, 13) of a stage's first epoch time a step (after the warm-up)
# After the last epoch and inside the budget: finishing the run and `bcsub package`. Measured on the CPU preset
# (bench/bench_train_cpu.py, snapshot pair, 13 views): 250 s of packaging = 198 s choosing the TTA
# (``tools.tta_select.selection_passes``: 108 passes over the validation split per network then, every candidate
# view of the clean split and its shifted copies, plain and BatchNorm-adapted) + 24 s of the zip's checks
# (about 14 passes' worth with every view) + 28 s of process starts, imports and shifted copies; the training
# command's own start and finish took 13 s more. A training validation pass (1.06 s) stands in for a
# packaging pass (0.91 s there): the reserve errs long, not short.
# Image repair (the erased-box fill, then tone repair) since added about 26 passes (every view of the ~2.03
# sets' worth of images it changes): with it, a run with a 0.60 s validation pass kept 224 s and used 180 s
# (bench/results/train_cpu_56_wide.json: 12 s finishing the run, 168 s packaging).
# The zoom undo since added every view of the ~ZOOMED_SETS sets' worth of images it rescales, and, once per package,
# its fit on training images (augmenting, zooming and reading 4,000 of them; fewer, in proportion, where the TTA is
# chosen on a share of the validation images) and its estimate on each evaluation set: ZOOM_FIT_PASSES validation
# passes' worth: 31.6 s where a validation pass took 0.60 s, plus 4 passes (bench/results/zoom_undo_val.json).
SELECTION_PASSES_PER_NETWORK = 144.53  # choosing the TTA: these scale with the images it is chosen on
CHECK_PASSES_PER_NETWORK = 14.0  # the zip's checks
ZOOM_FIT_PASSES = 57.0  # once per package, whatever the number of networks; scales with the selection share
PACKAGE_PASSES_PER_NETWORK = SELECTION_PASSES_PER_NETWORK + CHECK_PASSES_PER_NETWORK
FINISH_FIXED_S = 45.0
# Packaging computes in float32 (the zip's numbers), so a run that trains in mixed precision times validation
# passes that are faster than packaging's. Measured with `--preset cpu` in bfloat16 on a 2-core AMD EPYC
# (bench/results/train_epyc_bf16.json, train_epyc_v3f.json, train_epyc_s2.json): finishing and packaging took
# 1.12-1.17x the reserve sized from its passes, and the run whose budget was tight ended 32 s past its 30 minutes;
# the float32 run on that machine (train_epyc_f32.json) used 0.75x its reserve. Mixed-precision passes count this
# much more.
MIXED_PRECISION_PASS_FACTOR = 1.25
MIN_RESERVE_S = FINISH_FIXED_S  # kept before a validation pass has been timed
# Packaging may take at most this share of the budget: on a machine slow enough for it to take more (seen: 5 s
# per validation pass, 22 of 30 minutes for a snapshot pair), the TTA is chosen on a share of the validation
# images instead (``tta_selection_share``; `bcsub package` reads it from plan.json); the time goes to training.
MAX_PACKAGE_SHARE = 0.2
MIN_SELECTION_SHARE = 0.25
# A first stage planned to fewer than this share of its epochs trains from scratch at the smaller side
# (``--auto-image-size``) or gets the hint to (``FollowPlan``). Measured with `--preset cpu` (README, Benchmarks): where
# 30 minutes fitted 8 of the 70 main epochs at 72 px, 56 px (16) scored 0.979 vs 0.967 clean and 0.717 vs 0.683
# expected hidden on validation; where they fitted 33, 56 px (56) scored 0.988 vs 0.989 and 0.805 vs 0.792; where
# they fitted 39 (57%), 56 px (66) scored 0.993 vs 0.982 and 0.823 vs 0.818. No run found 72 px better; the line
# sits above the highest share measured, with room for a probe's noise.
FEW_EPOCHS_SHARE = 0.75


def allocate_epochs(available_s: float, max_epochs: list[int], seconds_per_epoch: list[float],
                    minimum: list[int], done: list[int] | None = None) -> list[int]:
    """Epochs still to run per stage: as many as fit in ``available_s``, each stage's whole length (``done``
    plus what is still to run) the same fraction of its ``max_epochs``, so the recipe's proportions hold over
    the whole run, not only over what is left; each stage runs at least its ``minimum`` more and at most its
    ``max_epochs`` in all; leftover time goes to the stages with the largest remainders."""
    done = done or [0] * len(max_epochs)
    left = [m - d for m, d in zip(max_epochs, done)]
    if sum(n * t for n, t in zip(left, seconds_per_epoch)) <= available_s:
        return left
    available = max(0.0, available_s)
    spent = sum(d * t for d, t in zip(done, seconds_per_epoch))
    factor = (available + spent) / sum(m * t for m, t in zip(max_epochs, seconds_per_epoch))
    exact = [max(0.0, m * factor - d) for m, d in zip(max_epochs, done)]
    wanted = sum(e * t for e, t in zip(exact, seconds_per_epoch))  # more than available when a stage ran long
    if wanted > available:
        exact = [e * available / wanted for e in exact]
    plan = [min(n, max(lo, math.floor(e))) for n, lo, e in zip(left, minimum, exact)]
    cost = sum(p * t for p, t in zip(plan, seconds_per_epoch))
    for i in sorted(range(len(plan)), key=lambda i: exact[i] - math.floor(exact[i]), reverse=True):
        if plan[i] < left[i] and cost + seconds_per_epoch[i] <= available_s:
            plan[i] += 1
            cost += seconds_per_epoch[i]
    return plan


def package_seconds(validation_pass_s: float, networks: int, selection_share: float = 1.0) -> float:
    """The time to keep after the last epoch: finishing the run and packaging ``networks`` networks, from the
    measured time of one validation pass, with the TTA chosen on ``selection_share`` of the validation images."""
    passes = SELECTION_PASSES_PER_NETWORK * selection_share + CHECK_PASSES_PER_NETWORK
    return FINISH_FIXED_S + passes * networks * validation_pass_s + package_once_seconds(validation_pass_s,
                                                                                         selection_share)


def package_once_seconds(validation_pass_s: float, selection_share: float = 1.0) -> float:
    """The part of ``package_seconds`` spent once per package, whatever the networks: the zoom estimate's fit."""
    return ZOOM_FIT_PASSES * selection_share * validation_pass_s


def tta_selection_share(validation_pass_s: float, networks: int, budget_s: float) -> float:
    """The share of the validation images to choose the TTA on so that packaging takes at most
    ``MAX_PACKAGE_SHARE`` of the budget (1.0 when all of them fit; never under ``MIN_SELECTION_SHARE``)."""
    if package_seconds(validation_pass_s, networks) <= MAX_PACKAGE_SHARE * budget_s:
        return 1.0
    fixed = package_seconds(validation_pass_s, networks, selection_share=0.0)
    share = (MAX_PACKAGE_SHARE * budget_s - fixed) / (
        (SELECTION_PASSES_PER_NETWORK * networks + ZOOM_FIT_PASSES) * validation_pass_s)
    return round(min(1.0, max(MIN_SELECTION_SHARE, share)), 3)


def moved(new: float, old: float) -> bool:
    """``new`` differs from ``old`` by more than ``REPLAN_CHANGE`` of it."""
    return abs(new - old) > REPLAN_CHANGE * old


@dataclass
class StagePlan:
    name: str
    max_epochs: int
    minimum: int
    seconds_per_epoch: float | None = None  # measured; None: not yet (the stage before it stands in)
    planned: int = 0
    done: int = 0  # epochs finished
    finished: bool = False  # the stage is over (a later one has begun): no more epochs for it


@dataclass
class BudgetPlanner:
    """Plans the stages of one member inside ``budget_s`` seconds from now (``clock`` is
    ``time.monotonic``; tests pass a fake one). ``reserve_s`` is kept free for packaging."""

    budget_s: float
    stages: list[StagePlan]
    clock: Callable[[], float] = time.monotonic
    reserve_s: float = MIN_RESERVE_S
    once_s: float = 0.0  # the part of reserve_s that packaging spends once, whatever the members (the zoom fit)
    package_members: int = 1  # networks this member ships (2 for a snapshot pair): packaging scales with it
    selection_share: float = 1.0  # of the validation images `bcsub package` chooses the TTA on
    pass_factor: float = 1.0  # packaging's pass per timed validation pass (MIXED_PRECISION_PASS_FACTOR when mixed)
    path: Path | None = None
    history: list[dict] = field(default_factory=list)
    validation_passes: list[float] = field(default_factory=list)  # this process's timed passes, every stage

    def __post_init__(self) -> None:
        self.start = self.clock()
        for stage in self.stages:
            stage.planned = stage.planned or stage.max_epochs

    @classmethod
    def for_stages(cls, budget_s: float, stages: list[tuple[str, int]], path: Path | None = None,
                   clock: Callable[[], float] = time.monotonic, package_members: int = 1,
                   pass_factor: float = 1.0) -> BudgetPlanner:
        """A planner for (name, max epochs) stages; every stage (polish too) keeps at least one epoch."""
        plans = [StagePlan(name, epochs, minimum=1) for name, epochs in stages]
        planner = cls(budget_s, plans, clock=clock, path=path, package_members=package_members,
                      pass_factor=pass_factor)
        planner._restore()
        return planner

    def stage(self, name: str) -> StagePlan:
        return next(s for s in self.stages if s.name == name)

    def left_s(self) -> float:
        return self.budget_s - (self.clock() - self.start)

    def begin(self, name: str) -> None:
        """Stage ``name`` starts: every stage before it is over, and its unused epochs go to the ones left."""
        for stage in self.stages[:self.stages.index(self.stage(name))]:
            stage.finished = True
        self.save()

    def observe(self, name: str, seconds_per_epoch: float, reason: str, force: bool = False) -> bool:
        """Record a measured epoch time for stage ``name``; re-plan when it is the first measurement, when
        ``force`` (a stage's first whole epoch: validation included), when it differs from the last one by more
        than ``REPLAN_CHANGE``, or when slow drift made the plan stop fitting. True when the plan changed."""
        stage = self.stage(name)
        previous, stage.seconds_per_epoch = stage.seconds_per_epoch, seconds_per_epoch
        if force or previous is None or moved(seconds_per_epoch, previous):
            self.replan(reason)
            return True
        if self.fits():
            return False
        before = [s.planned for s in self.stages]
        self.replan(f"{reason}, drift")
        return [s.planned for s in self.stages] != before

    def _todo(self) -> tuple[list[StagePlan], list[float]]:
        """The stages not over yet and their speeds (an unmeasured stage as slow as the last measured one)."""
        known = [s.seconds_per_epoch for s in self.stages if s.seconds_per_epoch]
        todo = [s for s in self.stages if not s.finished]
        return todo, [s.seconds_per_epoch or known[-1] for s in todo] if known else []

    def fits(self) -> bool:
        """The epochs still planned end inside the budget to within half an epoch, without leaving one and a
        half epochs' time unused (the margins keep a steady run from re-planning back and forth)."""
        todo, speeds = self._todo()
        if not speeds:
            return True
        slack = self.left_s() - self.reserve_s - sum((s.planned - s.done) * t for s, t in zip(todo, speeds))
        room = any(s.planned < s.max_epochs for s in todo)
        return slack >= -0.5 * max(speeds) and not (room and slack > 1.5 * max(speeds))

    def set_reserve(self, seconds: float, once_s: float = 0.0) -> bool:
        """Keep ``seconds`` for packaging (``once_s`` of them spent once per package, not per member); re-plan
        when that moves by more than ``REPLAN_CHANGE``."""
        self.once_s = min(once_s, seconds)
        previous, self.reserve_s = self.reserve_s, max(MIN_RESERVE_S, seconds)
        if not moved(self.reserve_s, previous):
            return False
        self.replan("packaging time measured")
        return True

    def validation_pass_timed(self, seconds: float) -> bool:
        """Size the packaging reserve (and the TTA selection share) from one validation pass's time (times
        ``pass_factor``); re-plan when the reserve moves by more than ``REPLAN_CHANGE``."""
        seconds *= self.pass_factor
        self.selection_share = tta_selection_share(seconds, self.package_members, self.budget_s)
        return self.set_reserve(package_seconds(seconds, self.package_members, self.selection_share),
                                package_once_seconds(seconds, self.selection_share))

    def replan(self, reason: str) -> None:
        """Choose the epochs still to run for every stage from the time left and the measured speeds."""
        todo, speeds = self._todo()
        if not speeds:
            return
        epochs = allocate_epochs(self.left_s() - self.reserve_s, [s.max_epochs for s in todo], speeds,
                                 [max(0, s.minimum - s.done) for s in todo], [s.done for s in todo])
        for s, e in zip(todo, epochs):
            s.planned = s.done + e
        self.history.append({"at_s": round(self.clock() - self.start, 1), "reason": reason,
                             "left_s": round(self.left_s(), 1), "reserve_s": round(self.reserve_s, 1),
                             "seconds_per_epoch": {s.name: s.seconds_per_epoch for s in self.stages},
                             "planned": {s.name: s.planned for s in self.stages}})
        self.save()

    def few_epochs(self, name: str) -> bool:
        """Stage ``name`` is the first and is planned to fewer than ``FEW_EPOCHS_SHARE`` of its epochs."""
        stage = self.stage(name)
        return stage is self.stages[0] and stage.planned < FEW_EPOCHS_SHARE * stage.max_epochs

    def first_stage_at(self, seconds_per_epoch: float, validation_s: float | None = None) -> tuple[bool, int]:
        """Whether the first stage would get fewer than ``FEW_EPOCHS_SHARE`` of its epochs at this speed, and
        how many, from the time left now (a scratch plan: this one is not changed). ``validation_s``, a
        validation pass's time, sizes the packaging reserve as the real plan will after its first epoch (without
        it the probe saw 49 epochs where the run then planned 40)."""
        first = self.stages[0]
        scratch = BudgetPlanner.for_stages(self.left_s(), [(s.name, s.max_epochs) for s in self.stages],
                                           clock=self.clock, package_members=self.package_members,
                                           pass_factor=self.pass_factor)
        scratch.reserve_s = self.reserve_s
        if validation_s is not None:
            scratch.validation_pass_timed(validation_s)
        scratch.observe(first.name, seconds_per_epoch, "probe")
        return scratch.few_epochs(first.name), scratch.stage(first.name).planned

    def epoch_done(self, name: str, epochs: int) -> None:
        """Stage ``name`` has finished ``epochs`` epochs (Keras' own count, right after a resume too)."""
        self.stage(name).done = epochs
        self.save()

    def to_json(self) -> dict:
        return {"budget_s": self.budget_s, "used_s": round(self.clock() - self.start, 1),
                "reserve_s": round(self.reserve_s, 1), "package_once_s": round(self.once_s, 1),
                "tta_selection_share": self.selection_share, "pass_factor": self.pass_factor,
                "stages": [{"name": s.name, "max_epochs": s.max_epochs, "planned": s.planned, "done": s.done,
                            "finished": s.finished, "seconds_per_epoch": s.seconds_per_epoch}
                           for s in self.stages],
                "plans": self.history}

    def save(self) -> None:
        if self.path is not None:
            write_json(self.path, self.to_json())

    def _restore(self) -> None:
        """A resumed run continues the saved plan: the time already used counts against the budget."""
        if self.path is None or not self.path.is_file():
            return
        saved = json.loads(self.path.read_text())
        self.start -= float(saved.get("used_s", 0.0))
        self.history = list(saved.get("plans", []))
        self.selection_share = float(saved.get("tta_selection_share", 1.0))
        self.once_s = float(saved.get("package_once_s", 0.0))
        by_name = {s["name"]: s for s in saved.get("stages", [])}
        for stage in self.stages:
            old = by_name.get(stage.name)
            if old:
                stage.planned, stage.done = int(old["planned"]), int(old["done"])
                stage.seconds_per_epoch = old.get("seconds_per_epoch")
                stage.finished = bool(old.get("finished", False))


class BudgetShare:
    """``--time-budget`` shared by the members of a run still to train (each gets an equal part of what is
    left, so a member that finishes early leaves its time to the next). The time a finished member kept for
    packaging its networks stays kept (``keep``): packaging runs once, for every member, after the last (so
    what it spends once, the zoom fit, is kept by the member still training, not again by each finished one)."""

    def __init__(self, minutes: float, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self.end = clock() + minutes * 60 if minutes else None
        self.kept_s = 0.0

    def next(self, members_left: int) -> float | None:
        """Seconds for the next member, or None without a budget."""
        if self.end is None:
            return None
        return max(0.0, self.end - self.clock() - self.kept_s) / max(1, members_left)

    def keep(self, run_dir: Path) -> None:
        """Keep the packaging time that the member trained in ``run_dir`` planned for (its ``plan.json``)."""
        plan = run_dir / PLAN_FILE
        if self.end is not None and plan.is_file():
            saved = json.loads(plan.read_text())
            self.kept_s += float(saved.get("reserve_s", 0.0)) - float(saved.get("package_once_s", 0.0))


class PlannedCosineDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up from a tenth of ``peak`` over ``warmup_steps``, then cosine decay to ``alpha * peak``
    at ``total_steps`` — a variable, so a re-plan can lengthen or shorten the schedule while it runs."""

    def __init__(self, peak: float, total_steps: int, warmup_steps: int = 0, alpha: float = 0.01):
        self.peak, self.warmup_steps, self.alpha = float(peak), int(warmup_steps), float(alpha)
        self.total_steps = tf.Variable(float(max(1, total_steps)), trainable=False, dtype=tf.float32)

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        warmup = tf.constant(float(self.warmup_steps))
        start = self.peak / 10 if self.warmup_steps else self.peak
        ramp = start + (self.peak - start) * step / tf.maximum(warmup, 1.0)
        progress = tf.clip_by_value((step - warmup) / tf.maximum(self.total_steps - warmup, 1.0), 0.0, 1.0)
        cosine = self.peak * (self.alpha + (1 - self.alpha) * 0.5 * (1 + tf.cos(math.pi * progress)))
        return tf.where(step < warmup, ramp, cosine)

    def set_total_steps(self, steps: int) -> None:
        self.total_steps.assign(float(max(1, steps)))

    def get_config(self) -> dict:
        return {"peak": self.peak, "total_steps": float(self.total_steps.numpy()),
                "warmup_steps": self.warmup_steps, "alpha": self.alpha}


class StepTimer(keras.callbacks.Callback):
    """Times a training step over batches ``TIMED_BATCHES`` of each epoch (after the warm-up and tracing):
    ``step_s``, None until they have run."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        super().__init__()
        self.clock = clock
        self.batch_start: float | None = None
        self.step_s: float | None = None

    def on_epoch_begin(self, epoch, logs=None):
        self.batch_start, self.step_s = None, None

    def on_train_batch_begin(self, batch, logs=None):
        if batch == TIMED_BATCHES[0]:
            self.batch_start = self.clock()

    def on_train_batch_end(self, batch, logs=None):
        if batch == TIMED_BATCHES[1] - 1 and self.batch_start is not None:
            self.step_s = (self.clock() - self.batch_start) / (TIMED_BATCHES[1] - TIMED_BATCHES[0])


def probe_seconds_per_epoch(model: keras.Model, compile_stage: Callable[[], object], train_ds, steps: int) -> float:
    """An epoch's time at the real training step (augmentation, XLA choice and all), from ``TIMED_BATCHES``
    steps after compiling the stage with ``compile_stage()``; the network's weights are left as they were."""
    weights = model.get_weights()
    compile_stage()
    timer = StepTimer()
    model.fit(train_ds, steps_per_epoch=TIMED_BATCHES[1], epochs=1, verbose=0, shuffle=False, callbacks=[timer])
    model.set_weights(weights)
    return float(timer.step_s) * steps


class FollowPlan(StepTimer):
    """Runs one stage by the plan: times the first steps (augmentation included) and every epoch, feeds
    the planner, keeps the schedule's length equal to the planned epochs, and stops at the plan's end."""

    def __init__(self, planner: BudgetPlanner, stage: str, steps: int, schedule: PlannedCosineDecay,
                 log: Callable[[str], None] = print, few_epochs_hint: str | None = None):
        super().__init__(planner.clock)
        self.planner, self.stage_name, self.steps, self.schedule, self.log = planner, stage, steps, schedule, log
        self.few_epochs_hint = few_epochs_hint  # logged once when the first stage gets few of its epochs

    def on_epoch_begin(self, epoch, logs=None):
        super().on_epoch_begin(epoch, logs)
        self.epoch_start = self.clock()

    def on_train_batch_end(self, batch, logs=None):
        super().on_train_batch_end(batch, logs)
        if (batch == TIMED_BATCHES[1] - 1 and self.step_s is not None
                and self.planner.stage(self.stage_name).seconds_per_epoch is None):
            self._observe(self.step_s * self.steps, "first steps")

    def epoch_seconds(self) -> float:
        """This epoch's time as a steady epoch would take it: the first batches (graph tracing in a stage's
        first epoch, 10-20% of it on the CPU preset) are counted at the measured step time."""
        if self.batch_start is None or self.step_s is None:
            return self.clock() - self.epoch_start
        return self.clock() - self.batch_start + TIMED_BATCHES[0] * self.step_s

    def on_test_begin(self, logs=None):
        self.test_start = self.clock()

    def on_test_end(self, logs=None):
        """The reserve follows the median of the last ``RECENT`` validation passes of the member, over its
        stages (the same network on the same images): one slow pass at a stage's start is noise."""
        seconds = self.clock() - self.test_start
        self.stage_passes += 1
        if self.stage_passes == 1:  # a stage's first pass traces its graph
            if self.planner.reserve_s > MIN_RESERVE_S:
                return  # an earlier measurement is better
            timed = [seconds]
        else:
            self.planner.validation_passes.append(seconds)
            timed = self.planner.validation_passes[-RECENT:]
        if self.planner.validation_pass_timed(statistics.median(timed)):
            self._follow("validation pass timed")

    def on_train_begin(self, logs=None):
        self.epoch_times: list[float] = []
        self.stage_passes = 0
        self.planner.begin(self.stage_name)
        stage = self.planner.stage(self.stage_name)
        self.schedule.set_total_steps(stage.planned * self.steps)

    def on_epoch_end(self, epoch, logs=None):
        self.planner.epoch_done(self.stage_name, epoch + 1)
        self.epoch_times.append(self.epoch_seconds())
        self._observe(statistics.median(self.epoch_times[-RECENT:]), f"epoch {epoch + 1}",
                      force=len(self.epoch_times) == 1)
        stage = self.planner.stage(self.stage_name)
        if len(self.epoch_times) == 1 and self.few_epochs_hint and self.planner.few_epochs(self.stage_name):
            self.log(f"hint: this machine fits {stage.planned} of the {stage.max_epochs} epochs of "
                     f"'{stage.name}'; {self.few_epochs_hint}")
        if stage.done >= stage.planned:
            self.model.stop_training = True

    def _observe(self, seconds_per_epoch: float, reason: str, force: bool = False) -> None:
        if self.planner.observe(self.stage_name, seconds_per_epoch, f"{self.stage_name}: {reason}", force):
            self._follow(f"{reason}, {seconds_per_epoch:.0f} s/epoch")

    def _follow(self, why: str) -> None:
        """The plan changed: stretch or shrink this stage's schedule to it and log it."""
        self.schedule.set_total_steps(self.planner.stage(self.stage_name).planned * self.steps)
        plan = ", ".join(f"{s.name} {s.planned}" for s in self.planner.stages)
        self.log(f"time plan ({why}, {self.planner.left_s() / 60:.1f} min left, "
                 f"{self.planner.reserve_s:.0f} s kept for packaging): epochs {plan}")
