"""Throughput of the log-mel front-end: specmae's LogMelFrontend against librosa, same inputs, same run.

    python benchmarks/bench_frontend.py --seconds 10 --batch 16 --repeats 15 --threads 2

Measures seconds of audio turned into log-mel per second of wall time. LogMelFrontend gets the
whole batch in one call (B, S); librosa gets the same clips one by one, as a data loader would
call it. Both use the same thread budget (torch threads, and the BLAS threads behind librosa's
numpy matrix product). The two series alternate in blocks (librosa, pause, specmae, pause, ...),
so that a slow spell of a shared machine hits both; the speed-up is the median over blocks of
the ratio of the block medians. Prints a Markdown table.
"""

import argparse
import os
import platform
import statistics
import time


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=10.0, help="length of each clip (s)")
    p.add_argument("--batch", type=int, default=16, help="clips per batch")
    p.add_argument("--repeats", type=int, default=10, help="timed repetitions per block (after warm-up)")
    p.add_argument("--blocks", type=int, default=5, help="alternating blocks of librosa and specmae series")
    p.add_argument("--threads", type=int, default=2, help="CPU threads for torch and for BLAS")
    p.add_argument("--device", default="cpu", help="device for LogMelFrontend (cpu, cuda)")
    return p.parse_args()


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def timed(fn, repeats: int, sync=lambda: None, warmup: int = 2) -> list[float]:
    """Wall times (s) of `repeats` back-to-back calls of fn, after `warmup` untimed calls.

    Each candidate is timed as its own series rather than taking turns with the other: right
    after librosa, OpenBLAS's threads still spin for a while and would slow torch's threads down
    on a 2-core machine, which says nothing about either front-end.
    """
    for _ in range(warmup):
        fn()
        sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    args = parse_args()
    # BLAS reads its thread count when numpy is first imported, so set it before the imports below.
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)

    import librosa
    import numpy as np
    import torch

    from specmae.allocator import retain_freed_memory
    from specmae.audio import FrontendConfig, LogMelFrontend

    retain_freed_memory()  # as the specmae commands run

    torch.set_num_threads(args.threads)
    cfg = FrontendConfig()
    n = int(round(args.seconds * cfg.sample_rate))
    gen = torch.Generator().manual_seed(2022)
    waves = 2 * torch.rand(args.batch, n, generator=gen) - 1  # (B, S), like the golden inputs
    waves_np = waves.numpy()

    frontend = LogMelFrontend(cfg).to(args.device)
    waves_dev = waves.to(args.device)
    sync = torch.cuda.synchronize if waves_dev.is_cuda else (lambda: None)

    def run_specmae():
        with torch.inference_mode():
            return frontend(waves_dev)

    def run_librosa():
        return [
            np.log(librosa.feature.melspectrogram(
                y=clip, sr=cfg.sample_rate, n_fft=cfg.n_fft, hop_length=cfg.hop_length,
                win_length=cfg.win_length, window="hann", center=True, pad_mode="reflect", power=2.0,
                n_mels=cfg.n_mels, fmin=cfg.f_min, fmax=cfg.f_max, htk=False, norm="slaney",
            ) + cfg.eps)
            for clip in waves_np
        ]

    ours = run_specmae().cpu().numpy()
    ref = np.stack(run_librosa())
    max_diff = float(np.abs(ours - ref).max())
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    assert max_diff < 1e-3, f"outputs disagree: max |diff| {max_diff:.3g} in the log domain"

    candidates = [("librosa (per clip)", run_librosa, lambda: None),
                  (f"specmae LogMelFrontend ({args.device}, batched)", run_specmae, sync)]
    times = {name: [] for name, _, _ in candidates}
    ratios = []
    for _ in range(args.blocks):
        block = []
        for name, fn, fn_sync in candidates:
            time.sleep(0.5)  # let the other candidate's idle BLAS/OpenMP threads stop spinning
            series = timed(fn, args.repeats, fn_sync)
            times[name] += series
            block.append(statistics.median(series))
        ratios.append(block[0] / block[1])
    rows = [(name, statistics.median(t), min(t)) for name, t in times.items()]

    audio_s = args.batch * n / cfg.sample_rate
    print(f"torch {torch.__version__}, numpy {np.__version__}, librosa {librosa.__version__}, "
          f"Python {platform.python_version()}")
    print(f"CPU: {cpu_model()} ({os.cpu_count()} logical cores visible), threads: {args.threads}")
    print(f"input: {args.batch} clips x {args.seconds:g} s at {cfg.sample_rate} Hz "
          f"({audio_s:g} s of audio), {args.blocks} blocks x {args.repeats} timed repeats; "
          f"outputs agree to {max_diff:.2g} (max |diff|, log domain)\n")
    print("| front-end | median ms / batch | best ms / batch | audio s per s (median) |")
    print("|---|---:|---:|---:|")
    for name, med, best in rows:
        print(f"| {name} | {med * 1e3:.1f} | {best * 1e3:.1f} | {audio_s / med:,.0f} |")
    print(f"\nspeed-up vs librosa: {statistics.median(ratios):.2f}x (median of {len(ratios)} blocks; "
          f"range {min(ratios):.2f}x - {max(ratios):.2f}x)")

if __name__ == "__main__":
    main()
