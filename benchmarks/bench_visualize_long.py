"""Peak memory of `specmae visualize` on one long file (issue 12: bounded memory for long files).

Writes a synthetic FLAC (tones whose level and pitch change every 10 s, plus a little noise) and
a tiny checkpoint (MSM-MAE 80x208p16x16, width 48) into --work, then runs

    specmae visualize CKPT FILE --out DIR --no-audio --no-sweep --no-patterns --draws 1 [--segments S]

under /usr/bin/time -v, once on the long file and once on its first 10 s (the process's floor:
torch, matplotlib and the model), and prints the peak RSS and wall time of each.

    python benchmarks/bench_visualize_long.py --minutes 60 --rate 44100
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf

from common import load_average, machine


def write_long_file(path: Path, minutes: float, rate: int) -> None:
    rng = np.random.default_rng(0)
    with sf.SoundFile(str(path), "w", rate, 1, subtype="PCM_16") as f:
        for k in range(int(minutes * 6)):   # 10 s at a time: the writer needs no more memory than that
            t = (np.arange(10 * rate) + k * 10 * rate) / rate
            level = 0.05 + 0.25 * (0.5 + 0.5 * np.sin(2 * np.pi * k / 37))
            tone = level * np.sin(2 * np.pi * (220 + 5 * (k % 50)) * t)
            f.write((tone + rng.normal(0, 0.003, t.shape)).astype(np.float32))


def write_checkpoint(path: Path) -> None:
    from specmae.audio import FrontendConfig
    from specmae.checkpoint import save_checkpoint
    from specmae.model.mae import build_mae
    from specmae.model.presets import model_config

    cfg = model_config("80x208p16x16", "tiny", dim=48, depth=2, heads=3, decoder_dim=32, decoder_depth=1,
                       decoder_heads=4)
    model = build_mae(cfg, seed=0)
    save_checkpoint(path, model.state_dict(), dict(model=cfg.to_dict(), frontend=FrontendConfig().to_dict(),
                                                   norm_stats=[-7.0, 4.0]))


def run(ckpt: Path, audio: Path, out: Path, segments: str) -> tuple[float, float, str]:
    """(peak RSS MB, wall s, the command's last line)."""
    cmd = ["/usr/bin/time", "-v", sys.executable, "-m", "specmae.cli", "visualize", str(ckpt), str(audio),
           "--out", str(out), "--no-audio", "--no-sweep", "--no-patterns", "--draws", "1", "--segments", segments]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode:
        raise SystemExit(proc.stdout + proc.stderr)
    rss = float(re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr).group(1)) / 1024
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", proc.stderr).group(1)
    seconds = sum(float(v) * 60 ** i for i, v in enumerate(reversed(wall.split(":"))))
    return rss, seconds, proc.stdout.strip().splitlines()[-1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--minutes", type=float, default=60)
    p.add_argument("--rate", type=int, default=44100, help="the file's sample rate (the model's is 16 kHz)")
    p.add_argument("--segments", default="loudest")
    p.add_argument("--work", default=None, help="folder for the file, checkpoint and outputs (default: a temp one)")
    args = p.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="bench-visualize-"))
    work.mkdir(parents=True, exist_ok=True)
    long, short, ckpt = work / f"long-{args.minutes:g}min.flac", work / "short-10s.flac", work / "tiny"
    if not long.exists():
        write_long_file(long, args.minutes, args.rate)
    sf.write(short, sf.read(long, frames=10 * args.rate, dtype="float32")[0], args.rate, subtype="PCM_16")
    if not ckpt.exists():
        write_checkpoint(ckpt)
    print(f"{machine()}; load average {load_average():.2f} before")
    print(f"{long.name}: {sf.info(long).duration / 60:.1f} min at {args.rate} Hz, {long.stat().st_size / 1e6:.0f} MB")
    for name, audio in (("10 s", short), (f"{args.minutes:g} min", long)):
        rss, wall, last = run(ckpt, audio, work / f"out-{audio.stem}-{args.segments}-{os.getpid()}", args.segments)
        print(f"{name:>8}: peak RSS {rss:7.0f} MB, wall {wall:5.1f} s  ({last[:70]})")
    print(f"load average {load_average():.2f} after")


if __name__ == "__main__":
    main()
