"""Cost of each masking strategy per batch, as a share of one pre-training step.

    python benchmarks/bench_masking.py --preset 80x208p16x16 --size base --batch 64 --device cpu

The step (forward + backward + AdamW step of MaskedAutoencoder at the same batch, random
masks drawn beforehand) and every strategy's mask generation are timed in the same run
(median of --repeats after one warm-up). Hinted strategies (dwm, inverse-block, sgim) run at
epoch --epoch of --epochs, so the hint exchange is part of their cost; sgim encodes the whole
batch with the model's own encoder, as in training. Prints a Markdown table; results are
recorded in benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import dataclasses

import torch

from common import load_average, machine, timeit, training_step
from specmae.model.mae import MaskedAutoencoder
from specmae.masking import PATTERNS, Masker, MaskingConfig, hint_ratio
from specmae.model.presets import model_config

STRATEGIES = {
    "random": MaskingConfig("random"),
    "dwm": MaskingConfig("dwm"),
    "dwm (var)": MaskingConfig("dwm", dispersion="var"),
    "dwm top-k": MaskingConfig("dwm", topk=True),
    "inverse-block": MaskingConfig("inverse-block"),
    "sgim": MaskingConfig("sgim"),
    "time-strip": MaskingConfig("time-strip"),
    "row-column": MaskingConfig("row-column"),
    "time-alternating": MaskingConfig("time-alternating", 0.5),
    "frequency-alternating": MaskingConfig("frequency-alternating", 0.5),
    "chessboard": MaskingConfig("chessboard", 0.5),
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="80x208p16x16")
    p.add_argument("--size", default="base")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--mask-ratio", type=float, default=0.75)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: leave default)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                   help="bf16 autocast for the training step (default: on for cuda, off for cpu)")
    p.add_argument("--epoch", type=int, default=75, help="epoch for the hint schedule")
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--strategies", default=",".join(STRATEGIES),
                   help=f"comma-separated subset of: {', '.join(STRATEGIES)}")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    bf16 = device.type == "cuda" if args.bf16 is None else args.bf16
    names = args.strategies.split(",")
    unknown = [n for n in names if n not in STRATEGIES]
    if unknown:
        p.error(f"unknown strategies {unknown}: allowed {list(STRATEGIES)}")

    cfg = model_config(args.preset, args.size)
    grid = cfg.encoder.grid
    torch.manual_seed(0)
    model = MaskedAutoencoder(cfg).to(device).train()
    x = torch.randn(args.batch, 1, cfg.encoder.n_mels, cfg.encoder.n_frames, device=device)
    generator = torch.Generator(device).manual_seed(0)
    step, _ = training_step(model, x, args.mask_ratio, bf16)

    print(f"machine: {machine()}; load average before: {load_average():.2f}")
    print(f"model: {args.size} {args.preset} (grid {grid[0]}x{grid[1]}), batch {args.batch}, "
          f"device {device}, {'bf16 autocast' if bf16 else 'fp32'}, median of {args.repeats}")
    step_s = timeit(step, device, args.repeats, warmup=1)
    print(f"training step (forward + backward + AdamW): {1e3 * step_s:.1f} ms\n")
    print("| strategy | hint ratio | ms per batch | % of step |")
    print("|---|---|---|---|")
    for name in names:
        mcfg = STRATEGIES[name]
        if mcfg.strategy not in PATTERNS:                 # the patterns are defined at 0.5
            mcfg = dataclasses.replace(mcfg, ratio=args.mask_ratio)
        masker = Masker(mcfg, grid, encoder=model.encoder)
        seconds = timeit(lambda: masker(x, generator, args.epoch, args.epochs), device, args.repeats, warmup=1)
        h = hint_ratio(mcfg, args.epoch, args.epochs)
        print(f"| {name} | {h:.2f} | {1e3 * seconds:.3f} | {100 * seconds / step_s:.2f} % |", flush=True)
    print(f"\nload average after: {load_average():.2f}")


if __name__ == "__main__":
    main()
