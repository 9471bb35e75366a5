"""Embedding throughput and peak memory of `Embedder.embed` (docs/architecture.md).

    python benchmarks/bench_embed.py                       # ViT-B, 80x208 and 80x512, CPU, fp32 + bf16
    python benchmarks/bench_embed.py --device cuda --batches 1 16 64
    python benchmarks/bench_embed.py --smoke               # tiny model, seconds: checks the script runs

Throughput: seconds of audio embedded per second of wall time, for `--batches` clips of
`--seconds` each per call (whole pipeline: front-end, chunking, encoder, clip mean), median of
`--repeats` calls. Achieved FLOP/s counts the encoder's matmuls (benchmarks/common.py) on the
chunks actually encoded and is given as a fraction of the measured matmul peak of that dtype.
Ceiling: the encoder alone on 16 clips' chunks against the same matrix products run bare (same
shapes, no LayerNorm, GELU, softmax, residuals or casts): how much of the time any fusion of the
other operations could win back.
Memory: peak resident memory (CPU) or peak allocated memory (CUDA) of a fresh process that embeds
one clip of each `--memory-minutes` length, beside the bytes of its input and output.
Prints Markdown tables.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import encoder_flops, load_average, machine, matmul_peak, timeit  # noqa: E402

from specmae.audio import FrontendConfig  # noqa: E402
from specmae.features import Embedder  # noqa: E402
from specmae.model.mae import MaskedAutoencoder  # noqa: E402
from specmae.model.presets import ModelConfig, model_config  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", nargs="+", default=["80x208p16x16", "80x512p16x16"])
    p.add_argument("--size", default="base", help="encoder size (tiny, small, base, large)")
    p.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    p.add_argument("--batches", nargs="+", type=int, default=[1, 16], help="clips per embed call")
    p.add_argument("--seconds", type=float, default=10.0, help="length of each clip")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--chunks-per-call", type=int, help="encoder batch in chunks (default: the library's)")
    p.add_argument("--compile", action="store_true", help="Embedder(compile=True); compilation is in the warm-up")
    p.add_argument("--memory-minutes", nargs="*", type=float, default=[1, 5, 20])
    p.add_argument("--smoke", action="store_true", help="tiny model, short clips, one repeat")
    p.add_argument("--memory-child", type=float, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.smoke:
        args.size, args.presets, args.batches, args.seconds = "smoke", ["80x208p16x16"], [1, 4], 2.0
        args.repeats, args.memory_minutes = 1, [0.1, 0.5]
    return args


def build(preset: str, size: str, device: str, chunks_per_call: int | None, compile: bool = False) -> Embedder:
    """A randomly initialised encoder (speed does not depend on the weights)."""
    extra = dict(dim=48, depth=3, heads=3, decoder_dim=32, decoder_depth=1, decoder_heads=4) if size == "smoke" else {}
    cfg = model_config(preset, "tiny" if size == "smoke" else size, **extra)
    model = MaskedAutoencoder(cfg).eval()
    return Embedder(model.encoder, FrontendConfig(), (-7.1, 4.2), chunks_per_call=chunks_per_call,
                    compile=compile).to(device)


def throughput(args: argparse.Namespace, device: torch.device) -> list[str]:
    rows = ["| preset | precision | clips x s | chunks | audio s/s | encoder FLOP/s | of matmul peak |",
            "|---|---|---|---|---|---|---|"]
    peaks = {}
    for preset in args.presets:
        embedder = build(preset, args.size, args.device, args.chunks_per_call, args.compile)
        cfg = embedder.encoder.cfg
        n = int(args.seconds * embedder.sample_rate)
        chunk_flops = encoder_flops(ModelConfig(encoder=cfg))
        for precision in args.precisions:
            if precision not in peaks:
                peaks[precision] = matmul_peak(DTYPES[precision], device)
            for batch in args.batches:
                waves = 2 * torch.rand(batch, n, generator=torch.Generator().manual_seed(0)) - 1
                waves = waves.to(device)
                seconds = timeit(lambda: embedder.embed(waves, embedder.sample_rate, precision=precision),
                                 device, args.repeats, warmup=1)
                chunks = batch * -(-(1 + n // embedder.frontend.cfg.hop_length) // cfg.n_frames)
                flops = chunks * chunk_flops / seconds
                mode = precision + (" compiled" if args.compile else "")
                rows.append(f"| {preset} | {mode} | {batch} x {args.seconds:g} | {chunks} | "
                            f"{batch * args.seconds / seconds:.1f} | {flops / 1e9:.1f} G | "
                            f"{flops / peaks[precision]:.0%} |")
    peak_rows = [f"matmul peak {p}: {v / 1e9:.1f} GFLOP/s" for p, v in peaks.items()]
    return peak_rows + [""] + rows


def ceiling(args: argparse.Namespace, device: torch.device, clips: int = 16) -> list[str]:
    rows = ["| preset | precision | chunks | encoder ms | its matrix products alone, ms | share |", "|---|---|---|---|---|---|"]
    linear = torch.nn.functional.linear
    for preset in args.presets:
        embedder = build(preset, args.size, args.device, args.chunks_per_call)
        cfg = embedder.encoder.cfg
        chunks = clips * -(-(1 + int(args.seconds * embedder.sample_rate) // embedder.frontend.cfg.hop_length)
                           // cfg.n_frames)
        tokens = cfg.num_patches + (1 if cfg.use_cls else 0)
        x = torch.randn(chunks, 1, cfg.n_mels, cfg.n_frames, device=device)
        for precision in args.precisions:
            dtype = DTYPES[precision]
            hidden = int(cfg.dim * cfg.mlp_ratio)
            h = torch.randn(chunks * tokens, cfg.dim, device=device, dtype=dtype)
            h4 = torch.randn(chunks * tokens, hidden, device=device, dtype=dtype)
            w = [torch.randn(o, i, device=device, dtype=dtype) for o, i in
                 ((3 * cfg.dim, cfg.dim), (cfg.dim, cfg.dim), (hidden, cfg.dim))]
            w_fc2 = torch.randn(cfg.dim, hidden, device=device, dtype=dtype)
            q = torch.randn(chunks, cfg.heads, tokens, cfg.dim // cfg.heads, device=device, dtype=dtype)

            def products():
                for _ in range(cfg.depth):
                    for weight in w:
                        linear(h, weight)
                    linear(h4, w_fc2)
                    (q @ q.transpose(-2, -1)) @ q

            forward = embedder._forward_fn(precision)
            with torch.inference_mode():
                encoder = timeit(lambda: forward(x, False), device, args.repeats, warmup=1)
                bare = timeit(products, device, args.repeats, warmup=1)
            rows.append(f"| {preset} | {precision} | {chunks} | {encoder * 1e3:.0f} | {bare * 1e3:.0f} | "
                        f"{bare / encoder:.0%} |")
    return rows


def memory_child(args: argparse.Namespace) -> None:
    """Embed one clip of args.memory_child minutes in this fresh process; print JSON."""
    import resource

    device = torch.device(args.device)
    embedder = build(args.presets[0], args.size, args.device, args.chunks_per_call)
    n = int(args.memory_child * 60 * embedder.sample_rate)
    wave = (2 * torch.rand(n, generator=torch.Generator().manual_seed(0)) - 1).to(device)
    embedder.embed(wave[: embedder.sample_rate], embedder.sample_rate)  # warm-up: one-off allocations
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    out = embedder.embed(wave, embedder.sample_rate)
    result = dict(minutes=args.memory_child, input=wave.numel() * 4, output=out.frames.numel() * 4,
                  peak_rss=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, rss_before=before)
    if device.type == "cuda":
        result["cuda_peak_above_base"] = torch.cuda.max_memory_allocated(device) - base
    print(json.dumps(result))


def memory(args: argparse.Namespace) -> list[str]:
    rows = ["| audio | input | output frames | peak RSS | peak RSS - RSS before the call | CUDA peak above base |",
            "|---|---|---|---|---|---|"]
    mb = lambda b: f"{b / 2**20:.1f} MB" if b is not None else "-"
    for minutes in args.memory_minutes:
        cmd = [sys.executable, __file__, "--memory-child", str(minutes), "--presets", args.presets[0],
               "--size", "smoke" if args.smoke else args.size, "--device", args.device,
               "--threads", str(args.threads)]
        if args.chunks_per_call:
            cmd += ["--chunks-per-call", str(args.chunks_per_call)]
        r = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
        rows.append(f"| {minutes:g} min | {mb(r['input'])} | {mb(r['output'])} | {mb(r['peak_rss'])} | "
                    f"{mb(r['peak_rss'] - r['rss_before'])} | {mb(r.get('cuda_peak_above_base'))} |")
    return rows


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.memory_child is not None:
        return memory_child(args)
    device = torch.device(args.device)
    print(f"# bench_embed: {machine()}, load average {load_average():.2f}")
    print(f"size {args.size}, {args.repeats} repeats, median\n")
    print("\n".join(throughput(args, device)))
    print(f"\nceiling, 16 clips x {args.seconds:g} s:\n")
    print("\n".join(ceiling(args, device)))
    if args.memory_minutes:
        print(f"\npeak memory, {args.presets[0]} {args.size} fp32, one clip per fresh process:\n")
        print("\n".join(memory(args)))


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    main()
