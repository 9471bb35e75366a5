"""Memory and time of `specmae prepare`'s planning phase at AudioSet scale (no audio is decoded).

    python benchmarks/bench_prepare_plan.py --files 200000 500000

The planning phase is everything `prepare_corpus` does before it decodes the first file: listing
the source folder, the size and time of every file, reading the sources tables of a corpus
already there, comparing the two, and dropping the clips of changed or removed files. Its memory
grows with the number of files (the rest of a preparation does not), so it is what bounds a
preparation of 2 million files.

For each size, a tree of zero-byte `.wav` files with AudioSet-like paths (10,000 per folder,
`.../unbalanced_train_segments/partNN/Y<11-char id>_<start>_<end>.wav`, ~85 characters) is
made under a temporary folder, and three runs are measured, each in a fresh process:

- first:  an empty corpus folder (lists and stats the files, then stops before decoding);
- rerun:  a finished corpus whose sources tables list every file with its current size and time
          (nothing to do: `prepare_corpus` returns "reusing");
- added:  the same corpus without every 100th file (1% added: the sources tables are read,
          compared and passed through `drop`, then it stops before decoding).

The corpora are synthetic, written in the format shards.py writes (manifest, `.src` tables of
6,300 rows, `.idx` indexes; no frames: planning never reads them). Peak memory is the process's
peak resident set above what it held before the call (the kernel's high-water mark is reset
first through /proc/self/clear_refs), so imports do not count. The files were just made, so
their folder entries come from the kernel's cache, as on any re-run.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from common import load_average, machine

PER_FOLDER, PER_SHARD = 10_000, 6_300


def make_tree(root: Path, n: int) -> list[str]:
    """n zero-byte .wav files under root (made where missing); -> their paths, sorted as the source
    listing sorts them. The first n files are the same whatever n."""
    rng = np.random.default_rng(0)
    alphabet = np.array(list("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"))
    paths = []
    for k in range(0, n, PER_FOLDER):
        folder = root / "audioset" / "unbalanced_train_segments" / f"part{k // PER_FOLDER:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        ids = rng.choice(alphabet, (min(PER_FOLDER, n - k), 11))
        for i, chars in enumerate(ids):
            start = (k + i) % 300
            path = f"{folder}/Y{''.join(chars)}_{start:.3f}_{start + 10:.3f}.wav"
            if not os.path.exists(path):
                os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o644))
            paths.append(path)
    return sorted(paths, key=lambda p: p.split("/"))


def write_corpus(out: Path, files: list[str], complete: bool) -> None:
    """A corpus in the prepared format whose sources tables list `files` as prepared, 10 s each."""
    from specmae.audio import FrontendConfig
    from specmae.training.corpus import FORMAT, INDEX, SHARDS, VERSION
    from specmae.training.sources import file_stat

    shutil.rmtree(out, ignore_errors=True)
    (out / SHARDS).mkdir(parents=True)
    shards = []
    for s, i in enumerate(range(0, len(files), PER_SHARD)):
        chunk = files[i:i + PER_SHARD]
        name = f"{s:05d}"
        rows = []
        for p in chunk:
            size, mtime = file_stat(p)
            rows.append(f"{p}\t{size}\t{mtime}\tok\n")
        (out / SHARDS / f"{name}.src").write_text("".join(rows))
        index = np.zeros(len(chunk), INDEX)
        index["source"] = np.arange(len(chunk))
        index["offset"] = np.arange(len(chunk)) * 1001
        index["length"] = 1001
        index.tofile(out / SHARDS / f"{name}.idx")
        shards.append(dict(name=name, clips=len(chunk), frames=1001 * len(chunk), sources=len(chunk)))
    manifest = dict(format=FORMAT, version=VERSION, shard_bytes=1 << 30, shards=shards,
                    frontend=FrontendConfig().to_dict(), complete=complete)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")


def child(source: str, out: str) -> None:
    """Run the planning phase in this fresh process; print its peak memory and time as JSON."""
    import gc

    import specmae.training.prepare as prepare
    from specmae.allocator import retain_freed_memory
    from specmae.audio import FrontendConfig

    retain_freed_memory()  # as the CLI does

    class Planned(Exception):
        pass

    def stop(*args, **kwargs):
        raise Planned

    prepare._prepare_files = stop  # everything before it is the planning phase
    gc.collect()
    rss = _status("VmRSS")
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM, the peak resident set, to the current one
    except OSError:
        pass
    started = time.perf_counter()
    try:
        prepare.prepare_corpus(source, out, FrontendConfig(), n_frames=208)
    except Planned:
        pass
    seconds = time.perf_counter() - started
    peak = _status("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps(dict(seconds=seconds, rss_before=rss, peak=peak)))


def _status(field: str) -> int:
    try:
        for line in open("/proc/self/status"):
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def measure(source: Path, out: Path) -> dict:
    result = subprocess.run([sys.executable, __file__, "--child", str(source), str(out)], check=True,
                            capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, nargs="+", default=[200_000, 500_000])
    parser.add_argument("--tree", default=None, help="a folder to make the files in and keep for the next run "
                        "(making 2 million files can take minutes); default: a temporary folder, removed")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(*args.child)
    print(f"# {machine()}, load {load_average()}")
    print("| files | run | planning time | peak memory above start | per file |")
    print("|---|---|---|---|---|")
    for n in args.files:
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            tree = Path(args.tree) / f"{n}" if args.tree else tmp / "src"
            made = time.perf_counter()
            files = make_tree(tree, n)
            made = time.perf_counter() - made
            runs = {"first": None, "rerun": files, "added": [p for i, p in enumerate(files) if i % 100]}
            for run, prepared in runs.items():
                out = tmp / f"corpus-{run}"
                if prepared is not None:
                    write_corpus(out, prepared, complete=True)
                r = measure(tree, out)
                grown = r["peak"] - r["rss_before"]
                print(f"| {n:,} | {run} | {r['seconds']:.1f} s | {grown / 2**20:,.0f} MB | {grown / n:,.0f} B |",
                      flush=True)
                shutil.rmtree(out, ignore_errors=True)
            print(f"# {n:,} files made (or found) in {made:.0f} s", flush=True)


if __name__ == "__main__":
    main()
