"""The run configurations: pre-training (RunConfig) and fine-tuning (FinetuneConfig), checked together.

    RunConfig
      frontend  FrontendConfig   (audio/frontend.py)  what the audio becomes
      model     ModelConfig      (model/presets.py)   encoder + decoder
      masking   MaskingConfig    (masking.py)         which patches are hidden
      train     TrainConfig      (here)               optimisation, schedule, data, checkpoints

    FinetuneConfig                                    (front-end and encoder: the checkpoint's)
      model     ClassifierConfig (model/classifier.py)  pooling, input width, drop-path, Patchout
      augment   AugmentConfig    (here)                 mixup, SpecAugment, gain (training/augment.py)
      train     TrainConfig      (here)                 with fine-tuning defaults
      layer_decay, label_smoothing, loss, sampler, probe, valid_fraction, scale, min_steps, lp_ft, prefer

    ProbeConfig, GRIDS (here)  the frozen-encoder probe grids (evaluation/probe.py)

The configs of training and evaluation live here, below the code they configure, because a
checkpoint (checkpoint/loader.py, below training and evaluation) reads them back.

A run config comes from, in order: the defaults, a YAML file or built-in config (`--config`),
the named CLI flags, then `--set section.field=value`; each layer overrides fields of the one
before (`compose`). The whole typed config is written into the run folder and into every
checkpoint and read back with `RunConfig.from_dict`. `validate()` checks the parts against each
other at start-up, before anything is written, so that a mismatch is one clear message instead
of a failure inside the first training step.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

import torch
import yaml

from .audio.frontend import FrontendConfig
from .masking import MaskingConfig
from .model.classifier import ClassifierConfig
from .model.presets import ModelConfig
from .precision import native_bf16
from .schema import ConfigError, from_dict, key_value, non_negative, one_of, positive, to_dict


@dataclass
class TrainConfig:
    """Optimisation and bookkeeping of a training run (pre-training or fine-tuning)."""
    data: str | None = None         # audio folder or prepared corpus; None = built-in corpus
    builtin_clips: int = 2000       # size of the built-in corpus when `data` is None
    epochs: int = 100
    warmup_epochs: float = 10
    batch_size: int = 512           # global batch per optimizer step
    micro_batch: int | None = None  # per process per forward; default batch_size / world
    blr: float = 3e-4               # lr = blr * batch_size / 256
    min_lr: float = 0.0
    weight_decay: float = 0.05
    # Weight decay on the learnt tokens ([CLS], mask token) too, as the official pre-training
    # (timm's add_weight_decay without a skip list); false: tokens undecayed, as MAE's fine-tuning.
    # False when absent: every run written before the field existed kept its tokens undecayed.
    decay_tokens: bool = False
    betas: tuple[float, float] = (0.9, 0.95)
    clip_grad: float | None = None
    bf16: bool = False
    compile: bool = False
    seed: int = 0
    workers: int = 2                # data-loading processes per rank
    checkpoint_every: int = 500     # optimizer steps
    keep_checkpoints: int = 2
    log_every: int = 10
    dist_timeout: float = 1800      # seconds a process waits for the others (rendezvous, collectives)
    snapshot_every: int = 0         # optimizer steps between reconstruction snapshots (pre-training); 0 = none

    def validate(self) -> "TrainConfig":
        for name in ("epochs", "batch_size", "blr", "checkpoint_every", "keep_checkpoints", "log_every",
                     "builtin_clips", "dist_timeout"):
            positive(f"train.{name}", getattr(self, name))
        positive("train.micro_batch", self.micro_batch, allow_none=True)
        positive("train.clip_grad", self.clip_grad, allow_none=True)
        for name in ("warmup_epochs", "min_lr", "weight_decay", "workers", "seed", "snapshot_every"):
            non_negative(f"train.{name}", getattr(self, name))
        if self.min_lr > self.blr * self.batch_size / 256:
            raise ConfigError(f"train.min_lr: {self.min_lr} is above the peak lr blr * batch_size / 256 = "
                              f"{self.blr * self.batch_size / 256:g}")
        if not all(0.0 <= b < 1.0 for b in self.betas):
            raise ConfigError(f"train.betas: {list(self.betas)}, expected two numbers in [0, 1)")
        if self.micro_batch is not None and self.batch_size % self.micro_batch:
            raise ConfigError(f"train.micro_batch: {self.micro_batch} does not divide train.batch_size = "
                              f"{self.batch_size}")
        return self


def pretrain_train() -> TrainConfig:
    """The pre-training defaults: the official MSM-MAE and MaskSpec optimiser groups, which decay
    the [CLS] and mask tokens like the weight matrices."""
    return TrainConfig(decay_tokens=True)


@dataclass
class RunConfig:
    """A pre-training run: what every checkpoint of it stores under model/frontend/masking/train."""
    model: ModelConfig = field(default_factory=ModelConfig)
    frontend: FrontendConfig = field(default_factory=FrontendConfig)
    masking: MaskingConfig = field(default_factory=MaskingConfig)
    train: TrainConfig = field(default_factory=pretrain_train)

    def validate(self) -> "RunConfig":
        """Check the parts against each other; raise ConfigError naming the fields."""
        self.model.validate()
        check_frontend_fits(self.frontend, self.model)
        self.masking.validate(self.model.encoder.grid)
        self.train.validate()
        return self

    def to_dict(self) -> dict:
        return to_dict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "RunConfig":
        return from_dict(cls, d)


MIXUP_MODES = ("none", "waveform", "spectrogram", "both")


@dataclass
class AugmentConfig:
    """Training-time augmentation; the defaults are MaskSpec's (widths as shares of the input)."""
    mixup: str = "waveform"         # none | waveform (means removed) | spectrogram | both
    mixup_alpha: float = 0.3        # lambda ~ Beta(a, a), then lambda = max(lambda, 1 - lambda)
    freq_mask: float = 0.375        # widest frequency mask, share of the mel bins (MaskSpec: 48 of 128)
    time_mask: float = 0.192        # widest time mask, share of the input frames (MaskSpec: 192 of 1000)
    gain_db: float = 7.0            # random gain, uniform in +-gain_db

    def validate(self) -> "AugmentConfig":
        one_of("augment.mixup", self.mixup, MIXUP_MODES)
        if self.mixup != "none" and not self.mixup_alpha > 0:
            raise ConfigError(f"augment.mixup_alpha: expected a positive number with mixup "
                              f"{self.mixup!r}, got {self.mixup_alpha}")
        for name in ("freq_mask", "time_mask"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"augment.{name}: {value}, expected a share of the input in [0, 1]")
        non_negative("augment.gain_db", self.gain_db)
        return self


