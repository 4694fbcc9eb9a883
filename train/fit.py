"""Fit one network into a run dir, resumably, in the order it happens (as ``MemberFit.run`` reads):
``setup`` (strategy, seed, precision, spec, datasets, network), ``train`` (the stages: two-stage
fine-tuning or one stage from scratch, then optional polish epochs, within the time budget), ``finish``
(the prior correction, then the run dir's files, see ``train/runs.py``)."""

from __future__ import annotations

import functools
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from submission.model import IMAGE_SHAPE, network_input_size
from train.atomic import read_json, write_json
from train.backbones import build_pretrained_network, set_backbone_trainable, set_head_l2
from train.callbacks import AgreeToStop, LearningRateLog, PersistentCheckpoint, tensorboard_callbacks
from train.config import TrainConfig
from train.data import Dataset
from train.devices import POLICIES, agreed_precision, cpu_flags, cpu_has_bf16, gpu_count, training_precision
from train.keras_internals import AtomicBackupAndRestore, ChiefRestore, fix_multi_worker_fit
from train.multiworker import make_multi_worker_strategy, read_tf_config
from train.pipeline import distributed_training_dataset, evaluation_dataset, prior_logit_offsets, training_dataset
from train.planner import (
    MIXED_PRECISION_PASS_FACTOR,
    PLAN_FILE,
    BudgetPlanner,
    FollowPlan,
    PlannedCosineDecay,
    probe_seconds_per_epoch,
)
from train.runs import (
    HISTORY_FILE,
    SIDE_FILE,
    TENSORBOARD_DIR,
    finish_run,
    finish_snapshot_run,
    is_complete_run,
    read_metrics,
)
from train.side import (
    auto_side_applies,
    choose_side,
    side_message,
    smaller_input_hint,
)
from train.xla import XLA_FILE, choose_xla, fastest_epoch_s, xla_for, xla_message, xla_probe_applies

PRECISION_FILE = "precision.json"  # the dtype policy a run trained in, and why


def fit_member(cfg: TrainConfig, train: Dataset, val: Dataset, out: Path, backbone: str | None = None,
               seed: int | None = None, budget_s: float | None = None) -> dict:
    """Train one network into ``out`` and return its validation metrics. Re-running resumes.
    ``budget_s``: this member's share of ``--time-budget`` (default: all of it)."""
    out.mkdir(parents=True, exist_ok=True)
    if is_complete_run(out):
        return read_metrics(out)
    if budget_s is None and cfg.time_budget_minutes:
        budget_s = cfg.time_budget_minutes * 60
    return MemberFit(cfg, train, val, out, backbone or cfg.backbone, cfg.seed if seed is None else seed,
                     budget_s).run()


