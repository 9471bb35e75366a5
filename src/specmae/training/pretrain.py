"""Masked-autoencoder pre-training: one loop for one process or many (design.md section 7).

Run it directly (`specmae pretrain`) or under `torchrun --nproc_per_node=N specmae pretrain`:
the distributed setup is read from torchrun's environment variables, with gloo on CPU and
NCCL on GPU. The learning rate is set every step (linear warm-up, then half-cycle cosine),
gradients accumulate over micro-batches with DDP synchronising only on the last one, and a
checkpoint is committed every `checkpoint_every` steps, so a killed run resumes with the same
step, schedule and data order, losing at most one interval.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from ..audio import synth
from ..allocator import retain_freed_memory
from ..files import atomic_write_text
from ..checkpoint import commit_latest, load_checkpoint, load_train_state, resolve, save_checkpoint
from .data import CropBatches, corpus_from_waves, load_corpus, prepare_corpus
from ..model.mae import MaskedAutoencoder
from ..config import RunConfig
from ..masking import HINTED, Masker, hint_ratio
from ..precision import cpu_bf16_speedup, native_bf16

log = logging.getLogger(__name__)


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: no decay on biases, norms and tokens (every parameter with < 2 dims or a token)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or name.endswith("_token") else decay).append(p)
    return [dict(params=decay, weight_decay=weight_decay), dict(params=no_decay, weight_decay=0.0)]


def lr_at(step: int, total_steps: int, warmup_steps: int, peak: float, floor: float = 0.0) -> float:
    """Linear warm-up to `peak`, then half-cycle cosine down to `floor`, per optimizer step."""
    if step < warmup_steps:
        return peak * step / warmup_steps
    progress = (step - warmup_steps) / max(total_steps - warmup_steps, 1)
    return floor + (peak - floor) * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()


def init_distributed() -> Dist:
    """Read torchrun's environment; one process per GPU, or CPU processes over gloo."""
    world = int(os.environ.get("WORLD_SIZE", 1))
    rank = int(os.environ.get("RANK", 0))
    local = int(os.environ.get("LOCAL_RANK", 0))
    if torch.cuda.is_available():
        if local >= torch.cuda.device_count():
            raise RuntimeError(f"process {local} on this node but only {torch.cuda.device_count()} GPU(s) visible: "
                               "start one process per GPU, or set CUDA_VISIBLE_DEVICES= to train on the CPU")
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Dist(rank, world, device)


def open_corpus(cfg: RunConfig, run_dir: Path, env: Dist):
    """-> (corpus, (mean, std)). Folders are prepared once (by rank 0) into run_dir/corpus."""
    train, n_frames = cfg.train, cfg.model.encoder.n_frames
    if train.data is None:
        waves, labels = synth.make_corpus(train.builtin_clips, seed=train.seed)
        corpus = corpus_from_waves(waves, cfg.frontend, labels)
        return corpus, corpus.stats(n_frames, seed=train.seed)
    source = Path(train.data)
    if (source / "index.json").is_file():
        return load_corpus(source)
    if env.main:
        prepare_corpus(source, run_dir / "corpus", cfg.frontend, n_frames, workers=train.workers)
    env.barrier()
    return load_corpus(run_dir / "corpus")


@dataclass
class Trained:
    checkpoint: Path            # the run's latest checkpoint directory
    model: MaskedAutoencoder    # this rank's model (identical on every rank)
    step: int