def finetune_train() -> TrainConfig:
    """MaskSpec's fine-tuning schedule: 80 epochs, 5 of warm-up, blr 1e-3 down to 1e-6, AdamW betas
    (0.9, 0.999); [CLS] undecayed, as in MAE's and MaskSpec's fine-tuning (`no_weight_decay`)."""
    return TrainConfig(epochs=80, warmup_epochs=5, batch_size=64, blr=1e-3, min_lr=1e-6, betas=(0.9, 0.999),
                       keep_checkpoints=1, decay_tokens=False)


# TrainConfig fields that say how steps are computed, not what they compute: a resumed run (pre-
# training or fine-tuning) may change them; its model, data order and schedule stay its own.
RESUME_MAY_DIFFER = ("workers", "micro_batch", "bf16", "compile", "checkpoint_every", "keep_checkpoints",
                     "log_every", "dist_timeout", "snapshot_every")

LOSSES = ("auto", "ce", "bce")
SAMPLERS = ("auto", "uniform", "balanced")
TASK_KINDS = ("multiclass", "multilabel", "binary")
SCALES = ("auto", "none")
FULL_AUGMENT_CLIPS = 2000  # scale auto: training clips from which augmentation has its full strength
PREFER = ("best", "finetuned", "probe")
# Fields added to FinetuneConfig since fine-tuning runs were first written, with the values those
# runs trained with: a stored config.json without them reads as its own recipe (FinetuneConfig.stored).
ADDED_SINCE = {"scale": "none", "lp_ft": False, "prefer": "finetuned", "model": {"pool_padding": True}}

# The frozen-encoder probes (evaluation/probe.py); fine-tuning names a grid for its comparison.
PROBE_HEADS = ("linear", "mlp1", "mlp2")
HEAR_LRS = (3.2e-3, 1e-3, 3.2e-4, 1e-4)
PROBE_PRECISIONS = ("auto", "fp32", "bf16")


