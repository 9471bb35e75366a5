"""MSM-MAE's log-mel front-end (`LogMelFrontend`), and `build_frontend`, which makes the front-end a
config names: this one ('msm-mae') or MaskSpec's (maskspec.py).

The official MSM-MAE front-end is nnAudio's MelSpectrogram, whose filters equal librosa's: centred
STFT with reflect padding, periodic Hann window, power spectrum, Slaney mel filters with Slaney area
normalisation, log(mel + eps). Frame k is centred on sample k * hop, so a clip of S samples gives
T = 1 + S // hop. The configuration and the framing both front-ends share are in frontend.py.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..schema import ConfigError
from .frontend import FrontendConfig, check_input, frame_chunks, frame_span
from .maskspec import MaskSpecFrontend


def build_frontend(cfg: FrontendConfig) -> torch.nn.Module:
    """The front-end module of `cfg.kind`: waveform (B, S) or (S,) -> log-mel (B, F, T) or (F, T)."""
    if cfg.kind == "maskspec":
        return MaskSpecFrontend(cfg)
    return LogMelFrontend(cfg)


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    """Slaney mel scale (librosa htk=False): linear below 1 kHz, logarithmic above."""
    hz = np.asarray(hz, dtype=np.float64)
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, math.log(6.4) / 27.0
    log_part = min_log_mel + np.log(np.maximum(hz, min_log_hz) / min_log_hz) / logstep
    return np.where(hz >= min_log_hz, log_part, hz / f_sp)


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, math.log(6.4) / 27.0
    log_part = min_log_hz * np.exp(logstep * (np.maximum(mel, min_log_mel) - min_log_mel))
    return np.where(mel >= min_log_mel, log_part, f_sp * mel)


def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, f_min: float, f_max: float) -> np.ndarray:
    """Slaney mel filters with Slaney area normalisation: float32 (n_mels, n_fft // 2 + 1).

    Equals librosa.filters.mel(..., htk=False, norm="slaney") without depending on librosa:
    triangles whose corners are n_mels + 2 points evenly spaced on the mel scale, each scaled by
    2 / (its width in Hz) so that every filter has the same area. Computed in float64.
    """
    fft_hz = np.fft.rfftfreq(n_fft, d=1.0 / sample_rate)  # (K,)
    corners = _mel_to_hz(np.linspace(_hz_to_mel(f_min), _hz_to_mel(f_max), n_mels + 2))  # (F + 2,)
    widths = np.diff(corners)  # (F + 1,)
    ramps = corners[:, None] - fft_hz[None, :]  # (F + 2, K)
    rising = -ramps[:-2] / widths[:-1, None]
    falling = ramps[2:] / widths[1:, None]
    bank = np.maximum(0.0, np.minimum(rising, falling))  # (F, K)
    bank *= (2.0 / (corners[2:] - corners[:-2]))[:, None]
    return bank.astype(np.float32)


class LogMelFrontend(torch.nn.Module):
    """Waveform -> natural-log mel spectrogram, batched, on the device of its buffers.

    Buffers (non-persistent, rebuilt from the config, so they never enter checkpoints):
    `window` (win_length,) periodic Hann in float64, `mel_fb` (n_mels, n_fft // 2 + 1) Slaney
    filters in float32.

    The STFT (torch.stft) runs in float64; the power spectrum is rounded to float32 and the
    mel product and log run in float32. A float32 FFT is exact only to ~1e-7 of the loudest bins
    of its frame, so a quiet bin between loud ones (a mel filter narrower than the FFT resolution
    reads one bin) came out up to 1.3e-4 off in the log domain, by how the CPU's FFT kernels
    round, against 3.4e-5 for the official front-end on the golden inputs. Rounding after the
    FFT costs each bin only its own relative precision (~3e-7 from float64 overall).
    """

    # On CPU the batch is processed this many frames at a time so that the frame, spectrum and
    # power arrays stay in cache (about 2x faster on a 16 x 10 s batch). GPUs take it whole.
    cpu_chunk_frames = 2048
    # Each mel filter covers only a few FFT bins (2.4 % of the matrix is non-zero), so the filters
    # are applied in a few groups, each over the bins it spans: the product gets ~2x faster.
    mel_groups = 4

    def __init__(self, cfg: FrontendConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg if cfg is not None else FrontendConfig()
        if cfg.kind != "msm-mae":
            raise ConfigError(f"LogMelFrontend is the 'msm-mae' front-end, not {cfg.kind!r}: use build_frontend")
        bank = mel_filterbank(cfg.sample_rate, cfg.n_fft, cfg.n_mels, cfg.f_min, cfg.f_max)
        self.register_buffer(
            "window", torch.hann_window(cfg.win_length, periodic=True, dtype=torch.float64), persistent=False
        )
        self.register_buffer("mel_fb", torch.from_numpy(bank), persistent=False)
        self._bands = []  # (first filter, end filter, first bin, end bin) per group
        for rows in np.array_split(np.arange(cfg.n_mels), min(self.mel_groups, cfg.n_mels)):
            bins = np.flatnonzero(bank[rows].any(axis=0))
            lo, hi = (int(bins[0]), int(bins[-1]) + 1) if bins.size else (0, 0)
            self._bands.append((int(rows[0]), int(rows[-1]) + 1, lo, hi))

    def num_frames(self, n_samples: int) -> int:
        """Frames of a clip of n_samples: frame k is centred on sample k * hop."""
        return self.cfg.num_frames(n_samples)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        """wave (B, S) or (S,) -> log-mel (B, F, T) or (F, T) float32, with T = 1 + S // hop.

        Values are not scanned for NaN/inf here (that would force a device sync on every call);
        load_audio and check_waveform do it where the audio enters. Not differentiable (the
        mel products write into preallocated buffers).
        """
        check_input(wave, self.window.device)
        x = wave.reshape(-1, wave.shape[-1]).to(self.mel_fb.dtype)  # (B, S)
        n_frames = self.num_frames(x.shape[-1])
        out = x.new_empty(x.shape[0], self.cfg.n_mels, n_frames)  # (B, F, T)
        for t0, t1 in frame_chunks(n_frames, x, self.cpu_chunk_frames):
            out[:, :, t0:t1] = self._log_mel(frame_span(x, t0, t1, self.cfg.hop_length, self.cfg.n_fft))
        return out[0] if wave.ndim == 1 else out

    def _log_mel(self, samples: torch.Tensor) -> torch.Tensor:
        """Samples (B, S') whose frames are all complete -> log-mel (B, F, T') of those frames."""
        spec = torch.stft(
            samples.to(self.window.dtype), self.cfg.n_fft, self.cfg.hop_length, self.cfg.win_length, self.window,
            center=False, return_complex=True,
        )  # (B, K, T') complex128, K = n_fft // 2 + 1, laid out in memory as (B, T', K)
        re_im = torch.view_as_real(spec).square_()  # (B, K, T', 2), in place: spec is ours
        power = (re_im[..., 0] + re_im[..., 1]).transpose(1, 2).to(self.mel_fb.dtype)  # (B, T', K) float32
        power = power.view(-1, spec.shape[1])  # (B*T', K)
        # One 2-D product per filter group, over the FFT bins that group spans. The result is
        # laid out (F, B, T') so that the caller's copy into (B, F, T') moves whole rows of T'.
        mel = power.new_empty(self.cfg.n_mels, power.shape[0])  # (F, B*T')
        for f0, f1, k0, k1 in self._bands:
            torch.mm(self.mel_fb[f0:f1, k0:k1], power[:, k0:k1].T, out=mel[f0:f1])
        mel.add_(self.cfg.eps).log_()
        return mel.view(self.cfg.n_mels, spec.shape[0], -1).transpose(0, 1)  # (B, F, T')
