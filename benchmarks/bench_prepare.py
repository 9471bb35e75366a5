"""Preparation throughput of one process: decode + resample + log-mel, against librosa, same files, same run.

    python benchmarks/bench_prepare.py --files 3000 --rounds 2

On the FSDD recordings (shared/data/fsdd/recordings: 8 kHz WAV, resampled to 16 kHz), each
file as `specmae prepare` treats it in a worker: `load_audio` (libsndfile, soxr HQ) + the
MSM-MAE front-end + the float16 cast, against `librosa.load(sr=16000)` (soxr HQ too) +
`librosa.feature.melspectrogram` with the same STFT and mel settings + log. One thread for
both (torch and BLAS), as prepare's workers run. The two alternate over rounds so that a slow
spell of a shared machine hits both. Prints audio seconds per second per process. Skips when
the recordings are absent.

    python benchmarks/bench_prepare.py --synthetic 100 --rate 48000 --format FLAC

runs the same on synthetic 10 s clips (noise and tones) written at another rate and format,
closer to AudioSet's 44.1/48 kHz sources than FSDD's 8 kHz WAV.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # BLAS behind librosa's mel product: one thread, as torch

import argparse  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from common import load_average, machine  # noqa: E402
from specmae.audio import FrontendConfig, build_frontend, load_audio  # noqa: E402

RECORDINGS = Path(__file__).resolve().parents[2] / "shared" / "data" / "fsdd" / "recordings"


def ours(files: list[Path], cfg: FrontendConfig) -> float:
    """-> seconds of audio prepared."""
    fe, total = build_frontend(cfg), 0.0
    with torch.no_grad():
        for path in files:
            wave = load_audio(path, cfg.sample_rate)
            fe(torch.from_numpy(wave)).T.numpy().astype(np.float16)
            total += len(wave) / cfg.sample_rate
    return total


def theirs(files: list[Path], cfg: FrontendConfig) -> float:
    import librosa

    total = 0.0
    for path in files:
        wave, _ = librosa.load(path, sr=cfg.sample_rate, res_type="soxr_hq")
        mel = librosa.feature.melspectrogram(y=wave, sr=cfg.sample_rate, n_fft=cfg.n_fft, hop_length=cfg.hop_length,
                                             win_length=cfg.win_length, n_mels=cfg.n_mels, fmin=cfg.f_min,
                                             fmax=cfg.f_max, power=2.0, center=True, pad_mode="reflect")
        np.log(mel + cfg.eps).T.astype(np.float16)
        total += len(wave) / cfg.sample_rate
    return total


def synthetic_clips(folder: Path, n: int, rate: int, fmt: str) -> list[Path]:
    import soundfile as sf

    rng = np.random.default_rng(0)
    t = np.arange(10 * rate) / rate
    files = []
    for i in range(n):
        wave = 0.1 * rng.normal(size=len(t)) + 0.3 * np.sin(2 * np.pi * rng.uniform(100, 4000) * t)
        files.append(folder / f"{i:05d}.{fmt.lower()}")
        sf.write(files[-1], wave.astype(np.float32), rate, format=fmt)
    return files


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recordings", type=Path, default=RECORDINGS)
    p.add_argument("--files", type=int, default=3000)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--synthetic", type=int, default=0, help="use this many synthetic 10 s clips instead")
    p.add_argument("--rate", type=int, default=48000, help="sample rate of the synthetic clips")
    p.add_argument("--format", default="FLAC", help="soundfile format of the synthetic clips (WAV, FLAC, OGG)")
    args = p.parse_args()
    if args.synthetic:
        tmp = tempfile.TemporaryDirectory()
        files = synthetic_clips(Path(tmp.name), args.synthetic, args.rate, args.format)
    else:
        files = sorted(args.recordings.glob("*.wav"))[:args.files] if args.recordings.is_dir() else []
    if not files:
        print(f"skipped: no recordings in {args.recordings}")
        sys.exit(0)
    torch.set_num_threads(1)
    cfg = FrontendConfig()
    print(f"machine: {machine()}; load average {load_average():.2f}; {len(files)} files "
          f"({'synthetic 10 s %s at %d Hz' % (args.format, args.rate) if args.synthetic else args.recordings})")
    ours(files[:20], cfg), theirs(files[:20], cfg)  # warm-up: imports, filter banks, page cache
    rates: dict[str, list[float]] = {"specmae": [], "librosa": []}
    for _ in range(args.rounds):
        for name, fn in (("librosa", theirs), ("specmae", ours)):
            t = time.perf_counter()
            seconds = fn(files, cfg)
            rates[name].append(seconds / (time.perf_counter() - t))
    print(f"{seconds:.0f} s of audio per pass")
    print("| pipeline | audio s per s per process (median of rounds) | files/s |")
    print("|---|---|---|")
    for name, r in rates.items():
        rate = statistics.median(r)
        print(f"| {name} | {rate:,.0f} | {rate * len(files) / seconds:,.0f} |")
    print(f"speed-up: {statistics.median(rates['specmae']) / statistics.median(rates['librosa']):.2f}x; "
          f"load average after: {load_average():.2f}")


if __name__ == "__main__":
    main()
