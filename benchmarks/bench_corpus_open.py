"""How long opening a prepared corpus of AudioSet size takes: a synthetic 2-million-clip index.

    python benchmarks/bench_corpus_open.py --clips 2000000 --repeats 5

Writes a corpus folder in the prepared format (manifest, one binary index per shard, sources
tables) whose frame files are sparse (truncated to their size, no data on disk): AudioSet-like
10 s clips (1,001 frames), 6,300 per 1 GB shard, so 2 million clips make 318 shards and a 48 MB
index. Times `load_corpus` (manifest + np.fromfile of every index; no frames are mapped),
then one crop (maps one shard). The index files were just written, so they are read from the
page cache: a cold open adds reading 48 MB from disk.

`write_corpus` also serves bench_loader.py, with real frames (`sparse=False`).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from common import load_average, machine
from specmae.audio import FrontendConfig
from specmae.training.corpus import FORMAT, INDEX, VERSION, load_corpus


def write_corpus(folder: Path, clips: int, frames_per_clip: int, clips_per_shard: int, sparse: bool,
                 seed: int = 0) -> Path:
    """A prepared corpus of `clips` synthetic clips (random float16 frames, or sparse files)."""
    frontend = FrontendConfig()
    shards_dir = folder / "shards"
    shards_dir.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    entries = []
    for number, first in enumerate(range(0, clips, clips_per_shard)):
        n = min(clips_per_shard, clips - first)
        name = f"{number:05d}"
        index = np.empty(n, INDEX)
        index["source"] = np.arange(n)
        index["offset"] = np.arange(n) * frames_per_clip
        index["length"] = frames_per_clip
        index.tofile(shards_dir / f"{name}.idx")
        shape = (n * frames_per_clip, frontend.n_mels)
        with open(shards_dir / f"{name}.f16", "wb") as f:
            if sparse:
                f.truncate(shape[0] * shape[1] * 2)
            else:
                rng.normal(-5, 3, shape).astype(np.float16).tofile(f)
        (shards_dir / f"{name}.src").write_text("".join(f"clip{first + i:08d}.wav\t0\t0\tok\n" for i in range(n)))
        entries.append(dict(name=name, clips=n, frames=shape[0], sources=n))
    manifest = dict(format=FORMAT, version=VERSION, frontend=frontend.to_dict(), shard_bytes=1 << 30, shards=entries,
                    complete=True, clips=clips, frames=clips * frames_per_clip, stats_frames=208,
                    norm_stats=[-5.0, 3.0])
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True))
    return folder


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clips", type=int, default=2_000_000)
    p.add_argument("--clips-per-shard", type=int, default=6_300, help="10 s clips in a 1 GB shard")
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    print(f"machine: {machine()}; load average {load_average():.2f}")
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        folder = write_corpus(Path(tmp) / "corpus", args.clips, 1001, args.clips_per_shard, sparse=True)
        print(f"wrote a {args.clips:,}-clip index in {time.perf_counter() - t:.1f} s: "
              f"{sum(p.stat().st_size for p in (folder / 'shards').glob('*.idx')) / 1e6:.0f} MB of .idx in "
              f"{len(list((folder / 'shards').glob('*.idx')))} shards")
        times = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            corpus, _ = load_corpus(folder)
            times.append(time.perf_counter() - t)
        t = time.perf_counter()
        corpus.crop(len(corpus) // 2, 0, 208, corpus.frontend.silence)
        first_crop = time.perf_counter() - t
        t = time.perf_counter()
        name = corpus.names[len(corpus) // 2]
        first_name = time.perf_counter() - t
        print(f"| clips | shards | open (median of {args.repeats}) | open (min) | first crop | first name |")
        print("|---|---|---|---|---|---|")
        print(f"| {len(corpus):,} | {len(corpus.shards)} | {statistics.median(times) * 1e3:.0f} ms | "
              f"{min(times) * 1e3:.0f} ms | {first_crop * 1e3:.2f} ms | {first_name * 1e3:.1f} ms ({name}) |")
    print(f"load average after: {load_average():.2f}; RSS {rss_mb():.0f} MB")


def rss_mb() -> float:
    try:
        for line in open(f"/proc/{os.getpid()}/status"):
            if line.startswith("VmHWM"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


if __name__ == "__main__":
    main()