class MemberFit:
    """The training of one network into ``out``; ``run`` is the recipe."""

    def __init__(self, cfg: TrainConfig, train: Dataset, val: Dataset, out: Path, backbone: str, seed: int,
                 budget_s: float | None = None):
        self.cfg, self.train_data, self.val_data, self.out = cfg, train, val, out
        self.backbone, self.seed, self.budget_s = backbone, seed, budget_s
        self._batches: dict[str, tuple[tf.data.Dataset, int]] = {}

    def run(self) -> dict:
        previous = keras.mixed_precision.global_policy()
        try:
            self.setup()
            snapshots, seconds = self.train()
            return self.finish(snapshots, seconds)
        finally:  # the run's --precision policy is its own, also when it stops early
            keras.mixed_precision.set_global_policy(previous)

    def setup(self) -> None:
        """Devices and numerics first, then the spec, the validation batches and the network."""
        cfg = self.cfg
        self.strategy = make_strategy(cfg.multi_worker)  # first: multi-worker set-up must precede other TF work
        keras.utils.set_random_seed(self.seed)
        set_precision(cfg.precision, self.out,
                      agree=functools.partial(agree_across_workers, self.strategy) if cfg.multi_worker else None)
        self.batch_size = cfg.batch_size * self.strategy.num_replicas_in_sync
        self.use_spec(cfg.model_spec(self.backbone))

    def use_spec(self, spec: dict) -> None:
        """Build the network of ``spec`` and the batches at its training side."""
        self.spec, self.size, self._batches = spec, training_input_size(spec), {}
        self.val_ds = evaluation_dataset(self.val_data.images, self.val_data.labels, self.batch_size, self.size)
        with self.strategy.scope():
            self.model = build_pretrained_network(spec, self.cfg.weights, self.cfg.l2, input_size=self.size,
                                                  images=self.train_data.images[::max(1, len(self.train_data) // 4)])

    def probe_epoch_s(self, stage: Stage, xla: str) -> float:
        """An epoch of ``stage`` at the current side with ``--xla xla`` (weights left as they were)."""
        train_ds, steps = self.train_batches(stage.augment)
        cfg = replace(self.cfg, xla=xla)
        return probe_seconds_per_epoch(
            self.model, lambda: prepare_stage(self.model, stage, cfg, self.strategy, steps), train_ds, steps)

    def time_validation_pass(self) -> float:
        """Seconds of one pass over the validation batches (the second: the first traces)."""
        self.model.evaluate(self.val_ds, verbose=0)
        start = time.perf_counter()
        self.model.evaluate(self.val_ds, verbose=0)
        return time.perf_counter() - start

    def fit_xla_to_machine(self, first: Stage) -> dict | None:
        """``--xla auto`` where it would compile a CPU stage: time the first stage's step XLA-compiled and plain,
        and train every stage with the faster (``train/xla.py``); a resumed run keeps its first choice."""
        steps = self.train_batches(first.augment)[1]
        if not xla_probe_applies(self.cfg.xla, is_distributed(self.cfg, self.strategy), first.epochs * steps):
            return None
        choice = read_json(self.out / XLA_FILE)
        if choice is None:
            choice = choose_xla(network_input_size(self.spec),
                                lambda xla: self.probe_epoch_s(first, "on" if xla else "off"))
            write_json(self.out / XLA_FILE, choice)
            print(xla_message(choice), flush=True)
        self.cfg = replace(self.cfg, xla="on" if choice["xla"] else "off")
        return choice

    def fit_side_to_budget(self, planner: BudgetPlanner, first: Stage, xla_choice: dict | None) -> None:
        """``--auto-image-size``: probe the first stage's speed at the spec's side (or take the XLA probe's) and
        train at the smaller side when the budget fits few of its epochs (``train/side.py``); a resumed run keeps
        its first choice."""
        if not auto_side_applies(self.cfg, self.spec):
            return
        choice = read_json(self.out / SIDE_FILE)
        if choice is None and any(s.done for s in planner.stages):
            return  # resumed from before the probe existed: keep the side it trained at
        if choice is None:
            side = network_input_size(self.spec)
            seconds = fastest_epoch_s(xla_choice) if xla_choice and xla_choice["probed_side"] == side \
                else self.probe_epoch_s(first, self.cfg.xla)
            choice = choose_side(planner, side, seconds, self.time_validation_pass())
            write_json(self.out / SIDE_FILE, choice)
            print(side_message(choice), flush=True)
        keras.utils.set_random_seed(self.seed)
        if choice["image_size"] != network_input_size(self.spec):
            self.use_spec({**self.spec, "image_size": choice["image_size"]})

    def train_batches(self, augment: str) -> tuple[tf.data.Dataset, int]:
        """Augmented training batches for one preset (stages with the same preset share them)."""
        if augment not in self._batches:
            data = self.train_data
            make = functools.partial(distributed_training_dataset, self.strategy) if self.cfg.multi_worker \
                else training_dataset
            self._batches[augment] = make(data.images, data.labels, self.batch_size, augment, self.cfg.balance,
                                          self.seed, self.size)
        return self._batches[augment]

    def sample_batch(self, augment: str, n: int = 8) -> np.ndarray:
        """``n`` training images as the network sees them with ``augment`` (for TensorBoard)."""
        data = self.train_data
        batch, _ = training_dataset(data.images[:n], data.labels[:n], min(n, len(data)), augment, 0, self.seed,
                                    self.size)
        return next(iter(batch))[0].numpy()

    def train(self) -> tuple[dict[str, list], float]:
        """Run every stage; returns the snapshots to ship (empty: the final weights alone) and the seconds."""
        stages = plan_stages(self.cfg)
        planner = None
        if self.budget_s:  # first: the probes count in the budget
            ships = 2 if self.cfg.snapshot_ensemble and any(s.name == "polish" for s in stages) else 1
            mixed = keras.mixed_precision.global_policy().name.startswith("mixed")
            planner = BudgetPlanner.for_stages(self.budget_s, [(s.name, s.epochs) for s in stages],
                                               self.out / PLAN_FILE, package_members=ships,
                                               pass_factor=MIXED_PRECISION_PASS_FACTOR if mixed else 1.0)
        xla_choice = self.fit_xla_to_machine(stages[0])
        if planner is not None:
            self.fit_side_to_budget(planner, stages[0], xla_choice)
        elif xla_choice is not None:
            print(schedule_message(stages, fastest_epoch_s(xla_choice)), flush=True)
        cfg = self.cfg  # with the probed --xla
        class_weight = class_weight_for(self.train_data.labels) if cfg.class_weights else None
        wall_start = time.time()
        snapshots: dict[str, list] = {}
        for stage in stages:
            if stage.name == "polish" and cfg.snapshot_ensemble:
                snapshots["unpolished"] = self.model.get_weights()  # the previous stage's best epoch
            run_stage(self.model, stage, cfg, self.strategy, *self.train_batches(stage.augment), self.val_ds,
                      self.out, class_weight, planner, samples=functools.partial(self.sample_batch, stage.augment),
                      few_epochs_hint=smaller_input_hint(cfg, self.spec))
        if snapshots:
            snapshots["polished"] = self.model.get_weights()
        return snapshots, time.time() - wall_start

    def finish(self, snapshots: dict[str, list], seconds: float) -> dict:
        """Back to float32, add the prior correction to the spec, write the run dir (or one per snapshot)."""
        keras.mixed_precision.set_global_policy("float32")
        spec = self.spec
        if self.cfg.corrects_prior:
            spec = {**spec, "logit_offsets": prior_logit_offsets(self.train_data.labels)}
        if not snapshots:
            return finish_run(self.model, spec, self.val_data, self.out, train_seconds=seconds)
        return finish_snapshot_run(self.model, snapshots, spec, self.val_data, self.out, train_seconds=seconds,
                                   seed=self.seed)


def schedule_message(stages: list[Stage], epoch_s: float) -> str:
    """One line for a run without --time-budget: how long its epochs take at the probed speed (an estimate:
    the first stage's step; a fine-tuning step costs more than a frozen-backbone one)."""
    epochs = sum(stage.epochs for stage in stages)
    hours = epochs * epoch_s / 3600
    return (f"schedule: {epochs} epochs at about {epoch_s:.0f} s each here: about {hours:.1f} h for this member"
            + ("; --time-budget MIN plans the epochs to fit MIN minutes" if hours > 1 else ""))


@dataclass
class Stage:
    """One call of ``model.fit`` with its own trainable layers and learning-rate schedule."""

    name: str
    epochs: int
    learning_rate: float
    trainable_top: int | None  # 0: backbone frozen; N: top N layers; None: everything
    l2: float
    augment: str
    warmup_epochs: int = 1


def plan_stages(cfg: TrainConfig) -> list[Stage]:
    """Pretrained: frozen backbone, then the top layers at a lower rate. Scratch: one full stage.
    Either way, ``--polish-epochs`` adds a last stage with milder augmentation at a lower rate."""
    if not cfg.pretrained:
        stages = [Stage("full", cfg.epochs, cfg.learning_rate, None, cfg.l2, cfg.augment, cfg.warmup_epochs)]
    else:
        stages = [Stage("head", cfg.epochs, cfg.learning_rate, 0, cfg.l2, cfg.augment, cfg.warmup_epochs)]
        if cfg.fine_tune_epochs > 0:
            stages.append(Stage("fine_tune", cfg.fine_tune_epochs, cfg.fine_tune_learning_rate,
                                cfg.fine_tune_layers, cfg.fine_tune_l2, cfg.augment, cfg.warmup_epochs))
    if cfg.polish_epochs > 0:
        last = stages[-1]
        stages.append(Stage("polish", cfg.polish_epochs, last.learning_rate * cfg.polish_learning_rate_factor,
                            last.trainable_top, last.l2, cfg.polish_augment, warmup_epochs=0))
    return stages


@functools.cache
def make_strategy(multi_worker: bool) -> tf.distribute.Strategy:
    """MultiWorkerMirrored from TF_CONFIG when asked, Mirrored on several GPUs, else the default."""
    if multi_worker:
        return make_multi_worker_strategy()
    if gpu_count() > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def agree_across_workers(strategy: tf.distribute.Strategy, policy: str) -> str:
    """The policy every worker trains with (``train/devices.agreed_precision``): one all-reduce of their votes."""
    votes = strategy.reduce("SUM", tf.one_hot(POLICIES.index(policy), len(POLICIES)), axis=None)
    return agreed_precision(np.asarray(votes))


def set_precision(choice: str, out: Path, agree: Callable[[str], str] | None = None) -> None:
    """Set the global dtype policy ``--precision choice`` trains with (``train/devices.training_precision``) and
    record it in ``precision.json`` in ``out``; ``finish`` sets float32 back before the network is saved.
    ``agree(policy)``: a multi-worker run's agreement, for ``auto``, which each worker resolves on its own devices."""
    gpus, flags = gpu_count(), cpu_flags()  # asked once: TensorFlow's device list and /proc/cpuinfo
    bf16_cpu = cpu_has_bf16(flags)
    policy = own = training_precision(choice, gpus, flags)
    voted = agree is not None and choice == "auto"
    if voted:
        policy = agree(own)
        if policy != own:
            print(f"precision: {policy}, as every worker can (this one alone would train in {own}; "
                  "--precision picks one for all)", flush=True)
    keras.mixed_precision.set_global_policy(policy)
    if policy == "mixed_bfloat16" and not gpus and not bf16_cpu:
        print("warning: --precision mixed_bfloat16 on a CPU without bfloat16 instructions (AMX or AVX512-BF16): "
              "emulated, it trains slower than float32 here", file=sys.stderr, flush=True)
    elif choice == "auto" and policy == "mixed_bfloat16":
        print("precision: mixed_bfloat16 (this CPU has bfloat16 instructions; --precision float32 to train in "
              "float32); the packaged network computes in float32", flush=True)
    record = {"choice": choice, "policy": policy, "gpus": gpus, "cpu_bf16_instructions": bf16_cpu}
    write_json(out / PRECISION_FILE, {**record, "agreed_by_workers": True} if voted else record)


def compile_for(model: keras.Model, stage: Stage, cfg: TrainConfig, steps: int,
                jit_compile: bool | str = "auto") -> PlannedCosineDecay:
    """AdamW on a cosine schedule (with linear warm-up from a tenth of the rate), label smoothing.
    Returns the schedule: a time plan may change its length while the stage runs."""
    total = max(1, stage.epochs * steps)
    schedule = PlannedCosineDecay(stage.learning_rate, total, warmup_steps=min(total // 2, stage.warmup_epochs * steps))
    model.compile(
        optimizer=keras.optimizers.AdamW(schedule, weight_decay=cfg.weight_decay, use_ema=cfg.ema_momentum > 0,
                                         ema_momentum=cfg.ema_momentum),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=cfg.label_smoothing),
        metrics=["accuracy"],
        jit_compile=jit_compile,
    )
    if jit_compile is True:  # XLA for the training step only: validation batches change size (the last one is
        model.make_train_function()  # smaller) and ran up to 2x slower under XLA on the CPU (measured)
        model.jit_compile = False
    return schedule


def class_weight_for(labels: np.ndarray) -> dict[int, float]:
    """Inverse-frequency loss weights per class (``--class-weights``)."""
    from sklearn.utils.class_weight import compute_class_weight

    classes = np.unique(labels)
    weights = compute_class_weight("balanced", classes=classes, y=labels)
    return {int(c): float(w) for c, w in zip(classes, weights)}


def is_distributed(cfg: TrainConfig, strategy: tf.distribute.Strategy) -> bool:
    """Several workers or replicas share the training step."""
    return cfg.multi_worker or strategy.num_replicas_in_sync > 1


def prepare_stage(model, stage: Stage, cfg: TrainConfig, strategy, steps: int) -> PlannedCosineDecay:
    """The stage's trainable layers and head L2, then its compiled optimizer; returns its schedule."""
    set_backbone_trainable(model, stage.trainable_top)
    set_head_l2(model, stage.l2)
    jit_compile = xla_for(cfg.xla, distributed=is_distributed(cfg, strategy),
                          steps=stage.epochs * steps)
    with strategy.scope():
        return compile_for(model, stage, cfg, steps, jit_compile)


def run_stage(model, stage: Stage, cfg: TrainConfig, strategy, train_ds, steps: int, val_ds, out: Path,
              class_weight: dict | None, planner: BudgetPlanner | None = None,
              samples=None, few_epochs_hint: str | None = None) -> None:
    """One ``model.fit`` with its backup, history (``history.csv`` and TensorBoard under ``tb/STAGE``;
    ``samples()`` gives the augmented images shown there), checkpoint and stopping callbacks; ends on the
    stage's best epoch. A stage marked done is only reloaded."""
    best = out / f".{stage.name}.best.weights.h5"
    done = out / f".{stage.name}.done"
    if done.exists() and best.exists():
        model.load_weights(str(best))
        return
    schedule = prepare_stage(model, stage, cfg, strategy, steps)
    callbacks = [
        AtomicBackupAndRestore(str(out / ".backup" / stage.name)),  # first: raw weights + EMA state
        *([ChiefRestore(strategy, read_tf_config().is_chief)] if cfg.multi_worker else []),
        LearningRateLog(),  # before the loggers
        keras.callbacks.CSVLogger(str(out / HISTORY_FILE), append=True),
        *tensorboard_callbacks(out / TENSORBOARD_DIR / stage.name, samples),
    ]
    if cfg.ema_momentum:  # validation and the best checkpoint see the averaged weights
        callbacks.append(keras.callbacks.SwapEMAWeights(swap_on_epoch=True))
    callbacks.append(PersistentCheckpoint(best))
    if cfg.patience:
        callbacks.append(keras.callbacks.EarlyStopping(monitor="val_accuracy", mode="max", patience=cfg.patience))
    if planner is not None:
        callbacks.append(FollowPlan(planner, stage.name, steps, schedule, few_epochs_hint=few_epochs_hint))
    if cfg.multi_worker:
        fix_multi_worker_fit(model)
        callbacks.append(AgreeToStop(strategy))  # last: after every callback that may stop
    model.fit(train_ds, steps_per_epoch=steps, epochs=stage.epochs, validation_data=val_ds,
              callbacks=callbacks, class_weight=class_weight, shuffle=False, verbose=1 if sys.stdout.isatty() else 2)
    model.load_weights(str(best))
    done.touch()


def training_input_size(spec: dict) -> int | None:
    """Train on images already shrunk to the network's input side when it is below 96 px (cheaper
    augmentation, same weights); None (the 96 px input) otherwise."""
    size = network_input_size(spec)
    return size if size < IMAGE_SHAPE[0] else None