@dataclass
class ProbeConfig:
    """The grid (heads x lrs) and its training protocol. Defaults: HEAR 2021 plus a linear head."""
    heads: tuple[str, ...] = PROBE_HEADS
    lrs: tuple[float, ...] = HEAR_LRS
    hidden: int = 1024
    dropout: float = 0.1
    patience: int = 20           # epochs without a strict improvement of the validation metric
    max_epochs: int = 500
    batch_size: int = 1024
    seed: int = 0
    precision: str = "auto"      # 'fp32', 'bf16' (autocast the matrix products), 'auto': bf16 where native

    def __post_init__(self):
        self.heads, self.lrs = tuple(self.heads), tuple(float(lr) for lr in self.lrs)
        bad = [h for h in self.heads if h not in PROBE_HEADS]
        if bad or not self.heads or not self.lrs:
            raise ConfigError(f"probe heads {self.heads}, lrs {self.lrs}: need at least one of each, heads from {PROBE_HEADS}")
        if min(self.patience, self.max_epochs, self.batch_size, self.hidden) < 1 or not 0 <= self.dropout < 1:
            raise ConfigError(f"probe hidden {self.hidden}, dropout {self.dropout}, patience {self.patience}, "
                              f"max_epochs {self.max_epochs}, batch_size {self.batch_size}: expected positive "
                              "integers and a dropout in [0, 1)")
        if self.precision not in PROBE_PRECISIONS:
            raise ConfigError(f"probe precision {self.precision!r}: allowed {PROBE_PRECISIONS}")

    def resolved(self, device: str | torch.device) -> "ProbeConfig":
        """This config with precision 'auto' replaced by what runs on `device`."""
        if self.precision != "auto":
            return self
        return replace(self, precision="bf16" if native_bf16(device) else "fp32")

    def grid(self) -> list[tuple[str, float]]:
        return [(h, lr) for h in self.heads for lr in self.lrs]

    def to_dict(self) -> dict:
        return asdict(self)


GRIDS = {
    "full": ProbeConfig(),
    "hear": ProbeConfig(heads=("mlp1", "mlp2")),
    "linear": ProbeConfig(heads=("linear",)),
    "fast": ProbeConfig(heads=("linear", "mlp1"), lrs=(3.2e-3, 1e-3), max_epochs=100, batch_size=256),
}


