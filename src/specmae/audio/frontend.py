"""Log-mel front-ends: waveform (S,) or (B, S) -> log-mel (F, T) or (B, F, T), F mel bins, T frames.

Two front-ends, chosen by `FrontendConfig.kind` and built by `build_frontend` (logmel.py):

- 'msm-mae' (`LogMelFrontend`, logmel.py): matches the official MSM-MAE front-end (nnAudio's
  MelSpectrogram, whose filters equal librosa's): centred STFT with reflect padding, periodic
  Hann window, power spectrum, Slaney mel filters with Slaney area normalisation, log(mel + eps).
  Frame k is centred on sample k * hop, so a clip of S samples gives T = 1 + S // hop.
- 'maskspec' (`MaskSpecFrontend`, maskspec.py): PaSST's front-end as MaskSpec uses it:
  pre-emphasis, symmetric Hann window shorter than the FFT, Kaldi triangular mel banks,
  log(mel + 1e-5), then (x + 4.5) / 5.

This module holds what they share: their configuration and the centred framing of a waveform.
Normalisation by corpus statistics ('global': one mean and std; 'per-bin': one per mel bin) is
not part of the front-end: see normalize.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..schema import ConfigError, from_dict, one_of, positive, to_dict
from .decode import AudioError

FRONTENDS = ("msm-mae", "maskspec")
STATS_MODES = ("global", "per-bin")


@dataclass
class FrontendConfig:
    """Log-mel front-end parameters. The defaults are MSM-MAE's 16 kHz front-end."""

    kind: str = "msm-mae"       # one of FRONTENDS
    sample_rate: int = 16000
    n_fft: int = 400
    win_length: int = 400
    hop_length: int = 160
    n_mels: int = 80
    f_min: float = 50.0
    f_max: float = 8000.0
    eps: float = 1.1920929e-07  # log(mel + eps); float32 machine epsilon for MSM-MAE, 1e-5 for MaskSpec
    stats: str = "global"       # normalisation statistics: one mean/std ('global') or one per mel bin

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> "FrontendConfig":
        one_of("frontend.kind", self.kind, FRONTENDS)
        one_of("frontend.stats", self.stats, STATS_MODES)
        for name in ("sample_rate", "n_fft", "hop_length", "n_mels", "eps"):
            positive(f"frontend.{name}", getattr(self, name))
        if not 0 < self.win_length <= self.n_fft:
            raise ConfigError(f"frontend.win_length: {self.win_length}, expected 0 < win_length <= "
                              f"n_fft = {self.n_fft}")
        if not 0.0 <= self.f_min < self.f_max <= self.sample_rate / 2:
            raise ConfigError(f"frontend.f_min, f_max: {self.f_min}, {self.f_max}; expected 0 <= f_min < f_max "
                              f"<= sample_rate / 2 = {self.sample_rate / 2}")
        return self

    @classmethod
    def msm_mae_32k(cls) -> "FrontendConfig":
        """The 32 kHz MSM-MAE variant: 50 ms window, 10 ms hop, 80 bins from 50 Hz to 16 kHz."""
        return cls(sample_rate=32000, n_fft=800, win_length=800, hop_length=320, f_max=16000.0)

    @classmethod
    def maskspec(cls) -> "FrontendConfig":
        """MaskSpec's (PaSST's) front-end: 32 kHz, 128 Kaldi mel bins 0-15,000 Hz, per-bin statistics."""
        return cls(kind="maskspec", sample_rate=32000, n_fft=1024, win_length=800, hop_length=320,
                   n_mels=128, f_min=0.0, f_max=15000.0, eps=1e-5, stats="per-bin")

    @property
    def silence(self) -> float:
        """The front-end's value for digital silence (mel power 0): padding for short crops."""
        value = math.log(self.eps)
        return (value + 4.5) / 5 if self.kind == "maskspec" else value

    def num_frames(self, n_samples: int) -> int:
        """Frames of a clip of n_samples (centred frames, one per hop)."""
        if self.kind == "maskspec":  # pre-emphasis shortens the signal by one sample
            return 1 + max(n_samples - 1, 0) // self.hop_length
        return 1 + n_samples // self.hop_length

    def to_dict(self) -> dict:
        return to_dict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "FrontendConfig":
        """Also reads configs written before `kind` and `stats` existed (MSM-MAE front-end, global stats)."""
        return from_dict(cls, d, "frontend")


def reflect_indices(pos: torch.Tensor, n: int) -> torch.Tensor:
    """Fold integer sample positions (any shape, any values) into [0, n), as reflect padding does.

    Same result as np.pad(x, pad, mode="reflect") for a length-n signal and any pad, including
    pad >= n where numpy reflects repeatedly (torch's reflect pad refuses that case): reflection
    without repeating the edge sample is periodic with period 2(n - 1), and a 1-sample signal is
    extended with copies of itself.
    """
    if n == 1:
        return torch.zeros_like(pos)
    period = 2 * (n - 1)
    pos = torch.remainder(pos, period)
    return torch.where(pos >= n, period - pos, pos)


def check_input(wave: torch.Tensor, device: torch.device) -> None:
    """A front-end's input: (B, S) or (S,), at least one sample, on the front-end's device."""
    if wave.ndim not in (1, 2):
        raise ValueError(f"wave: expected shape (B, S) or (S,), got {tuple(wave.shape)}")
    if wave.shape[-1] == 0:
        raise AudioError("<waveform>: empty audio (0 samples)")
    if wave.device != device:
        raise ValueError(f"wave is on {wave.device} but the front-end on {device}; use .to()")


def frame_chunks(n_frames: int, x: torch.Tensor, cpu_chunk_frames: int):
    """(t0, t1) frame ranges to compute at a time for a batch x (B, S): on the CPU about
    `cpu_chunk_frames` frames of the whole batch, so that its arrays stay in cache; GPUs take all."""
    step = max(1, cpu_chunk_frames // max(x.shape[0], 1)) if x.device.type == "cpu" else n_frames
    for t0 in range(0, n_frames, step):
        yield t0, min(n_frames, t0 + step)


def frame_span(x: torch.Tensor, t0: int, t1: int, hop: int, n_fft: int) -> torch.Tensor:
    """Samples under centred frames t0..t1-1 of x (B, S): (B, (t1 - t0 - 1) * hop + n_fft), reflect-padded.

    Frame k starts n_fft // 2 samples before k * hop, so that it is centred there. Positions
    outside the clip are reflected in by index arithmetic (np.pad semantics, for clips of any
    length); a span inside the clip is a plain view, so the whole clip is never copied to pad it.
    """
    n = x.shape[-1]
    start = t0 * hop - n_fft // 2
    stop = start + (t1 - t0 - 1) * hop + n_fft
    parts = [x[:, max(start, 0) : min(stop, n)]]  # never empty: every frame centre lies in the clip
    if start < 0:
        parts.insert(0, x.index_select(1, reflect_indices(torch.arange(start, 0, device=x.device), n)))
    if stop > n:
        parts.append(x.index_select(1, reflect_indices(torch.arange(n, stop, device=x.device), n)))
    return torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]
