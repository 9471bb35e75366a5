"""The training engine's step against the loop body it replaced, in one process.

    python benchmarks/bench_engine_step.py --repeats 1 --blocks 24

(a) "before": the inner body of the pre-training loop as it was before training/engine.py,
copied below: lr set on every group, normalise, seed the masks, forward under the autocast
switch, backward, optimizer step, zero_grad, the loss read back for the log. (b) "engine":
`Trainer.train_step` with the pre-training recipe's loss function (also copied: it is a closure
inside `pretrain()`). Both step the same model and optimizer on the same random input
(default: ViT-B 80x208p16x16 with the MSM-MAE decoder, batch 16, fp32, random masks at 0.75).

Blocks of `--repeats` steps alternate a b, b a, a b, ... so that a slow patch of a shared
machine hits both; each pair gives a ratio engine / before, and the median of those ratios is
the figure to read. Results are recorded in benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import shutil
import statistics
import tempfile
import time

import numpy as np
import torch

from common import load_average, machine
from specmae.config import TrainConfig
from specmae.masking import Masker, MaskingConfig
from specmae.model.mae import MaskedAutoencoder
from specmae.model.presets import model_config
from specmae.training.engine import Dist, Trainer, lr_at, param_groups


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--preset", default="80x208p16x16")
    p.add_argument("--size", default="base")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--bf16", action="store_true")
    p.add_argument("--repeats", type=int, default=1, help="timed steps per block")
    p.add_argument("--blocks", type=int, default=24, help="blocks of each kind")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: leave default)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    cfg = model_config(args.preset, args.size)
    masking = MaskingConfig()
    train = TrainConfig(batch_size=args.batch, bf16=args.bf16, workers=0)
    print(f"machine: {machine()}; load average before: {load_average():.2f}")
    print(f"model: {args.size} {args.preset}, batch {args.batch}, {'bf16' if args.bf16 else 'fp32'}, "
          f"masking {masking.strategy} {masking.ratio}; {args.blocks} blocks of {args.repeats} steps each\n")

    torch.manual_seed(0)
    model = MaskedAutoencoder(cfg).to(device)
    run_dir = tempfile.mkdtemp(prefix="bench_engine_")
    trainer = Trainer(model, param_groups(model, train), train, Dist(), steps_per_epoch=1000,
                      run_dir=run_dir, progress=False)
    model.train()
    masker = Masker(masking, cfg.encoder.grid, encoder=model.encoder)
    norm = torch.tensor([-4.0, 4.0], device=device)
    generator = torch.Generator(device)
    x = torch.randn(args.batch, 1, cfg.encoder.n_mels, cfg.encoder.n_frames)
    loader = itertools.repeat(x)

    # (a) The loop body before the engine (pretrain.py at the commit before engine.py), one process.
    optimizer, net, ddp, accum, env = trainer.optimizer, model, None, 1, Dist()
    old = dict(step=0)

    def before() -> float:
        step = old["step"]
        lr = lr_at(step, trainer.total_steps, trainer.warmup_steps, trainer.peak_lr, train.min_lr)
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss_sum = torch.zeros((), device=env.device)
        for micro_step in range(accum):
            x = next(loader).to(env.device, non_blocking=True)
            x = (x - norm[0]) / norm[1]
            generator.manual_seed(int(np.random.SeedSequence(
                [train.seed, env.rank, step, micro_step]).generate_state(1, np.uint64)[0] >> 1))
            ids_shuffle = masker(x, generator, 0, train.epochs)
            sync = ddp is None or micro_step == accum - 1
            with (contextlib.nullcontext() if sync else ddp.no_sync()):
                with torch.autocast(env.device.type, dtype=torch.bfloat16, enabled=train.bf16):
                    loss, _, _ = net(x, masking.ratio, ids_shuffle=ids_shuffle)
                (loss / accum).backward()
            loss_sum += loss.detach()
        if train.clip_grad:
            torch.nn.utils.clip_grad_norm_(model.parameters(), train.clip_grad)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        old["step"] = step + 1
        return (loss_sum / accum).item()

    # (b) The engine's step with the pre-training recipe's loss (pretrain.py, `loss`).
    def loss_fn(net: torch.nn.Module, x: torch.Tensor, step: int, micro_step: int) -> torch.Tensor:
        x = (x.to(env.device, non_blocking=True) - norm[0]) / norm[1]
        generator.manual_seed(int(np.random.SeedSequence(
            [train.seed, env.rank, step, micro_step]).generate_state(1, np.uint64)[0] >> 1))
        with torch.autocast(env.device.type, enabled=False):
            ids_shuffle = masker(x, generator, step // trainer.steps_per_epoch, train.epochs)
        return net(x, masking.ratio, ids_shuffle=ids_shuffle)[0]

    def engine() -> float:
        return trainer.train_step(loader, loss_fn)[0]

    def block(fn) -> float:
        """samples/s over `repeats` steps"""
        started = time.perf_counter()
        for _ in range(args.repeats):
            fn()
        return args.repeats * args.batch / (time.perf_counter() - started)

    for fn in (before, engine, before, engine):  # warm-up: first allocations, optimizer state
        fn()
    rates = {"before": [], "engine": []}
    for i in range(args.blocks):
        for name in (("before", "engine") if i % 2 == 0 else ("engine", "before")):
            rates[name].append(block(before if name == "before" else engine))
        print(f"block {i}: before {rates['before'][-1]:.2f}, engine {rates['engine'][-1]:.2f} samples/s; "
              f"load average {load_average():.2f}", flush=True)
    ratios = [e / b for b, e in zip(rates["before"], rates["engine"])]
    print("\n| step | samples/s, median | range over blocks |")
    print("|---|---|---|")
    for name, r in rates.items():
        print(f"| {name} | {statistics.median(r):.2f} | {min(r):.2f}-{max(r):.2f} |")
    print(f"\nengine / before, median of per-block ratios: {statistics.median(ratios):.3f} "
          f"(range {min(ratios):.3f}-{max(ratios):.3f})")
    print(f"load average after: {load_average():.2f}")
    shutil.rmtree(run_dir, ignore_errors=True)  # the Trainer's (empty) log folder


if __name__ == "__main__":
    main()
