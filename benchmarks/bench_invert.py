"""Wall time and peak memory of invert_lms (log-mel back to audio), and librosa's mel_to_audio.

    python benchmarks/bench_invert.py --seconds 60 --threads 1

For each front-end (msm-mae 16 kHz, maskspec 32 kHz): white noise of --seconds through the
front-end, then the mel inversion (NNLS) and --n-iter Griffin-Lim iterations timed apart, with
the process's peak RSS after each front-end (the figure only grows: read the increase). librosa's
mel_to_audio (its L-BFGS-B NNLS, the same fast Griffin-Lim) runs on the MSM-MAE mel for
--librosa-seconds, for the ratio. Prints a Markdown table; results in benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np
import torch

from common import load_average, machine
from specmae.audio import FrontendConfig, build_frontend
from specmae.audio.invert import griffin_lim, mel_power, mel_to_linear, undo_pre_emphasis


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--n-iter", type=int, default=32)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: leave default)")
    p.add_argument("--librosa-seconds", type=float, default=5.0, help="0: skip librosa")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"machine: {machine()}; load average {load_average():.2f}")
    print(f"\n{args.seconds:g} s of white noise, {args.n_iter} Griffin-Lim iterations\n")
    print("| front-end | frames | mel inversion (s) | Griffin-Lim (s) | total (s) | x real time | peak RSS (MB) |")
    print("|---|---|---|---|---|---|---|")
    for cfg in (FrontendConfig(), FrontendConfig.maskspec()):
        fe = build_frontend(cfg)
        noise = np.random.default_rng(0).standard_normal(int(args.seconds * cfg.sample_rate)).astype(np.float32)
        with torch.no_grad():
            lms = fe(torch.from_numpy(0.1 * noise)).numpy()
        t0 = time.perf_counter()
        power = mel_to_linear(mel_power(lms, cfg), fe.mel_fb)
        t1 = time.perf_counter()
        wave = griffin_lim(power.sqrt(), cfg, fe.window.float(), args.n_iter, 0)
        if cfg.kind == "maskspec":
            wave = undo_pre_emphasis(wave)
        t2 = time.perf_counter()
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"| {cfg.kind} | {lms.shape[1]} | {t1 - t0:.2f} | {t2 - t1:.2f} | {t2 - t0:.2f} | "
              f"{args.seconds / (t2 - t0):.1f} | {rss:.0f} |")
    if args.librosa_seconds:
        import librosa

        cfg = FrontendConfig()
        fe = build_frontend(cfg)
        noise = np.random.default_rng(0).standard_normal(int(args.librosa_seconds * cfg.sample_rate))
        with torch.no_grad():
            lms = fe(torch.from_numpy(0.1 * noise.astype(np.float32))).numpy()
        mel = mel_power(lms, cfg).numpy()
        t0 = time.perf_counter()
        mel_to_linear(torch.from_numpy(mel), fe.mel_fb)
        ours = time.perf_counter() - t0
        t0 = time.perf_counter()
        librosa.feature.inverse.mel_to_stft(mel, sr=cfg.sample_rate, n_fft=cfg.n_fft, fmin=cfg.f_min, fmax=cfg.f_max)
        theirs = time.perf_counter() - t0
        print(f"\nmel inversion of {args.librosa_seconds:g} s (MSM-MAE): ours {ours:.2f} s, librosa mel_to_stft "
              f"{theirs:.2f} s ({theirs / ours:.0f}x)")
    print(f"\nload average after: {load_average():.2f}")


if __name__ == "__main__":
    main()
