"""Fine-tuning: a pre-trained encoder and a new head trained on a labelled task, once per fold;
the recipe that the training engine (engine.py) runs (docs/finetuning.md).

The recipe's own parts: the checks of checkpoint, task and config before anything runs; the
classifier on the checkpoint's encoder (model/classifier.py); the probe grid's winner on the
frozen encoder first, kept as a classifier of its own, and with LP-FT a linear probe's head for
fine-tuning to start from;
AdamW groups with layer-wise lr decay; micro-batches of cropped task clips in an order fixed by
(seed, epoch) (clips.py); per micro-batch the augmentations (augment.py), the checkpoint's
front-end and normalisation, and cross-entropy or binary cross-entropy; validation after every
epoch, keeping the best checkpoint; the test score of that checkpoint. Process set-up,
accumulation, precision, logging and checkpoints are the engine's. The runner over folds, the
frozen-probe comparison and the report are in finetune_run.py.

Randomness of a micro-batch (augmentations, Patchout, drop-path) is drawn from
(seed, rank, step, micro-step) alone, so a run killed at any moment resumes exactly.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..checkpoint import load, load_checkpoint, save_checkpoint
from ..checkpoint.loader import Checkpoint
from ..config import GRIDS, FinetuneConfig, FinetuneInfo
from ..evaluation.metrics import score
from ..evaluation.probe import train_probe
from ..evaluation.report import confusion
from ..evaluation.tasks import Split, Task, TaskError
from ..features.chunking import windows
from ..features.predict import Predictor, from_checkpoint
from ..files import atomic_write_text
from ..schema import ConfigError
from ..model.classifier import Classifier, ClassifierConfig
from .augment import mixup, random_gain, spec_augment
from .clips import ClipBatches, balanced_weights, crop_samples, one_hot_targets
from .engine import Dist, Trainer, micro_seed, param_groups, split_batch

log = logging.getLogger(__name__)

EVAL_CLIPS = 64  # clips decoded and classified together when validating and testing


def prepare(cfg: FinetuneConfig, ck: Checkpoint, task: Task) -> FinetuneConfig:
    """Check the config against the checkpoint and the task before anything runs; -> the config
    with its 'auto' choices made and the input width set. ConfigError / TaskError otherwise."""
    cfg = cfg.for_task(task.kind).validate()
    cfg.model.n_frames = cfg.model.check_encoder(ck.config.model.encoder).n_frames
    if cfg.model.head != "linear":
        raise ConfigError(f"model.head: {cfg.model.head!r}; fine-tuning trains a linear head (an MLP head is "
                          "the probe classifier's, checkpoints/probe); use 'linear'")
    if task.kind == "multilabel" and task.metric == "accuracy":
        raise TaskError(f"task {task.name}: metric 'accuracy' is single-label and the task is multi-label; "
                        "use mAP or roc_auc")
    return cfg


def layer_scale(name: str, depth: int, decay: float) -> float:
    """Layer-wise lr decay of Classifier parameter `name`: decay ** (depth + 1 - layer), where layer
    0 is the patch embedding and [CLS], layer i + 1 block i, and depth + 1 the final norm and head."""
    if name.startswith(("encoder.patch_embed.", "encoder.cls_token")):
        layer = 0
    elif name.startswith("encoder.blocks."):
        layer = int(name.split(".")[2]) + 1
    else:
        layer = depth + 1
    return decay ** (depth + 1 - layer)


def build_classifier(ck: Checkpoint, n_classes: int, cfg: ClassifierConfig, seed: int) -> Classifier:
    """A Classifier on the checkpoint's encoder weights, with a new head (seeded by `seed`)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Classifier(ck.config.model.encoder, n_classes, cfg)
    model.encoder.load_state_dict(ck.model.encoder.state_dict())
    return model


@dataclass
class FoldResult:
    """One fold's fine-tuned model and its scores (the fold's result.json)."""
    name: str               # the fold's run folder name: `model` (single split) or `fold-<fold>`
    run: str                # the fold's run folder; its `latest` names the kept checkpoint
    train: int              # clips in the training, validation and test parts
    valid_clips: int
    test_clips: int
    best_epoch: int         # epochs done when the kept checkpoint was validated
    best_step: int
    valid: float            # the task metric on the validation part, of the kept checkpoint
    test: float             # ... and on the test part
    confusion: list | None  # (C, C) test counts, rows = true class (single-label tasks)
    probe_valid: float | None = None  # the probe classifier (frozen encoder): validation and
    probe_test: float | None = None   # test metric; None in runs made before LP-FT
    kept: str = "best"      # the checkpoint the fold's `latest` names: best (fine-tuned) or probe
    probe_head: str = "linear"  # the probe classifier's head: the probe grid's winner


