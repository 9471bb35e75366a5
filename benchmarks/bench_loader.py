"""Random-crop throughput of one data-loading worker from a prepared corpus.

    python benchmarks/bench_loader.py --clips 2000 --batches 200
    python benchmarks/bench_loader.py --corpus runs/fsdd-corpus      # any prepared corpus

One process (what one DataLoader worker is), one thread: CropBatches batches of 64 random
80 x 208 crops, float16 frames -> float32 (B, 1, F, T), the work `specmae pretrain` does per
worker. Without --corpus it writes a synthetic corpus of AudioSet-like 10 s clips (1,001
frames, random float16) in 64 MB shards; the frames were just written, so they are read from
the page cache, as they are from the second epoch on when the corpus fits in RAM. Also prints
how the time of one batch splits between drawing the order and filling the array.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from bench_corpus_open import write_corpus
from common import load_average, machine
from specmae.training.corpus import CropBatches, load_corpus


def crops_per_second(corpus, n_frames: int, batch: int, batches: int, epoch: int = 0) -> tuple[float, float]:
    """-> (crops/s of __getitem__, seconds to build the epoch's order)."""
    t = time.perf_counter()
    data = CropBatches(corpus, n_frames, batch, seed=0, epoch=epoch)
    order = time.perf_counter() - t
    batches = min(batches, len(data))
    data[0]  # maps the first shard
    t = time.perf_counter()
    for k in range(batches):
        data[k]
    return batches * batch / (time.perf_counter() - t), order


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", help="a prepared corpus folder (default: a synthetic one)")
    p.add_argument("--clips", type=int, default=2000, help="clips of the synthetic corpus (10 s each)")
    p.add_argument("--frames", type=int, default=208)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--batches", type=int, default=200)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    torch.set_num_threads(1)
    print(f"machine: {machine()}; load average {load_average():.2f}")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.corpus) if args.corpus else write_corpus(Path(tmp) / "corpus", args.clips, 1001, 400,
                                                                    sparse=False)
        corpus, _ = load_corpus(folder)
        for pages in range(len(corpus.shards)):  # read every shard once: the page cache holds them
            corpus.shards[pages].sum(dtype="float32")
        runs = [crops_per_second(corpus, args.frames, args.batch, args.batches, epoch) for epoch in range(args.repeats)]
        rates = sorted(r for r, _ in runs)
        mean_len = corpus.lengths.mean()
        print(f"| corpus | clips | mean clip frames | crop | batch | crops/s per worker (min / median / max of "
              f"{args.repeats}) | epoch order |")
        print("|---|---|---|---|---|---|---|")
        print(f"| {'synthetic 10 s' if not args.corpus else folder.name} | {len(corpus):,} | {mean_len:.0f} | "
              f"{corpus.frontend.n_mels}x{args.frames} | {args.batch} | {rates[0]:,.0f} / "
              f"{rates[len(rates) // 2]:,.0f} / {rates[-1]:,.0f} | {runs[0][1] * 1e3:.1f} ms |")
    print(f"load average after: {load_average():.2f}")


if __name__ == "__main__":
    main()