@dataclass
class FinetuneConfig:
    """A fine-tuning run (recipe: docs/finetuning.md). Front-end, statistics and encoder are the
    starting checkpoint's; what is chosen here is the classifier, augmentation and optimisation."""
    # Pooling per frequency row (the frozen probe's embedding): the mean of every patch averages
    # away where in frequency a sound is, which a few hundred clips cannot learn back.
    model: ClassifierConfig = field(default_factory=lambda: ClassifierConfig(pool="freq"))
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    train: TrainConfig = field(default_factory=finetune_train)
    layer_decay: float = 0.75           # lr of block i (of depth) = lr * layer_decay ** (depth - i)
    label_smoothing: float | None = None  # None: 0.1 with cross-entropy, 0 with binary cross-entropy
    loss: str = "auto"                  # auto: ce for single-label tasks, bce for multi-label ones
    sampler: str = "auto"               # auto: balanced for multi-label tasks, uniform otherwise
    probe: str = "full"                 # frozen-probe grid for the comparison (evaluation/probe.py), or none
    valid_fraction: float = 0.15        # share of train held out when a task has no validation part
    scale: str = "auto"                 # auto: batch and schedule fitted to the task's size (for_size); none
    min_steps: int = 1000               # scale auto: the schedule is stretched to at least this many steps
    lp_ft: bool = True                  # fine-tune from a linear probe's head (LP-FT) instead of a new one
    prefer: str = "best"                # what the run's `latest` names: best on validation, finetuned, probe

    def validate(self) -> "FinetuneConfig":
        self.model.validate()
        self.augment.validate()
        self.train.validate()
        if self.train.data is not None:
            raise ConfigError(f"train.data: {self.train.data!r}; fine-tuning reads its clips from the task, "
                              "leave it unset")
        if not 0.0 < self.layer_decay <= 1.0:
            raise ConfigError(f"layer_decay: {self.layer_decay}, expected a factor in (0, 1] (1: no decay)")
        if self.label_smoothing is not None and not 0.0 <= self.label_smoothing < 1.0:
            raise ConfigError(f"label_smoothing: {self.label_smoothing}, expected a value in [0, 1)")
        one_of("loss", self.loss, LOSSES)
        one_of("sampler", self.sampler, SAMPLERS)
        one_of("scale", self.scale, SCALES)
        one_of("prefer", self.prefer, PREFER)
        non_negative("min_steps", self.min_steps)
        one_of("probe", self.probe, tuple(GRIDS) + ("none",))
        if not 0.0 < self.valid_fraction < 1.0:
            raise ConfigError(f"valid_fraction: {self.valid_fraction}, expected a share in (0, 1)")
        return self

    @classmethod
    def stored(cls, data) -> "FinetuneConfig":
        """A fine-tuning config as a run recorded it: a field the run predates (ADDED_SINCE) takes
        the value the run trained with, not today's default."""
        return cls.from_dict(merge(ADDED_SINCE, data) if isinstance(data, dict) else data)

    def for_task(self, kind: str) -> "FinetuneConfig":
        """The config with its 'auto' choices made for a task of `kind`; ConfigError when an option
        does not fit the task (a single-label loss for a multi-label task)."""
        one_of("task type", kind, TASK_KINDS)
        multilabel = kind == "multilabel"
        if multilabel and self.loss == "ce":
            raise ConfigError("loss: 'ce' (softmax cross-entropy) is a single-label loss, and this task is "
                              "multi-label; use 'bce' or 'auto'")
        loss = self.loss if self.loss != "auto" else "bce" if multilabel else "ce"
        smoothing = self.label_smoothing if self.label_smoothing is not None else 0.1 if loss == "ce" else 0.0
        sampler = self.sampler if self.sampler != "auto" else "balanced" if multilabel else "uniform"
        out = from_dict(FinetuneConfig, self.to_dict())
        out.loss, out.label_smoothing, out.sampler = loss, smoothing, sampler
        return out

    def for_size(self, n_train: int) -> "FinetuneConfig":
        """The config fitted to a task whose smallest fold trains on `n_train` clips (scale auto):
        the batch halved (not below 8) until an epoch has at least 8 steps, then epochs and warm-up
        stretched alike to at least `min_steps` optimizer steps, and mixup alpha and the SpecAugment
        bands scaled by n_train / FULL_AUGMENT_CLIPS (at most 1). A few hundred clips thus get
        enough updates that augmentation does not drown; a task of thousands keeps the recipe as
        given. scale none: unchanged."""
        out = from_dict(FinetuneConfig, self.to_dict())
        if self.scale == "none":
            return out
        t = out.train
        while t.batch_size > 8 and n_train // t.batch_size < 8 and t.batch_size % 2 == 0:
            t.batch_size //= 2
        if t.micro_batch is not None and t.batch_size % t.micro_batch:
            t.micro_batch = math.gcd(t.batch_size, t.micro_batch)
        steps = max(n_train // t.batch_size, 1)
        if t.epochs * steps < self.min_steps:
            epochs = math.ceil(self.min_steps / steps)
            t.epochs, t.warmup_epochs = epochs, t.warmup_epochs * (epochs / t.epochs)
        share, a = min(1.0, n_train / FULL_AUGMENT_CLIPS), out.augment
        a.mixup_alpha, a.freq_mask, a.time_mask = a.mixup_alpha * share, a.freq_mask * share, a.time_mask * share
        return out.validate()

    def to_dict(self) -> dict:
        return to_dict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "FinetuneConfig":
        return from_dict(cls, d)


@dataclass
class FinetuneInfo:
    """The `finetune` section of a fine-tuned checkpoint: what its head predicts and how it was made."""
    labels: list[str] = field(default_factory=list)   # class names, in the order of the head's outputs
    kind: str = "multiclass"                          # multiclass | multilabel | binary
    metric: str = "accuracy"                          # the task's metric (accuracy, mAP, roc_auc)
    config: FinetuneConfig = field(default_factory=FinetuneConfig)  # 'auto' choices made, n_frames set
    task: str = ""                                    # the task's name
    fold: str = ""                                    # the split or fold this model was trained on
    source: dict = field(default_factory=dict)        # the starting checkpoint: path, step, imported

    def validate(self) -> "FinetuneInfo":
        if not self.labels or len(set(self.labels)) != len(self.labels):
            raise ConfigError(f"finetune.labels: expected distinct class names, got {self.labels[:10]}")
        one_of("finetune.kind", self.kind, TASK_KINDS)
        if self.config.model.n_frames is None:
            raise ConfigError("finetune.config.model.n_frames: must be set in a fine-tuned checkpoint")
        return self

    def to_dict(self) -> dict:
        return to_dict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "FinetuneInfo":
        """Read as the checkpoint was made: its config's fields added since take the values it had then."""
        if isinstance(d, dict) and isinstance(d.get("config"), dict):
            d = dict(d, config=merge(ADDED_SINCE, d["config"]))
        return from_dict(cls, d, "finetune")


def check_frontend_fits(frontend: FrontendConfig, model: ModelConfig) -> None:
    """The front-end's mel bins are the encoder's input height."""
    if frontend.n_mels != model.encoder.n_mels:
        raise ConfigError(f"frontend.n_mels = {frontend.n_mels} but model.encoder.n_mels = "
                          f"{model.encoder.n_mels}: the encoder's input height is the number of mel bins; "
                          "set both to the same value")


# ------------------------------------------------------------------------------------------
# Composing a config from files and command-line overrides
# ------------------------------------------------------------------------------------------


def builtin_configs() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("specmae").joinpath("configs").iterdir()
                  if p.name.endswith(".yaml"))


