"""The typed training configuration that flows from the CLI into training and packaging, and the named
recipes: training presets (``PRESETS``) and augmentation presets (``AUGMENT_PRESETS``). Plain data: it
loads no TensorFlow, so the CLI can build its options from it at once."""

from __future__ import annotations

import json
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path

from train.errors import BcsubError


@dataclass(frozen=True)
class Preset:
    """An augmentation recipe: ``parts`` (``train.augment.PARTS`` names, applied per image in order) and
    ``mix`` (CutMix or MixUp per batch)."""

    doc: str
    parts: tuple[str, ...]
    mix: bool = False


# Every augmentation preset `--augment` accepts (parts: see train/augment.py); adding one is one line here.
V3_PARTS = ("dihedral", "geometry", "randaugment", "colour", "degrade")
AUGMENT_PRESETS: dict[str, Preset] = {
    "none": Preset("no augmentation", ()),
    "v1": Preset("random dihedral (h/v flips + transpose: all 8 flips/90-degree rotations)", ("dihedral",)),
    "v2": Preset("v1 + rotation/zoom/shift (reflect) + colour & stain jitter + exposure + blur + noise + JPEG",
                 ("dihedral", "geometry", "colour", "degrade")),
    "v3": Preset("v2 + RandAugment", V3_PARTS),
    "v3e": Preset("v3 + an erased rectangle in 30% of the images (cutout): the CPU preset's choice until v3ef "
                  "(bench/ablate_shift.py)", (*V3_PARTS, "erase")),
    "v3ef": Preset("v3e + in 15% of the images the values up to a random level mirrored: a solarised image as the "
                   "zip's tone repair hands it to the network (the CPU preset's)", (*V3_PARTS, "dark_fold", "erase")),
    "v3f": Preset("v3 + the dark-range mirror of v3ef in 15% of the images, without erased rectangles: for a zip whose "
                  "erased-box fill undoes cutout at test time", (*V3_PARTS, "dark_fold")),
    "v3efw": Preset("v3ef with wider zoom (x0.7-1.4) and shifts (+-15%): zoom is the calibrated shift's costliest "
                    "part once the zip repairs erased boxes and tone ops (bench/hidden_components.py)",
                    ("dihedral", "geometry_wide", *V3_PARTS[2:], "dark_fold", "erase")),
    "v3t": Preset("v3e + one of solarization, histogram equalisation or greyscale in 30% of the images "
                  "(the RandAugment ops v3 leaves out)", (*V3_PARTS, "tone", "erase")),
    "v3tw": Preset("v3t with wider zoom (x0.7-1.4) and shifts (+-15%): the ablation's best line on the calibrated "
                   "shift, about +0.01 hidden@2 for -0.01 clean",
                   ("dihedral", "geometry_wide", *V3_PARTS[2:], "tone", "erase")),
    "v4": Preset("v3 with the strong RandAugment (3 ops, magnitude 0.5) + overlays of unrelated pictures + "
                 "erased rectangles: trained for the CodaBench hidden set",
                 ("dihedral", "geometry", "randaugment_strong", "colour", "degrade", "overlay", "erase")),
    "hybrid": Preset("v1 + rotation/zoom/shift + AugMix (1/4 of each batch) or RandAugment (3/4) "
                     "+ v2 colour, exposure, blur, noise, JPEG; CutMix or MixUp per batch",
                     ("dihedral", "geometry", "augmix_or_randaugment", "colour", "degrade"), mix=True),
}


# Named starting points; explicit CLI options override them.
PRESETS: dict[str, dict] = {
    # A couple of minutes on 2 CPU cores: the embedded sample, from scratch (used by `make demo`).
    "demo": dict(backbone="resnet-small", weights="none", image_size=64, epochs=20, augment="v2",
                 batch_size=32, learning_rate=3e-3, patience=20),
    # From scratch on 2 CPU cores: the schedule is planned to end, packaging included, within 30 minutes.
    "cpu": dict(backbone="resnet-small", weights="none", image_size=72, epochs=70, augment="v3ef",
                batch_size=64, learning_rate=2e-3, balance=900, patience=0, polish_epochs=8, polish_augment="v1",
                time_budget_minutes=30.0, auto_image_size=True),
    # The winners' recipe on a GPU: pretrained EfficientNetV2S at 224 px, hybrid augmentation, 3 members.
    "gpu": dict(backbone="efficientnetv2s", weights="imagenet", image_size=224, epochs=10,
                fine_tune_epochs=20, fine_tune_layers=120, augment="hybrid", batch_size=64,
                learning_rate=1e-3, fine_tune_learning_rate=1e-4, balance=1500, members=3),
}


