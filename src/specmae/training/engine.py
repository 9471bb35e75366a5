"""The training engine: the one loop that every recipe (pre-training, fine-tuning) runs.

A recipe builds its model and data, then hands the engine the model's AdamW parameter groups,
a function giving each epoch's micro-batches and a function computing the loss of one
micro-batch. The engine does the rest the same way for every recipe:

    setup(train)          torchrun environment, device, allocator, torch seed, bf16 check
    Trainer(...)          DDP / torch.compile wrapping, fused AdamW, exact resume
    Trainer.fit           the loop: epochs, data order, steps, logging (logs.py), checkpoints
    Trainer.train_step    one optimizer step over the micro-batches of a global batch
    Trainer.log           a recipe's own records (validation metrics) into log.jsonl + TensorBoard
    Trainer.checkpoint    model + optimizer + step + recipe extras + the log's open interval, atomically

Run a recipe directly or under `torchrun --nproc_per_node=N`: the distributed setup is read from
torchrun's environment variables, with gloo on CPU and NCCL on GPU, on one node or many
(distributed.py, docs/distributed.md); every collective waits at most `train.dist_timeout`
seconds, and whatever fails inside one raises a one-line PeerLost that names it. The
learning rate is set every step (linear warm-up, then half-cycle cosine) and multiplied by each
group's `lr_scale`; gradients accumulate over micro-batches with DDP synchronising only on the
last one; a checkpoint is committed every `checkpoint_every` steps, so a killed run resumes with
the same step, schedule and data order, losing at most one interval.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from ..allocator import retain_freed_memory
from ..checkpoint import CheckpointError, commit_latest, save_checkpoint
from ..config import TrainConfig
from ..precision import cpu_bf16_speedup, native_bf16
from ..procs import loader_workers
from ..schema import positive
from .distributed import Dist, check_same_step, init_distributed
from .logs import TrainLogger
from .runs import Resumable, find_resumable

log = logging.getLogger(__name__)

# loss_fn(net, micro_batch, step, micro_step) -> scalar mean loss of the micro-batch. `net` is the
# model as the engine wraps it (DDP, torch.compile): call it, not the bare model, for DDP to sync.
LossFn = Callable[[torch.nn.Module, Any, int, int], torch.Tensor]


# ------------------------------------------------------------------------------------------
# Process set-up
# ------------------------------------------------------------------------------------------


def setup(train: TrainConfig) -> Dist:
    """Start this process for a training run: torchrun environment, device and process group with
    the run's timeout (distributed.py), allocator, seed.

    Seeded here, before the recipe builds its model, so that every rank draws the same initial
    weights (DDP would broadcast rank 0's anyway; one process is then reproducible too).
    """
    positive("train.dist_timeout", train.dist_timeout)  # used before the recipe validates its config
    env = init_distributed(train.dist_timeout)
    retain_freed_memory()
    if env.main and train.bf16 and env.device.type == "cpu" and not native_bf16(env.device):
        log.warning("bf16 autocast on a CPU whose bf16 matrix products are not faster than fp32 "
                    "(%.2fx): this run will be slower than in fp32", cpu_bf16_speedup())
    torch.manual_seed(train.seed)
    return env


def split_batch(train: TrainConfig, world: int) -> tuple[int, int]:
    """-> (micro, accum): samples per forward in each process, micro-batches per optimizer step."""
    micro = train.micro_batch or train.batch_size // world
    accum = train.batch_size // (micro * world)
    if accum < 1 or accum * micro * world != train.batch_size:
        raise ValueError(f"batch_size {train.batch_size} is not a multiple of micro_batch {micro} "
                         f"x {world} processes")
    return micro, accum


# ------------------------------------------------------------------------------------------
# Optimisation
# ------------------------------------------------------------------------------------------


def param_groups(model: torch.nn.Module, train: TrainConfig,
                 lr_scale: Callable[[str], float] | None = None) -> list[dict]:
    """AdamW groups: `train.weight_decay` on every parameter but those with fewer than 2 dims
    (biases, norms, q/v biases) and, unless `train.decay_tokens`, the learnt tokens (`*_token`).

    With `decay_tokens` this is the official pre-training's rule (timm's `add_weight_decay`
    without a skip list: the (1, 1, D) tokens are decayed); without, MAE's fine-tuning rule
    (`no_weight_decay`: [CLS] undecayed). `lr_scale(name)` multiplies parameter `name`'s
    learning rate (layer-wise decay when fine-tuning): one decay and one no-decay group per
    scale, in order of first appearance, each carrying its `lr_scale` for the Trainer. Without
    it: [decay, no-decay], both at scale 1.
    """
    by_scale: dict[float, tuple[list, list]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        scale = 1.0 if lr_scale is None else float(lr_scale(name))
        undecayed = p.ndim < 2 or (not train.decay_tokens and name.endswith("_token"))
        by_scale.setdefault(scale, ([], []))[undecayed].append(p)
    return [dict(params=params, weight_decay=decay, lr_scale=scale) for scale, pair in by_scale.items()
            for params, decay in zip(pair, (train.weight_decay, 0.0)) if params]


def micro_seed(seed: int, rank: int, step: int, micro_step: int) -> int:
    """The seed of a micro-batch's randomness (masks, augmentations): drawn from these alone, a
    resumed run draws the same without saving RNG state."""
    return int(np.random.SeedSequence([seed, rank, step, micro_step]).generate_state(1, np.uint64)[0] >> 1)


def lr_at(step: int, total_steps: int, warmup_steps: int, peak: float, floor: float = 0.0) -> float:
    """Linear warm-up to `peak`, then half-cycle cosine down to `floor`, per optimizer step."""
    if step < warmup_steps:
        return peak * step / warmup_steps
    progress = (step - warmup_steps) / max(total_steps - warmup_steps, 1)
    return floor + (peak - floor) * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


class Trainer:
    """Optimises `model` under `train`; see the module docstring for the parts.

    model            on env.device; checkpoints hold its state_dict
    groups           AdamW parameter groups (`param_groups`); a group's `lr_scale` multiplies the lr
    steps_per_epoch  optimizer steps in one epoch of the recipe's data
    run_dir          log.jsonl, tb/ and checkpoints/ go here
    meta             the config.json of every checkpoint; `step` and `epoch` are added
    resume           continue from this checkpoint (runs.open_run finds it after checking the
                     folder), or True: from run_dir's newest good checkpoint, if there is one
    """

    def __init__(self, model: torch.nn.Module, groups: list[dict], train: TrainConfig, env: Dist,
                 steps_per_epoch: int, run_dir: str | os.PathLike, meta: dict | None = None,
                 resume: bool | Resumable | None = False, progress: bool = True):
        self.model, self.train, self.env = model, train, env
        self.micro, self.accum = split_batch(train, env.world)
        self.steps_per_epoch = steps_per_epoch
        self.total_steps = train.epochs * steps_per_epoch
        self.warmup_steps = round(train.warmup_epochs * steps_per_epoch)
        self.peak_lr = train.blr * train.batch_size / 256
        # The scales stay outside the optimizer, so its saved state has the same keys in every
        # recipe; a resumed run takes them from the recipe's groups again.
        groups = [dict(g) for g in groups]
        self.lr_scales = [g.pop("lr_scale", 1.0) for g in groups]
        self.optimizer = torch.optim.AdamW(groups, lr=0.0, betas=train.betas,
                                           fused=env.device.type in ("cuda", "cpu"))
        self.meta = dict(meta or {})
        self.extras: dict = {}  # the recipe's own state, saved with every checkpoint (e.g. best score)
        self.step = 0
        logged = None  # the logger's open interval at the checkpoint resumed from
        self.checkpoints = Path(run_dir) / "checkpoints"
        resuming = resume is True or isinstance(resume, Resumable)
        if resume is True:
            resume = find_resumable(self.checkpoints, env.device, report=env.main)
        if isinstance(resume, Resumable):
            try:
                model.load_state_dict(resume.state)
                self.optimizer.load_state_dict(resume.train_state["optimizer"])
            except (RuntimeError, ValueError, KeyError) as e:
                raise CheckpointError(f"{resume.path}: does not fit this run's model and optimizer "
                                      f"({' '.join(str(e).split())[:300]})") from e
            self.step = int(resume.train_state["step"])
            self.extras = dict(resume.train_state.get("extras", {}))
            logged = resume.train_state.get("logger")
            log.info("resumed from %s at step %d", resume.path, self.step)
        if env.world > 1:
            check_same_step(env, self.step, self.checkpoints)
        with env.collective("DDP's broadcast of rank 0's weights"):
            self.ddp = DistributedDataParallel(model) if env.world > 1 else None
        self.net = torch.compile(self.ddp or model) if train.compile else (self.ddp or model)
        self.logger = TrainLogger(Path(run_dir), env.main, progress, self.total_steps, self.step, resuming,
                                  train.log_every, logged)

    def train_step(self, batches: Iterator, loss_fn: LossFn) -> tuple[float, float]:
        """One optimizer step on the next `accum` micro-batches of `batches`.

        -> (loss averaged over micro-batches and processes, this step's lr before group scales)
        """
        lr = lr_at(self.step, self.total_steps, self.warmup_steps, self.peak_lr, self.train.min_lr)
        for group, scale in zip(self.optimizer.param_groups, self.lr_scales):
            group["lr"] = lr * scale
        loss_sum = torch.zeros((), device=self.env.device)
        for micro_step in range(self.accum):
            batch = next(batches)
            # DDP's forward broadcasts the buffers; its backward all-reduces the gradients, on the
            # last micro-step only.
            sync = self.ddp is None or micro_step == self.accum - 1
            with (contextlib.nullcontext() if sync else self.ddp.no_sync()), \
                    self.env.collective("DDP's forward and backward (gradient all-reduce)"):
                with torch.autocast(self.env.device.type, dtype=torch.bfloat16, enabled=self.train.bf16):
                    loss = loss_fn(self.net, batch, self.step, micro_step)
                (loss / self.accum).backward()
            loss_sum += loss.detach()
        if self.train.clip_grad:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.train.clip_grad)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        if self.env.world > 1:
            with self.env.collective("the all-reduce of the loss"):
                dist.all_reduce(loss_sum, op=dist.ReduceOp.AVG)
        return (loss_sum / self.accum).item(), lr

    def fit(self, data: Callable[[int], torch.utils.data.Dataset], loss_fn: LossFn, max_steps: int | None = None,
            on_epoch_start: Callable[[int], dict] | None = None,
            on_epoch_end: Callable[[int], None] | None = None,
            on_step_end: Callable[[int], None] | None = None) -> None:
        """Train to the end of the schedule, or to `max_steps` (which leaves the schedule as it is);
        a checkpoint is committed every `checkpoint_every` steps and at the stop.

        data(epoch)            dataset whose item k is this process's micro-batch k of the epoch
        on_epoch_start(epoch)  -> fields for the epoch's log record (a schedule's value, say); called
                               as an epoch begins, not when a resumed run re-enters one mid-way
        on_epoch_end(epoch)    after the epoch's last step, before that step's checkpoint: evaluate,
                               `log` the metrics, keep the best with `checkpoint("best")`
        on_step_end(step)      after every optimizer step, before on_epoch_end: look at the model
                               (reconstruction snapshots); it must not draw from the global RNG
        """
        stop = self.total_steps if max_steps is None else min(self.total_steps, max_steps)
        self.model.train()
        batches, epoch = None, -1
        while self.step < stop:
            if self.step // self.steps_per_epoch != epoch:
                epoch = self.step // self.steps_per_epoch
                # A resumed run starts mid-epoch at the micro-batch where its step begins.
                first = (self.step % self.steps_per_epoch) * self.accum
                batches = iter(torch.utils.data.DataLoader(
                    torch.utils.data.Subset(data(epoch), range(first, self.steps_per_epoch * self.accum)),
                    batch_size=None, pin_memory=self.env.device.type == "cuda", persistent_workers=False,
                    **loader_workers(self.train.workers)))  # they end with this process, kill -9 too
                if first == 0:  # a run resumed mid-epoch logged the epoch's start before it stopped
                    self.logger.epoch(self.step, epoch, on_epoch_start(epoch) if on_epoch_start else {})
            started = time.perf_counter()
            loss, lr = self.train_step(batches, loss_fn)
            if not math.isfinite(loss):
                raise FloatingPointError(f"loss became {loss} at step {self.step}; "
                                         "lower the learning rate or enable clip_grad")
            self.logger.step(self.step, epoch, loss, lr, self.train.batch_size, time.perf_counter() - started,
                             stop=self.step == stop)
            if on_step_end:
                on_step_end(self.step)
                self.model.train()
            if on_epoch_end and self.step % self.steps_per_epoch == 0:
                on_epoch_end(epoch)
                self.model.train()  # the hook may have evaluated
            if self.step % self.train.checkpoint_every == 0 or self.step == stop:
                self.checkpoint()
        self.logger.close()

    def log(self, record: dict, prefix: str = "train") -> None:
        """Append a recipe's record to log.jsonl (rank 0). It needs a `step`; its other numbers
        (not `epoch`) go to TensorBoard as prefix/name at that step. For example
        `log(dict(event="validation", step=trainer.step, epoch=epoch, accuracy=acc), prefix="val")`."""
        self.logger.record(record, prefix)

    def checkpoint(self, name: str | None = None) -> Path:
        """Save model, optimizer, step and `extras`; every rank calls it, rank 0 writes.

        Unnamed: checkpoints/step-<step>, committed as `latest`, older ones pruned to
        keep_checkpoints. Named ("best"): kept apart from that rotation; `latest` stays.
        """
        path = self.checkpoints / (name or f"step-{self.step:08d}")
        if self.env.main:
            train_state = dict(optimizer=self.optimizer.state_dict(), step=self.step)
            if self.extras:
                train_state["extras"] = self.extras
            train_state["logger"] = self.logger.state()
            save_checkpoint(path, self.model.state_dict(),
                            dict(self.meta, step=self.step, epoch=self.step / self.steps_per_epoch), train_state)
            if name is None:
                commit_latest(self.checkpoints, path.name, self.train.keep_checkpoints)
        self.env.barrier("the barrier after a checkpoint")
        return path
