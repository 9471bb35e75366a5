"""Log-mel back to audio: undo the log, invert the mel filters, Griffin-Lim for the phase.

    lms (F, T)  ->  mel power (F, T)  ->  linear power (K, T)  ->  magnitude  ->  waveform (S,)

`invert_lms` takes a log-mel spectrogram exactly as the configured front-end produces it (not
normalised: undo the corpus statistics first) and returns a waveform whose front-end output is
close to it. Every constant comes from the front-end itself: its log offset and scale, the mel
filters and window of the module `build_frontend` makes, its FFT size and hop, and for MaskSpec
the pre-emphasis, undone at the end by the inverse (IIR) filter.

The mel filters are many-to-one, so the linear power is the non-negative least-squares solution
of `mel_fb @ power = mel` (projected gradient with Nesterov momentum, started from the clipped
pseudo-inverse, per frame), and the phase is found by the fast Griffin-Lim algorithm (Perraudin
et al. 2013, momentum 0.99, as librosa's `griffinlim`). The result has the input's pitch and
spectral envelope, with Griffin-Lim's usual phasiness; it is for listening, not for metrics.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .frontend import FrontendConfig
from .logmel import build_frontend
from .maskspec import PRE_EMPHASIS

# Projected-gradient iterations of the non-negative mel inversion; frames solved at a time.
NNLS_ITERATIONS = 200
NNLS_CHUNK_FRAMES = 4096
# Fast Griffin-Lim's momentum (librosa's default); 0 gives the original algorithm.
MOMENTUM = 0.99


def invert_lms(lms: np.ndarray, frontend: FrontendConfig, n_iter: int = 32, seed: int = 0) -> np.ndarray:
    """Log-mel (F, T) of `frontend`, not normalised -> float32 mono waveform (S,) at frontend.sample_rate.

    S = (T - 1) * hop samples (one more for MaskSpec, whose pre-emphasis drops one), so that the
    front-end gives T frames back. `n_iter` Griffin-Lim iterations from a random phase drawn with
    `seed`: the same input and seed give the same waveform. The level is the one the log-mel
    encodes (no peak normalisation); scale it before writing a fixed-point WAV file. The mel
    inversion runs in chunks of frames, Griffin-Lim on the whole clip: a few minutes at once take
    under 1 GB (benchmarks/README.md); cut longer audio into segments first.
    ValueError when lms is not (n_mels, T) with T >= 1, or holds NaN/inf or values too large to exponentiate.
    """
    module = build_frontend(frontend)
    mel = mel_power(lms, frontend)  # (F, T) float64
    power = mel_to_linear(mel, module.mel_fb)  # (K, T)
    wave = griffin_lim(power.sqrt(), frontend, module.window.to(torch.float32), n_iter, seed)
    if frontend.kind == "maskspec":
        wave = undo_pre_emphasis(wave)
    return wave.astype(np.float32)


def mel_power(lms: np.ndarray, frontend: FrontendConfig) -> torch.Tensor:
    """Log-mel (F, T) -> mel power (F, T) float64, >= 0: each front-end's log undone."""
    x = np.asarray(lms)
    if x.ndim != 2 or x.shape[0] != frontend.n_mels or x.shape[1] < 1:
        raise ValueError(f"lms: shape {x.shape}, expected ({frontend.n_mels}, T) with T >= 1: the "
                         f"{frontend.kind} front-end's {frontend.n_mels} mel bins by frames")
    if not np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.complexfloating):
        raise ValueError(f"lms: dtype {x.dtype}, expected real numbers")
    if not np.isfinite(x).all():
        raise ValueError(f"lms: {int(x.size - np.isfinite(x).sum())} of {x.size} values are NaN or inf")
    log_mel = torch.from_numpy(np.array(x, dtype=np.float64))
    if frontend.kind == "maskspec":
        log_mel = log_mel * 5.0 - 4.5  # the front-end's (log + 4.5) / 5, undone
    if log_mel.max() > 700:  # exp overflows float64 beyond ~709.8
        raise ValueError(f"lms: values up to {float(x.max()):.4g} mean a mel power of e^{float(log_mel.max()):.0f}, "
                         f"far beyond any the {frontend.kind} front-end makes")
    return (log_mel.exp() - frontend.eps).clamp_(min=0.0)


def mel_to_linear(mel: torch.Tensor, mel_fb: torch.Tensor, iterations: int = NNLS_ITERATIONS) -> torch.Tensor:
    """Mel power (F, T) -> linear power (K, T) >= 0 with mel_fb (F, K) @ power ~ mel (least squares), float32.

    Accelerated projected gradient (FISTA with a non-negativity projection) on
    ||mel_fb @ p - mel||^2, from the pseudo-inverse clipped at zero, frame chunk by frame chunk.
    The problem is linear per frame, so loud and quiet frames converge alike; bins that no filter
    covers (below f_min, above f_max, MaskSpec's Nyquist bin) stay 0. 200 iterations leave a
    relative residual of ~1e-3 on synthetic clips (librosa's L-BFGS-B solution: ~1e-2).
    """
    mel_fb = mel_fb.to(torch.float64)
    gram = mel_fb.T @ mel_fb  # (K, K)
    step = 1.0 / float(torch.linalg.eigvalsh(gram)[-1])  # 1 / Lipschitz constant of the gradient
    pinv = torch.linalg.pinv(mel_fb).float()  # (K, F)
    gram_times = _banded(gram.float())
    mel_fb = mel_fb.float()
    out = torch.empty(mel_fb.shape[1], mel.shape[1])
    for t0 in range(0, mel.shape[1], NNLS_CHUNK_FRAMES):
        target = mel[:, t0 : t0 + NNLS_CHUNK_FRAMES].float()
        rhs = mel_fb.T @ target  # (K, T')
        x = (pinv @ target).clamp_(min=0.0)
        y, t = x.clone(), 1.0
        for _ in range(iterations):
            x_next = (y - step * (gram_times(y) - rhs)).clamp_(min=0.0)
            t_next = (1.0 + math.sqrt(1.0 + 4.0 * t * t)) / 2.0
            y = x_next + ((t - 1.0) / t_next) * (x_next - x)
            x, t = x_next, t_next
        out[:, t0 : t0 + target.shape[1]] = x
    return out