def pretrain(cfg: RunConfig, run_dir: str | os.PathLike, resume: bool = False,
             progress: bool = True, max_steps: int | None = None) -> Trained:
    """Pre-train an MAE into `run_dir`; returns the final checkpoint and model.

    `max_steps` stops early (after committing a checkpoint) without changing the schedule,
    which is how tests interrupt and resume a run.
    """
    env = init_distributed()
    retain_freed_memory()
    run_dir = Path(run_dir)
    train, enc = cfg.train, cfg.model.encoder
    micro = train.micro_batch or train.batch_size // env.world
    accum = train.batch_size // (micro * env.world)
    if accum < 1 or accum * micro * env.world != train.batch_size:
        raise ValueError(f"batch_size {train.batch_size} is not a multiple of micro_batch {micro} "
                         f"x {env.world} processes")
    cfg.masking.validate(enc.grid)
    m = cfg.masking
    if env.main and m.strategy in HINTED and m.hint_ratio is None and m.hint_start_epoch >= train.epochs:
        log.warning("masking %s: the hint schedule starts at epoch %d of a %d-epoch run, so every mask "
                    "is random (hint ratio 1); set masking.hint_start_epoch or masking.hint_ratio",
                    m.strategy, m.hint_start_epoch, train.epochs)
    if env.main and train.bf16 and env.device.type == "cpu" and not native_bf16(env.device):
        log.warning("bf16 autocast on a CPU whose bf16 matrix products are not faster than fp32 "
                    "(%.2fx): this run will be slower than in fp32", cpu_bf16_speedup())
    if env.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=1))

    corpus, (mean, std) = open_corpus(cfg, run_dir, env)
    torch.manual_seed(train.seed)
    model = MaskedAutoencoder(cfg.model).to(env.device)
    optimizer = torch.optim.AdamW(param_groups(model, train.weight_decay), lr=0.0, betas=train.betas,
                                  fused=env.device.type in ("cuda", "cpu"))
    steps_per_epoch = len(CropBatches(corpus, enc.n_frames, micro, train.seed, 0, env.rank, env.world)) // accum
    if steps_per_epoch < 1:
        raise ValueError(f"corpus of {len(corpus)} clips gives no full step of {train.batch_size} samples")
    total_steps = train.epochs * steps_per_epoch
    warmup_steps = round(train.warmup_epochs * steps_per_epoch)
    peak_lr = train.blr * train.batch_size / 256

    step = 0
    ckpt_root = run_dir / "checkpoints"
    if resume and (ckpt_root / "latest").is_file():
        state, _ = load_checkpoint(ckpt_root, map_location=env.device)
        model.load_state_dict(state)
        train_state = load_train_state(ckpt_root)
        optimizer.load_state_dict(train_state["optimizer"])
        step = int(train_state["step"])
        log.info("resumed from %s at step %d", resolve(ckpt_root), step)

    masker = Masker(cfg.masking, enc.grid, encoder=model.encoder)
    ddp = DistributedDataParallel(model) if env.world > 1 else None
    net = torch.compile(ddp or model) if train.compile else (ddp or model)
    norm = torch.tensor([mean, std], device=env.device)
    generator = torch.Generator(env.device)
    meta = dict(model=cfg.model.to_dict(), frontend=cfg.frontend.to_dict(), norm_stats=[mean, std],
                masking=cfg.masking.to_dict(), train=asdict(train))

    def checkpoint(step: int) -> Path:
        name = f"step-{step:08d}"
        if env.main:
            save_checkpoint(ckpt_root / name, model.state_dict(),
                            dict(meta, step=step, epoch=step / steps_per_epoch),
                            dict(optimizer=optimizer.state_dict(), step=step))
            commit_latest(ckpt_root, name, train.keep_checkpoints)
        env.barrier()
        return ckpt_root / name

    logger = TrainLogger(run_dir, env.main, progress, total_steps, step)
    stop = total_steps if max_steps is None else min(total_steps, max_steps)
    model.train()
    batches, loader, epoch = None, None, -1
    while step < stop:
        if step // steps_per_epoch != epoch:
            epoch = step // steps_per_epoch
            batches = CropBatches(corpus, enc.n_frames, micro, train.seed, epoch, env.rank, env.world)
            first = (step % steps_per_epoch) * accum
            loader = iter(torch.utils.data.DataLoader(
                torch.utils.data.Subset(batches, range(first, steps_per_epoch * accum)), batch_size=None,
                num_workers=train.workers, pin_memory=env.device.type == "cuda",
                persistent_workers=False))
            logger.epoch(step, epoch, hint_ratio(cfg.masking, epoch, train.epochs))
        lr = lr_at(step, total_steps, warmup_steps, peak_lr, train.min_lr)
        for group in optimizer.param_groups:
            group["lr"] = lr
        started, loss_sum = time.perf_counter(), torch.zeros((), device=env.device)
        for micro_step in range(accum):
            x = next(loader).to(env.device, non_blocking=True)
            x = (x - norm[0]) / norm[1]
            # Masks depend only on (seed, rank, step, micro-step): resumable without RNG state.
            generator.manual_seed(int(np.random.SeedSequence(
                [train.seed, env.rank, step, micro_step]).generate_state(1, np.uint64)[0] >> 1))
            ids_shuffle = masker(x, generator, epoch, train.epochs)
            # DDP all-reduces gradients only on the last micro-step.
            sync = ddp is None or micro_step == accum - 1
            with (contextlib.nullcontext() if sync else ddp.no_sync()):
                with torch.autocast(env.device.type, dtype=torch.bfloat16, enabled=train.bf16):
                    loss, _, _ = net(x, cfg.masking.ratio, ids_shuffle=ids_shuffle)
                (loss / accum).backward()
            loss_sum += loss.detach()
        if train.clip_grad:
            torch.nn.utils.clip_grad_norm_(model.parameters(), train.clip_grad)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        if env.world > 1:
            dist.all_reduce(loss_sum, op=dist.ReduceOp.AVG)
        logger.step(step, epoch, (loss_sum / accum).item(), lr,
                    train.batch_size / (time.perf_counter() - started))
        if step % train.checkpoint_every == 0 or step == stop:
            checkpoint(step)
    logger.close()
    return Trained(resolve(ckpt_root), model, step)


