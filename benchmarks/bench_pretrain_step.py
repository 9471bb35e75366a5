"""Pre-training step throughput: forward + backward + AdamW step, samples/s and share of matmul peak.

    python benchmarks/bench_pretrain_step.py --preset 80x208p16x16 --size base --batch 16,64
    python benchmarks/bench_pretrain_step.py --modes bf16 --batch 64 --profile 3

The step is `Trainer.train_step` with the pre-training recipe's loss (common.training_step):
random masks, bf16 autocast in mode bf16, fused AdamW. Each (batch, mode) runs in blocks:
`--repeats` timed steps, then the matmul peak of that dtype (best of 10 2048^3 products), and
the share of peak is the median of the per-block ratios, with their range. A shared VM's
throughput can change between two levels within seconds, so a peak taken once, minutes from
the steps, can be off by 1.8x. `--breakdown` times forward, backward and optimizer apart;
`--profile N` prints torch.profiler's operator table over N steps. Prints Markdown tables;
results are recorded in benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time

import torch

from common import load_average, machine, mae_step_flops, matmul_peak, sync, timeit, training_step
from specmae.model.mae import MaskedAutoencoder
from specmae.model.presets import model_config


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--preset", default="80x208p16x16")
    p.add_argument("--size", default="base")
    p.add_argument("--batch", default="16,64", help="comma-separated batch sizes (per process)")
    p.add_argument("--mask-ratio", type=float, default=0.75)
    p.add_argument("--repeats", type=int, default=5, help="timed steps per block")
    p.add_argument("--blocks", type=int, default=4)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: leave default)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--modes", default="fp32,bf16")
    p.add_argument("--breakdown", action="store_true",
                   help="also time forward, backward and optimizer step apart, with page faults per step")
    p.add_argument("--profile", type=int, default=0, metavar="N",
                   help="instead of timing, profile N steps of each (batch, mode) and print the top operators")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cfg = model_config(args.preset, args.size)
    flops = mae_step_flops(cfg, args.mask_ratio)
    batches = [int(b) for b in args.batch.split(",")]
    modes = args.modes.split(",")
    print(f"machine: {machine()}; load average before: {load_average():.2f}")
    print(f"model: {args.size} {args.preset}, mask ratio {args.mask_ratio}, "
          f"{flops / 1e9:.2f} GFLOP per sample per step (analytic, forward + backward)\n")
    if args.profile:
        for batch in batches:
            for mode in modes:
                profile(cfg, args, device, batch, mode == "bf16")
        return
    print("| batch | mode | samples/s | model TFLOP/s | matmul peak TFLOP/s | share of peak | range over blocks |")
    print("|---|---|---|---|---|---|---|")
    for batch in batches:
        for mode in modes:
            bf16 = mode == "bf16"
            step, x = build(cfg, args, device, batch, bf16)
            achieved, peaks = [], []
            for block in range(args.blocks):
                seconds = timeit(step, device, args.repeats, warmup=2 if block == 0 else 0)
                achieved.append(flops * batch / seconds)
                peaks.append(matmul_peak(torch.bfloat16 if bf16 else torch.float32, device, repeats=10))
            shares = [100 * a / p for a, p in zip(achieved, peaks)]
            rate = statistics.median(achieved)
            print(f"| {batch} | {mode}{' compiled' if args.compile else ''} | {rate / flops:.2f} | "
                  f"{rate / 1e12:.3f} | {statistics.median(peaks) / 1e12:.3f} | {statistics.median(shares):.0f} % | "
                  f"{min(shares):.0f}-{max(shares):.0f} % |", flush=True)
    if args.breakdown:
        print("\n| batch | mode | forward ms | backward ms | optimizer ms | step ms | page faults / step |")
        print("|---|---|---|---|---|---|---|")
        for batch in batches:
            for mode in modes:
                print(breakdown(cfg, args, device, batch, mode == "bf16"), flush=True)
    print(f"\nload average after: {load_average():.2f}")


def build(cfg, args, device: torch.device, batch: int, bf16: bool):
    """A fresh seeded model and its engine step on a random batch -> (step closure, batch)."""
    torch.manual_seed(0)
    model = MaskedAutoencoder(cfg).to(device)
    x = torch.randn(batch, 1, cfg.encoder.n_mels, cfg.encoder.n_frames, device=device)
    step, _ = training_step(model, x, args.mask_ratio, bf16, args.compile)
    return step, x


def profile(cfg, args, device: torch.device, batch: int, bf16: bool, rows: int = 25) -> None:
    """torch.profiler over `args.profile` steps after two warm-up steps: operators by self time."""
    step, _ = build(cfg, args, device, batch, bf16)
    for _ in range(2):
        step()
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    started = time.perf_counter()
    with torch.profiler.profile(activities=activities) as prof:
        for _ in range(args.profile):
            step()
        sync(device)
    wall = (time.perf_counter() - started) / args.profile
    print(f"### batch {batch}, {'bf16' if bf16 else 'fp32'}: {args.profile} steps, {wall * 1e3:.0f} ms per step "
          f"under the profiler\n")
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(prof.key_averages().table(sort_by=sort, row_limit=rows, max_name_column_width=48))


def breakdown(cfg, args, device: torch.device, batch: int, bf16: bool, steps: int = 10) -> str:
    """Median wall time of each part of a step (eager), and minor page faults per step."""
    from specmae.masking import random_masking
    from specmae.training.engine import param_groups
    from specmae.config import TrainConfig

    torch.manual_seed(0)
    model = MaskedAutoencoder(cfg).to(device).train()
    optimizer = torch.optim.AdamW(param_groups(model, TrainConfig()), lr=1e-4, betas=(0.9, 0.95), fused=True)
    x = torch.randn(batch, 1, cfg.encoder.n_mels, cfg.encoder.n_frames, device=device)
    generator = torch.Generator(device).manual_seed(0)
    parts, faults = {"forward": [], "backward": [], "optimizer": []}, []
    for i in range(steps + 2):
        ids = random_masking(x, cfg.encoder.grid, args.mask_ratio, generator)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss, _, _ = model(x, args.mask_ratio, ids_shuffle=ids)
        sync(device)
        t1 = time.perf_counter()
        loss.backward()
        sync(device)
        t2 = time.perf_counter()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync(device)
        t3 = time.perf_counter()
        if i >= 2:  # the first steps allocate for good
            for name, a, b in (("forward", t0, t1), ("backward", t1, t2), ("optimizer", t2, t3)):
                parts[name].append((b - a) * 1e3)
            faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    med = {k: statistics.median(v) for k, v in parts.items()}
    return (f"| {batch} | {'bf16' if bf16 else 'fp32'} | {med['forward']:.0f} | {med['backward']:.0f} | "
            f"{med['optimizer']:.0f} | {sum(med.values()):.0f} | {statistics.median(faults):,.0f} |")


if __name__ == "__main__":
    main()