XLA_CHOICES = ("auto", "on", "off")
PRECISION_CHOICES = ("auto", "float32", "mixed_float16", "mixed_bfloat16")
# What --preprocessing offers the from-scratch backbones (submission.model.PREPROCESSING has the code).
SCRATCH_PREPROCESSING = ("standardize", "fold")


def option(default=MISSING, help: str = "", flag: str | None = None, path: bool = False):
    """A ``TrainConfig`` field that `bcsub train` offers as an option: ``help`` is its help text, ``flag``
    its name when that is not --FIELD-NAME, ``path`` marks a file or folder (tools/cli.py builds the
    options from these)."""
    return field(default=default, metadata={"help": help, "path": path, **({"flag": flag} if flag else {})})


def _resolved(path: str) -> str:
    return str(Path(path).expanduser().resolve())


@dataclass
class TrainConfig:
    """Everything that defines a training run; saved as ``config.json`` in the run dir."""

    # A field with a help text is a `bcsub train` option, named --FIELD-NAME unless ``flag`` says otherwise.
    data: str = option(help="Training data: AN2DL/PBC96 npz or a class-folder tree", path=True)
    out: str = option(help="Run dir to write (re-running the same command resumes)", path=True)
    val: str | None = option(None, "Validation npz; default: a stratified hold-out", path=True)
    preset: str | None = option(None, f"{' | '.join(PRESETS)}: a recipe; options below override it")
    backbone: str = option("mobilenetv3small", "Backbone name, or a comma list for an ensemble")
    backbones: list[str] = field(default_factory=list)  # from --backbone
    weights: str = option("imagenet", "imagenet | none | PATH to a no-top weights file")
    epochs: int = option(20, "Epochs (stage 1, or the only stage from scratch)")
    fine_tune_epochs: int = option(10, "Stage-2 epochs (pretrained only)")
    fine_tune_layers: int = option(40, "Top backbone layers unfrozen in stage 2")
    image_size: int | None = option(None, "Resize inside the model to this size")
    auto_image_size: bool = option(
        False, "With --time-budget, from scratch: train at 56 px when a probe of the first steps says the budget fits "
        "under 75% of the main epochs at --image-size (on in --preset cpu unless --image-size is given)")
    preprocessing: str | None = option(
        None, "From scratch: how the network sees pixels: standardize | fold (solarize-proof); default: the backbone's")
    batch_size: int = option(64, "Batch size per replica")
    learning_rate: float = option(1e-3, "Peak learning rate (stage 1)")
    fine_tune_learning_rate: float = 1e-4
    warmup_epochs: int = 1
    dropout: float = 0.3
    l2: float = 1e-4
    fine_tune_l2: float = 5e-4
    weight_decay: float = 1e-4
    label_smoothing: float = 0.1
    augment: str = option("v2", " | ".join(AUGMENT_PRESETS))
    balance: int = option(0, "Oversample every class to N images per epoch")
    class_weights: bool = option(False, "Weight the loss by inverse class frequency")
    prior_correction: bool = option(
        True, "After --balance/--class-weights, shift the logits back to the training class mix")
    polish_epochs: int = option(0, "Extra last epochs with the milder --polish-augment at a lower rate (0: off)")
    polish_augment: str = option("v1", "Augmentation preset of the polish epochs")
    polish_learning_rate_factor: float = option(
        0.15, "Polish peak learning rate as a fraction of the previous stage's", flag="--polish-lr-factor")
    snapshot_ensemble: bool = option(
        True, "With --polish-epochs, ship the weights from before them too (a 2-member ensemble)")
    ema_momentum: float = option(0.0, "Keep an exponential moving average of the weights (0: off, e.g. 0.99)")
    members: int = option(1, "Ensemble members (different seeds)")
    folds: int = option(0, "Stratified k-fold members (saves out-of-fold predictions)")
    fold: int | None = option(None, "With --folds K: train fold I (0..K-1) only, e.g. one fold per machine")
    limit: int = option(0, "Use about N images (stratified) for quick runs")
    seed: int = option(0, "Random seed")
    val_fraction: float = 0.15
    patience: int = option(5, "Early-stopping patience in epochs (0: off; the best epoch is kept anyway)")
    time_budget_minutes: float = option(
        0.0, "Plan every stage's epochs so training and packaging end within this many minutes (0: no limit)",
        flag="--time-budget")
    clean: bool = option(False, "Remove outliers and duplicates first (see inspect)")
    multi_worker: bool = option(False, "MultiWorkerMirroredStrategy from TF_CONFIG")
    xla: str = option("auto", "auto | on | off: XLA-compile the training step (auto: for stages of 500+ steps on the "
                      "CPU without a distribution strategy, times both steps first and keeps the faster; else Keras' "
                      "choice)")
    precision: str = option("auto", "auto | float32 | mixed_float16 | mixed_bfloat16: the numbers the training step "
                            "computes in (weights stay float32; the zip computes in float32). auto: mixed_float16 on "
                            "a GPU, mixed_bfloat16 on a CPU with bfloat16 instructions (AMX or AVX512-BF16: 1.2x "
                            "as fast), else float32")

    def __post_init__(self) -> None:
        from submission.model import BACKBONES  # here, not at the top: loading it loads TensorFlow

        self.backbones = list(self.backbones) or [b.strip() for b in self.backbone.split(",")]
        self.backbone = self.backbones[0]
        for name in self.backbones:
            if name not in BACKBONES:
                raise BcsubError(f"unknown backbone '{name}'; choose one of: {', '.join(BACKBONES)}")
        if self.epochs < 1 or self.batch_size < 1:
            raise BcsubError("--epochs and --batch-size must be at least 1")
        if self.members < 1 or self.folds == 1 or self.folds < 0:
            raise BcsubError("--members must be >= 1 and --folds 0 (off) or >= 2")
        if self.fold is not None and not 0 <= self.fold < max(self.folds, 1):
            raise BcsubError(f"--fold {self.fold}: needs --folds K and a fold from 0 to K-1 "
                             f"(--folds is {self.folds})")
        if self.preprocessing is not None:
            self._check_preprocessing()
        if self.precision not in PRECISION_CHOICES:
            raise BcsubError(f"--precision {self.precision!r}: choose one of: {', '.join(PRECISION_CHOICES)}")
        if self.xla not in XLA_CHOICES:
            raise BcsubError(f"--xla {self.xla!r}: choose one of: {', '.join(XLA_CHOICES)}")
        for option, preset in (("--augment", self.augment), ("--polish-augment", self.polish_augment)):
            if preset not in AUGMENT_PRESETS:
                raise BcsubError(f"{option} {preset!r}: unknown preset; choose one of: {', '.join(AUGMENT_PRESETS)}")
        if self.polish_epochs < 0 or not 0.0 < self.polish_learning_rate_factor <= 1.0:
            raise BcsubError("--polish-epochs must be >= 0 (0: off) and --polish-lr-factor in (0, 1]")
        if not 0.0 <= self.ema_momentum < 1.0:
            raise BcsubError("--ema-momentum must be in [0, 1): 0 turns it off, 0.99 is typical")
        # Stored resolved: a run dir keeps naming the same files from any working directory.
        self.data, self.out = _resolved(self.data), _resolved(self.out)
        self.val = _resolved(self.val) if self.val else None
        if self.weights.lower() not in ("imagenet", "none"):
            self.weights = _resolved(self.weights)

    def _check_preprocessing(self) -> None:
        from submission.model import BACKBONES

        if self.preprocessing not in SCRATCH_PREPROCESSING:
            raise BcsubError(f"--preprocessing {self.preprocessing!r}: choose one of: "
                             f"{', '.join(SCRATCH_PREPROCESSING)}")
        fixed = [name for name in self.backbones if BACKBONES[name].application]
        if fixed:
            raise BcsubError(f"--preprocessing is for the from-scratch backbones; {', '.join(fixed)} keeps the "
                             "preprocessing its keras.applications weights were trained with: leave it out")

    @classmethod
    def from_options(cls, preset: str | None = None, **options) -> TrainConfig:
        """Build from a preset's defaults overridden by the options that were given (not None)."""
        values: dict = {}
        if preset:
            if preset not in PRESETS:
                raise BcsubError(f"unknown preset '{preset}'; choose one of: {', '.join(PRESETS)}")
            values.update(PRESETS[preset])
        given = {k: v for k, v in options.items() if v is not None}
        if "image_size" in given:  # a side asked for is kept, unless --auto-image-size is asked for too
            values["auto_image_size"] = False
        values.update(given)
        return cls(preset=preset, **values)

    @property
    def corrects_prior(self) -> bool:
        """Balancing (or class weights) teaches a uniform class prior; correct it back at inference."""
        return self.prior_correction and bool(self.balance or self.class_weights)

    @property
    def pretrained(self) -> bool:
        return self.weights.lower() != "none"

    def model_spec(self, backbone: str | None = None) -> dict:
        """What ``submission.model.build_network`` needs to rebuild the network."""
        from submission.model import BACKBONES, NUM_CLASSES

        name = backbone or self.backbone
        return {
            "backbone": name,
            "image_size": self.image_size or BACKBONES[name].input_size,
            "num_classes": NUM_CLASSES,
            "dropout": self.dropout,
            "preprocessing": self.preprocessing or BACKBONES[name].preprocessing,
        }

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def load(cls, path: str | Path) -> TrainConfig:
        data = json.loads(Path(path).read_text())
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})