class TrainLogger:
    """Progress bar, JSON lines (run_dir/log.jsonl) and TensorBoard, on rank 0 only."""

    def __init__(self, run_dir: Path, main: bool, progress: bool, total: int, initial: int):
        self.main, self.path = main, run_dir / "log.jsonl"
        self.bar = self.tb = None
        if not main:
            return
        if initial and self.path.is_file():
            # Drop what was logged after the checkpoint we resume from: those steps run again.
            records = [json.loads(line) for line in self.path.read_text().splitlines()]
            keep = [r for r in records if r["step"] < initial or r["step"] == initial and "loss" in r]
            atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in keep))
        if progress:
            from tqdm.auto import tqdm
            self.bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True)
        try:
            from torch.utils.tensorboard import SummaryWriter
            self.tb = SummaryWriter(str(run_dir / "tb"), purge_step=initial or None)
        except ImportError:
            log.info("tensorboard not installed; logging to %s only", self.path)

    def _write(self, record: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")

    def epoch(self, step: int, epoch: int, hint: float) -> None:
        if self.main:
            self._write(dict(event="epoch", step=step, epoch=epoch, hint_ratio=hint))
            log.info("epoch %d, hint ratio %.3f", epoch, hint)
            if self.tb:
                self.tb.add_scalar("train/hint_ratio", hint, epoch)

    def step(self, step: int, epoch: int, loss: float, lr: float, samples_per_s: float) -> None:
        if not self.main:
            return
        if not np.isfinite(loss):
            raise FloatingPointError(f"loss became {loss} at step {step}; lower the learning rate or enable clip_grad")
        self._write(dict(step=step, epoch=epoch, loss=loss, lr=lr, samples_per_s=samples_per_s))
        if self.tb:
            self.tb.add_scalar("train/loss", loss, step)
            self.tb.add_scalar("train/lr", lr, step)
            self.tb.add_scalar("train/samples_per_s", samples_per_s, step)
        if self.bar:
            self.bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", sps=f"{samples_per_s:.1f}", refresh=False)
            self.bar.update(1)

    def close(self) -> None:
        if self.bar:
            self.bar.close()
        if self.tb:
            self.tb.close()