def _banded(gram: torch.Tensor, rows: int = 16):
    """gram (K, K) -> a function y (K, T) -> gram @ y, over the non-zero band only.

    Each mel filter spans a few neighbouring bins, so the Gram matrix is banded (3-6 % non-zero):
    blocks of `rows` rows times the columns they touch are ~10x faster than the dense product.
    """
    blocks = []
    for r0 in range(0, gram.shape[0], rows):
        r1 = min(r0 + rows, gram.shape[0])
        cols = torch.nonzero(gram[r0:r1].abs().sum(0)).flatten()
        if cols.numel():
            c0, c1 = int(cols[0]), int(cols[-1]) + 1
            blocks.append((r0, r1, c0, c1, gram[r0:r1, c0:c1].contiguous()))

    def product(y: torch.Tensor) -> torch.Tensor:
        out = y.new_zeros(y.shape)
        for r0, r1, c0, c1, block in blocks:
            torch.mm(block, y[c0:c1], out=out[r0:r1])
        return out

    return product


def griffin_lim(magnitude: torch.Tensor, frontend: FrontendConfig, window: torch.Tensor, n_iter: int,
                seed: int) -> np.ndarray:
    """Magnitude (K, T) of the front-end's STFT -> waveform ((T - 1) * hop,) float64 (numpy).

    The STFT is the front-end's: centred frames (reflect padding), its n_fft, hop and window
    (zero-padded to n_fft in the middle by torch.stft, as the front-ends do). The phase starts
    uniformly random from a generator seeded with `seed`.
    """
    if n_iter < 0:
        raise ValueError(f"n_iter: {n_iter}, expected >= 0 Griffin-Lim iterations")
    n_fft, hop = frontend.n_fft, frontend.hop_length
    length = max((magnitude.shape[1] - 1) * hop, 1)
    # torch's reflect padding needs more samples than it pads; a clip of one or two frames is
    # padded with zeros instead (its edge frames then differ slightly from the front-end's).
    pad_mode = "reflect" if length > n_fft // 2 else "constant"

    def stft(wave: torch.Tensor) -> torch.Tensor:
        return torch.stft(wave, n_fft, hop, frontend.win_length, window, center=True, pad_mode=pad_mode,
                          return_complex=True)

    def istft(spec: torch.Tensor) -> torch.Tensor:
        return torch.istft(spec, n_fft, hop, frontend.win_length, window, center=True, length=length)

    generator = torch.Generator().manual_seed(seed)
    phase = torch.rand(magnitude.shape, generator=generator, dtype=torch.float32) * (2 * math.pi)
    angles = torch.polar(torch.ones_like(magnitude), phase)  # (K, T) complex64
    previous = torch.zeros_like(angles)
    for _ in range(n_iter):
        rebuilt = stft(istft(magnitude * angles))
        angles = rebuilt - (MOMENTUM / (1.0 + MOMENTUM)) * previous
        angles = angles / (angles.abs() + 1e-16)
        previous = rebuilt
    return istft(magnitude * angles).to(torch.float64).numpy()


def undo_pre_emphasis(y: np.ndarray, coef: float = PRE_EMPHASIS, block: int = 256) -> np.ndarray:
    """Pre-emphasised y (N,) -> x (N + 1,) with y[n] = x[n + 1] - coef * x[n] and x[0] = 0.

    The inverse filter x[n + 1] = y[n] + coef * x[n] is recursive; it runs a block at a time: within
    a block as coef^j * cumsum(y[k] / coef^k) (coef^-256 ~ 2e3, harmless in float64), and each
    block carries its last sample into the next.
    """
    n = y.shape[0]
    padded = np.zeros(-(-n // block) * block)
    padded[:n] = y
    y_blocks = padded.reshape(-1, block)  # (blocks, block)
    powers = coef ** np.arange(block, dtype=np.float64)  # (block,)
    zero_state = np.cumsum(y_blocks / powers, axis=1) * powers  # each block's response from rest
    carry_gain = coef * powers  # coef^(j + 1): how the previous block's last sample decays into sample j
    x = np.empty_like(y_blocks)
    last = 0.0
    for i in range(y_blocks.shape[0]):
        x[i] = zero_state[i] + carry_gain * last
        last = x[i, -1]
    return np.concatenate([[0.0], x.reshape(-1)[:n]])