class FoldTrainer:
    """Fine-tunes one fold into run_dir; `run()` -> FoldResult, or None when stopped at max_steps."""

    def __init__(self, cfg: FinetuneConfig, ck: Checkpoint, task: Task, split: Split, clips, run_dir: Path,
                 env: Dist, resume: bool = False, progress: bool = True):
        self.cfg, self.ck, self.task, self.split, self.env = cfg, ck, task, split, env
        self.clips, self.run_dir = clips, Path(run_dir)  # clips(indices) -> waveforms at the model's rate
        train, C = cfg.train, len(task.classes)
        self.micro, accum = split_batch(train, env.world)
        self.y = task.targets()
        self.targets = one_hot_targets(self.y, C)
        self.weights = balanced_weights(self.y[split.train]) if cfg.sampler == "balanced" else None
        self.crop = crop_samples(ck.config.frontend, cfg.model.n_frames)
        steps_per_epoch = len(self.epoch_data(0)) // accum
        self.model = build_classifier(ck, C, cfg.model, train.seed).to(env.device)
        depth = self.model.encoder.cfg.depth
        groups = param_groups(self.model, train, partial(layer_scale, depth=depth, decay=cfg.layer_decay))
        info = FinetuneInfo(list(task.classes), task.kind, task.metric, cfg, task.name, split.name,
                            source=dict(path=str(ck.path), step=ck.step, epoch=ck.epoch))
        meta = {k: v for k, v in ck.to_json().items() if k not in ("step", "epoch", "finetune")}
        self.trainer = Trainer(self.model, groups, train, env, steps_per_epoch, self.run_dir,
                               dict(meta, finetune=info.to_dict()), resume=resume, progress=progress)
        self.predictor = Predictor(self.model, ck.config.frontend, ck.norm_stats, task.classes, task.kind)
        self.mean, self.std = ck.norm_stats.tensors(env.device)

    def epoch_data(self, epoch: int) -> ClipBatches:
        t, s = self.cfg.train, self.split
        return ClipBatches(self.clips, s.train, self.targets[s.train], self.crop, self.micro, t.seed, epoch,
                           self.env.rank, self.env.world, self.weights)

    def inputs(self, waves: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        """waves (B, S_w) -> normalised log-mel (B, 1, F, T); frames past each clip's `real` frames
        are 0, the padding that windows of short clips get at inference."""
        T = self.cfg.model.n_frames
        x = (self.predictor.frontend(waves)[..., :T] - self.mean) / self.std            # (B, F, T)
        inside = torch.arange(T, device=x.device) < real[:, None]                        # (B, T)
        return (x * inside[:, None, :])[:, None]

    def loss(self, net: torch.nn.Module, batch, step: int, micro_step: int) -> torch.Tensor:
        """One micro-batch: augment, front-end, classifier (Patchout, drop-path), loss."""
        cfg, aug, device = self.cfg, self.cfg.augment, self.env.device
        waves, lengths, y = batch
        frontend = self.ck.config.frontend
        real = torch.tensor([frontend.num_frames(n) for n in lengths.tolist()], device=device)
        waves, y = waves.to(device, non_blocking=True), y.to(device, non_blocking=True)
        seed = micro_seed(cfg.train.seed, self.env.rank, step, micro_step)
        torch.manual_seed(seed)  # drop-path draws from the global generator
        generator = torch.Generator(device).manual_seed(seed)
        # Augmentations and the front-end in full precision, outside the step's bf16 autocast.
        with torch.autocast(device.type, enabled=False):
            waves = random_gain(waves, aug.gain_db, generator)
            if aug.mixup in ("waveform", "both"):
                waves, y, perm = mixup(waves, y, aug.mixup_alpha, generator, remove_mean=True)
                real = torch.maximum(real, real[perm])
            x = self.inputs(waves, real)
            if aug.mixup in ("spectrogram", "both"):
                x, y, perm = mixup(x, y, aug.mixup_alpha, generator)
                real = torch.maximum(real, real[perm])
            x = spec_augment(x, aug.freq_mask, aug.time_mask, generator)
        logits = net(x, generator=generator, real=real).float()                                   # (B, C)
        if cfg.loss == "ce":
            return F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)
        return F.binary_cross_entropy_with_logits(logits, y * (1 - cfg.label_smoothing) + cfg.label_smoothing / 2)

    def probabilities(self, idx: np.ndarray, predictor: Predictor | None = None) -> np.ndarray:
        """(N, C) clip probabilities of task clips `idx` by `predictor` (the fine-tuned model's by
        default), windowed as `predict` does."""
        precision = "bf16" if self.cfg.train.bf16 else "fp32"
        predictor = predictor or self.predictor
        out = [predictor.predict(self.clips(idx[i:i + EVAL_CLIPS]), predictor.sample_rate,
                                      precision=precision).float().cpu().numpy()
               for i in range(0, len(idx), EVAL_CLIPS)]
        return np.concatenate(out)

    def validate(self, epoch: int) -> None:
        """After each epoch: score the validation part, log it, keep the best checkpoint. Every rank
        scores (the same weights give the same score), so all agree on checkpointing."""
        trainer, metric = self.trainer, self.task.metric
        value = score(metric, self.y[self.split.valid], self.probabilities(self.split.valid))
        trainer.log(dict(event="validation", step=trainer.step, epoch=epoch, **{metric: value}), prefix="val")
        log.info("fold %s, epoch %d: validation %s %.4f", self.split.name, epoch, metric, value)
        if value > trainer.extras.get("best", -math.inf):
            trainer.extras.update(best=value, best_step=trainer.step, best_epoch=epoch + 1)
            trainer.checkpoint("best")

    @torch.no_grad()
    def window_features(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Head inputs of the frozen model (eval mode) for the windows of task clips `idx`, cut as
        `predict` cuts them (T frames each, the last zero-padded and pooled over its audio only)
        -> (W, D) features and (W,) the position in `idx` of each window's clip. A last window of
        less than half T frames is left out (but a clip's first): `predict` weights windows by
        their frames, and a row of a few frames would count as much as a full one."""
        self.model.eval()
        frontend, device, T = self.predictor.frontend, self.env.device, self.cfg.model.n_frames
        features, owners = [], []
        for i in range(0, len(idx), EVAL_CLIPS):
            lms = [(frontend(torch.as_tensor(w, device=device)) - self.mean) / self.std
                   for w in self.clips(idx[i:i + EVAL_CLIPS])]
            for x, where in windows(lms, T, EVAL_CLIPS):
                keep = [j for j, (_, k, n) in enumerate(where) if k == 0 or 2 * n >= T]
                real = torch.tensor([where[j][2] for j in keep], device=device)
                features.append(self.model.features(x[keep], real=real).float().cpu().numpy())
                owners += [i + where[j][0] for j in keep]
        return np.concatenate(features), np.asarray(owners)

    def probe_classifier(self) -> None:
        """The frozen encoder's own classifier, and the LP of LP-FT: the winner of the config's probe
        grid (`probe`; 'none': the 'linear' grid) trained on the frozen encoder's head inputs, its
        standardisation folded into the head. Kept as checkpoints/probe with its validation and test
        scores, a classifier in its own right (a Linear or an MLP head on the pre-trained encoder).
        With `lp_ft` fine-tuning starts from a linear head: the winner if linear, else the
        'linear' grid's; otherwise from the new head."""
        cfg, s, kind, C = self.cfg, self.split, self.task.kind, len(self.task.classes)
        y = self.y if kind == "multilabel" else self.y.astype(np.int64)
        (x_tr, of_tr), (x_va, of_va) = self.window_features(s.train), self.window_features(s.valid)
        y_tr, y_va = y[s.train][of_tr], y[s.valid][of_va]  # each window has its clip's label

        def fit(grid: str):  # the validation part stands in for the unused test part
            return train_probe(x_tr, y_tr, x_va, y_va, x_va, y_va, kind=kind,
                               metric=self.task.metric, n_classes=C,
                               config=replace(GRIDS[grid], seed=cfg.train.seed, precision="fp32"))
        won = fit("linear" if cfg.probe == "none" else cfg.probe)
        head = won.chosen.head
        model_cfg = cfg.model if head == "linear" else replace(cfg.model, head=head, head_hidden=won.head[0].out_features)
        probe = build_classifier(self.ck, C, model_cfg, cfg.train.seed).to(self.env.device)
        probe.load_probe_head(won.head, won.mean, won.std)
        predictor = Predictor(probe, self.ck.config.frontend, self.ck.norm_stats, self.task.classes, kind)
        metric, extras = self.task.metric, self.trainer.extras
        extras.update(probe_head=head, probe_valid=score(metric, self.y[s.valid], self.probabilities(s.valid, predictor)),
                      probe_test=score(metric, self.y[s.test], self.probabilities(s.test, predictor)))
        log.info("fold %s: probe classifier (%s head), validation %s %.4f", s.name, head, metric, extras["probe_valid"])
        if self.env.main:  # its config names its head, so that checkpoint.load rebuilds it
            info = dict(self.trainer.meta["finetune"], config=replace(cfg, model=model_cfg).to_dict())
            save_checkpoint(self.trainer.checkpoints / "probe", probe.state_dict(),
                            dict(self.trainer.meta, finetune=info, step=0, epoch=0.0))
        self.env.barrier("the barrier after the probe checkpoint")
        if cfg.lp_ft:
            start = won if head == "linear" else fit("linear")
            self.model.load_probe_head(start.head, start.mean, start.std)

    def kept(self, result: FoldResult) -> str:
        """What the fold's `latest` names: 'best' (the fine-tuned checkpoint kept on validation) or
        'probe' (the probe classifier), as `prefer` says; for 'best' the probe only when it is
        better on validation beyond chance (probe_is_better)."""
        prefer = self.cfg.prefer
        if prefer != "best" or result.probe_valid is None or result.probe_valid <= result.valid:
            return "probe" if prefer == "probe" else "best"
        predictor = from_checkpoint(load(self.trainer.checkpoints / "probe", self.env.device))
        valid = self.split.valid
        better = probe_is_better(self.task.metric, self.y[valid], self.probabilities(valid),
                                 self.probabilities(valid, predictor), self.cfg.train.seed)
        log.info("fold %s: the probe classifier is better on validation (%.4f vs %.4f), %s", self.split.name,
                 result.probe_valid, result.valid, "beyond chance: kept" if better else "within chance: not kept")
        return "probe" if better else "best"

    def run(self, max_steps: int | None = None) -> FoldResult | None:
        trainer = self.trainer
        if trainer.step == 0:  # a run resumed mid-way has its probe; one from before LP-FT has none
            self.probe_classifier()
        trainer.fit(self.epoch_data, self.loss, max_steps, on_epoch_end=self.validate)
        if trainer.step < trainer.total_steps:
            return None
        state, _ = load_checkpoint(trainer.checkpoints / "best", map_location=self.env.device)
        self.model.load_state_dict(state)
        test = self.split.test
        probs = self.probabilities(test)
        counts = None if self.task.kind == "multilabel" else \
            confusion(self.y[test], probs.argmax(1), len(self.task.classes)).tolist()
        ex = trainer.extras
        result = FoldResult(self.run_dir.name, str(self.run_dir), len(self.split.train), len(self.split.valid),
                            len(test), ex["best_epoch"], ex["best_step"], ex["best"],
                            score(self.task.metric, self.y[test], probs), counts, ex.get("probe_valid"),
                            ex.get("probe_test"), probe_head=ex.get("probe_head", "linear"))
        result.kept = self.kept(result)
        if self.env.main:
            # `specmae.load(run)` and `predict` take the kept checkpoint, not the last one.
            atomic_write_text(self.run_dir / "latest", f"checkpoints/{result.kept}\n")
            atomic_write_text(self.run_dir / "result.json", json.dumps(asdict(result), indent=1))
        self.env.barrier()
        return result


# prefer 'best': the probe classifier replaces the fine-tuned model only when it scores higher on
# at least this share of paired bootstrap resamples of the validation clips (probe_is_better).
PROBE_CONFIDENCE = 0.95
RESAMPLES = 500


def probe_is_better(metric: str, y: np.ndarray, tuned: np.ndarray, probe: np.ndarray, seed: int) -> bool:
    """Whether validation probabilities `probe` (the probe classifier's) beat `tuned` (the fine-tuned
    model's) on targets `y` beyond the validation part's chance: the metric higher in at least
    PROBE_CONFIDENCE of RESAMPLES resamples of the clips, the same clips for both. A plain
    comparison favours the probe, whose grid config and epoch were chosen on these clips (on FSDD
    digits: 96.5 vs 95.0 on validation, 93.3 vs 96.3 on test)."""
    rng = np.random.default_rng([seed, 21])
    wins = counted = 0
    for _ in range(RESAMPLES):
        i = rng.integers(0, len(y), len(y))
        try:
            wins += score(metric, y[i], probe[i]) > score(metric, y[i], tuned[i])
        except ValueError:  # the metric is undefined on this resample (mAP: a class with no positive)
            continue
        counted += 1
    return counted > 0 and wins >= PROBE_CONFIDENCE * counted


def read_result(run_dir: Path) -> FoldResult | None:
    """The result of a fold that finished, or None."""
    path = Path(run_dir) / "result.json"
    return FoldResult(**json.loads(path.read_text())) if path.is_file() else None