def read_config_file(name_or_path: str) -> dict:
    """A built-in config name (see `builtin_configs()`) or a YAML/JSON file -> dict."""
    path = Path(name_or_path)
    if path.is_dir():
        raise ConfigError(f"--config {name_or_path}: is a folder, expected a YAML file or a built-in config "
                          f"({', '.join(builtin_configs())})")
    if path.is_file():
        text, label = path.read_text(), str(path)
    else:
        builtin = resources.files("specmae").joinpath("configs", f"{name_or_path}.yaml")
        if not builtin.is_file():
            raise ConfigError(f"--config {name_or_path}: no such file, and not a built-in config "
                              f"({', '.join(builtin_configs())})")
        text, label = builtin.read_text(), f"built-in config {name_or_path}"
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{label}: not valid YAML ({' '.join(str(e).split())})") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{label}: expected a mapping of sections (model, frontend, ...), got {type(data).__name__}")
    return data


def merge(base: dict, update: dict) -> dict:
    """`update` laid over `base`, section by section (nested mappings merge, other values replace)."""
    out = dict(base)
    for key, value in update.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def set_path(d: dict, dotted: str, value: Any) -> None:
    """d['a']['b'] = value for dotted = 'a.b'."""
    *parents, leaf = dotted.split(".")
    if not leaf or not all(parents):
        raise ConfigError(f"--set {dotted}=...: expected section.field, e.g. model.encoder.depth=6")
    for key in parents:
        nxt = d.setdefault(key, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"--set {dotted}: {key} is a value, not a section")
        d = nxt
    d[leaf] = value


def parse_set(item: str) -> tuple[str, Any]:
    """'model.encoder.depth=6' -> ('model.encoder.depth', 6); the value is read as YAML."""
    key, value = key_value(item, "--set", example="model.encoder.depth=6")
    try:
        return key, yaml.safe_load(value)
    except yaml.YAMLError as e:
        raise ConfigError(f"--set {item!r}: the value is not valid YAML ({' '.join(str(e).split())})") from e


def compose(layers: list[dict], klass=RunConfig):
    """Defaults <- each layer in turn -> a validated `klass` (RunConfig by default)."""
    d = klass().to_dict()
    for layer in layers:
        d = merge(d, layer)
    return klass.from_dict(d)


def compose_cli(layers: list[dict], flags: dict[str, Any], sets: list[str] | None, klass=RunConfig):
    """A command's config: defaults <- `layers` (read config files) <- named `flags`
    ({'train.epochs': 3, ...}; None = not given) <- `--set key=value` items, validated as a whole."""
    named: dict = {}
    for key, value in flags.items():
        if value is not None:
            set_path(named, key, value)
    overrides: dict = {}
    for item in sets or []:
        set_path(overrides, *parse_set(item))
    return compose(list(layers) + [named, overrides], klass).validate()
