"""Shared pieces of the benchmark scripts: machine description, matmul peak, FLOP counts."""

from __future__ import annotations

import os
import platform
import statistics
import time

import torch

from specmae.allocator import retain_freed_memory
from specmae.model.presets import ModelConfig

# Measure what `specmae` commands run: they keep freed memory in the process (allocator.py).
# SPECMAE_BENCH_DEFAULT_MALLOC=1 measures glibc's defaults instead, for the before/after figures.
if os.environ.get("SPECMAE_BENCH_DEFAULT_MALLOC") != "1":
    retain_freed_memory()


def machine() -> str:
    cpu = platform.processor() or "cpu"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    desc = f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads"
    if torch.cuda.is_available():
        desc += f", {torch.cuda.get_device_name()}"
    return desc


def load_average() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timeit(fn, device: torch.device, repeats: int, warmup: int = 2) -> float:
    """Median seconds of `fn()` over `repeats` runs after `warmup` runs."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def matmul_peak(dtype: torch.dtype, device: torch.device, n: int | None = None, repeats: int = 20) -> float:
    """Best achieved FLOP/s of an n x n x n matmul: the machine's practical peak for this dtype.

    The fastest of `repeats` runs, not the median: a peak is what the hardware can do, and
    shared-machine noise only ever slows a run down.
    """
    n = n or (8192 if device.type == "cuda" else 2048)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(device)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best


def training_step(model, x: torch.Tensor, ratio: float, bf16: bool, compile: bool = False):
    """One pre-training step as `specmae pretrain` runs it: `Trainer.train_step` (lr schedule,
    bf16 autocast, fused AdamW) with the recipe's loss (random masks drawn from a seeded generator
    outside autocast, MSE on the masked patches), on the batch `x` every time.

    -> (step closure for `timeit`, the Trainer). The Trainer's log folder is removed at exit.
    """
    import atexit
    import itertools
    import shutil
    import tempfile

    from specmae.config import TrainConfig
    from specmae.masking import Masker, MaskingConfig
    from specmae.training.engine import Dist, Trainer, param_groups
    from specmae.training.pretrain import reconstruction_loss, seeded_masks

    train = TrainConfig(batch_size=x.shape[0], bf16=bf16, compile=compile, workers=0)
    env = Dist(device=x.device)
    run_dir = tempfile.mkdtemp(prefix="bench_step_")
    atexit.register(shutil.rmtree, run_dir, ignore_errors=True)
    trainer = Trainer(model, param_groups(model, train), train, env, steps_per_epoch=1000,
                      run_dir=run_dir, progress=False)
    masker = Masker(MaskingConfig(ratio=ratio), model.cfg.encoder.grid, encoder=model.encoder)
    masks = seeded_masks(masker, train.seed, env.rank, trainer.steps_per_epoch, train.epochs, x.device)
    zero, one = torch.zeros((), device=x.device), torch.ones((), device=x.device)
    loss = reconstruction_loss(masks, ratio, zero, one)
    batches = itertools.repeat(x)
    model.train()
    return (lambda: trainer.train_step(batches, loss)), trainer


def _blocks_flops(tokens: int, dim: int, depth: int, mlp_ratio: float) -> float:
    """Forward FLOPs of `depth` transformer blocks on `tokens` tokens (matmuls only)."""
    linear = 2 * tokens * dim * dim * (3 + 1 + 2 * mlp_ratio)
    attention = 2 * 2 * tokens * tokens * dim
    return depth * (linear + attention)


def encoder_flops(cfg: ModelConfig, visible: int | None = None) -> float:
    """Forward FLOPs per sample of the encoder on `visible` patches (default: all)."""
    enc = cfg.encoder
    n = (enc.num_patches if visible is None else visible) + (1 if enc.use_cls else 0)
    patch_embed = 2 * enc.num_patches * enc.patch_f * enc.patch_t * enc.dim
    return patch_embed + _blocks_flops(n, enc.dim, enc.depth, enc.mlp_ratio)


def mae_step_flops(cfg: ModelConfig, mask_ratio: float) -> float:
    """Forward + backward FLOPs per sample of one MAE training step (backward = 2 x forward)."""
    enc, dec = cfg.encoder, cfg.decoder
    visible = int(enc.num_patches * (1 - mask_ratio))
    n_enc = visible + (1 if enc.use_cls else 0)
    n_dec = enc.num_patches + (1 if enc.use_cls else 0)
    forward = (encoder_flops(cfg, visible) + 2 * n_enc * enc.dim * dec.dim
               + _blocks_flops(n_dec, dec.dim, dec.depth, dec.mlp_ratio)
               + 2 * n_dec * dec.dim * enc.patch_f * enc.patch_t)
    return 3 * forward
