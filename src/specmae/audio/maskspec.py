"""MaskSpec's front-end (PaSST's `AugmentMelSTFT`): waveform (S,) or (B, S) -> log-mel (F, T) or (B, F, T).

The recipe, at 32 kHz with `FrontendConfig.maskspec()`:

1. pre-emphasis y[n] = x[n + 1] - 0.97 x[n], as PaSST's unpadded conv1d with kernel [-0.97, 1]:
   S samples give S - 1;
2. centred STFT of y with reflect padding, n_fft 1024, hop 320, a symmetric (periodic=False)
   Hann window of 800 samples zero-padded on both sides to 1024; power |X|^2;
3. Kaldi triangular mel banks (`kaldi_mel_banks`: 128 bins, 0-15,000 Hz), Nyquist bin weight 0;
4. log(mel + 1e-5), then (x + 4.5) / 5, PaSST's fixed rescaling towards zero mean, unit spread.

PaSST and MaskSpec also jitter f_min (up to +10 Hz) and f_max (+-1000 Hz) while training. That
is left out here: it would make the front-end random and stateful, and it belongs to the
fine-tuning augmentations, not to the features. This module is the evaluation-mode front-end.
"""

from __future__ import annotations

import numpy as np
import torch

from ..schema import ConfigError
from .frontend import FrontendConfig, check_input, frame_chunks, frame_span

PRE_EMPHASIS = 0.97


def _kaldi_mel(hz: np.ndarray | float) -> np.ndarray:
    """Kaldi's (HTK's) mel scale with natural log: 1127 ln(1 + f / 700)."""
    return 1127.0 * np.log1p(np.asarray(hz, dtype=np.float64) / 700.0)


def kaldi_mel_banks(n_mels: int, n_fft: int, sample_rate: float, f_min: float, f_max: float) -> np.ndarray:
    """Kaldi triangular mel banks, float32 (n_mels, n_fft // 2 + 1); computed in float64.

    The definition of torchaudio.compliance.kaldi.get_mel_banks (no VTLN warping): n_mels + 2
    corners evenly spaced in mel between f_min and f_max, triangles of peak 1 without area
    normalisation, evaluated at the mel of each FFT bin k * sample_rate / n_fft for k < n_fft / 2.
    Kaldi has no Nyquist bin; PaSST appends it with weight 0, as this does. An f_max <= 0 means
    Nyquist + f_max, Kaldi's convention.
    """
    nyquist = sample_rate / 2
    high = f_max + nyquist if f_max <= 0 else f_max
    if n_mels < 1 or n_fft < 2 or n_fft % 2:
        raise ValueError(f"n_mels {n_mels}, n_fft {n_fft}: expected n_mels >= 1 and an even n_fft >= 2")
    if not 0 <= f_min < high <= nyquist:
        raise ValueError(f"f_min {f_min}, f_max {f_max} (= {high} Hz): expected 0 <= f_min < f_max <= "
                         f"Nyquist = {nyquist} Hz")
    mel_low, mel_high = _kaldi_mel(f_min), _kaldi_mel(high)
    delta = (mel_high - mel_low) / (n_mels + 1)
    corners = mel_low + delta * np.arange(n_mels + 2)  # (F + 2,): left of bin b is b, centre b + 1, right b + 2
    mel = _kaldi_mel(sample_rate / n_fft * np.arange(n_fft // 2))[None, :]  # (1, K - 1)
    rising = (mel - corners[:-2, None]) / delta  # (F, K - 1)
    falling = (corners[2:, None] - mel) / delta
    bank = np.maximum(0.0, np.minimum(rising, falling))
    return np.pad(bank, ((0, 0), (0, 1))).astype(np.float32)  # (F, K)


class MaskSpecFrontend(torch.nn.Module):
    """Waveform -> MaskSpec log-mel, batched, on the device of its buffers.

    Same contract as LogMelFrontend: `cfg`, `num_frames`, float32 output (B, F, T) or (F, T),
    AudioError for empty audio, ValueError for other shapes or a device mismatch. Buffers are
    non-persistent (rebuilt from the config, never in checkpoints): `window` (win_length,)
    symmetric Hann in float64, `mel_fb` (n_mels, n_fft // 2 + 1) Kaldi banks in float32.

    Pre-emphasis and the STFT run in float64 and the power is rounded to float32, as in
    LogMelFrontend: a float32 FFT would leave quiet bins between loud ones with errors of the
    loud bins' size. A 1-sample clip has no pair of samples to pre-emphasise (PaSST's conv1d
    fails); it is taken as one zero sample, so it gives one frame of silence (`cfg.silence`).
    """

    # On CPU the batch is processed this many frames at a time so that the frame, spectrum and
    # power arrays stay in cache, as in LogMelFrontend. GPUs take it whole.
    cpu_chunk_frames = 2048

    def __init__(self, cfg: FrontendConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg if cfg is not None else FrontendConfig.maskspec()
        if cfg.kind != "maskspec":
            raise ConfigError(f"MaskSpecFrontend is the 'maskspec' front-end, not {cfg.kind!r}: use build_frontend")
        bank = kaldi_mel_banks(cfg.n_mels, cfg.n_fft, cfg.sample_rate, cfg.f_min, cfg.f_max)
        self.register_buffer(
            "window", torch.hann_window(cfg.win_length, periodic=False, dtype=torch.float64), persistent=False
        )
        self.register_buffer("mel_fb", torch.from_numpy(bank), persistent=False)

    def num_frames(self, n_samples: int) -> int:
        """Frames of a clip of n_samples: 1 + (n_samples - 1) // hop (pre-emphasis drops a sample)."""
        return self.cfg.num_frames(n_samples)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        """wave (B, S) or (S,) at cfg.sample_rate -> log-mel (B, F, T) or (F, T) float32, T = num_frames(S).

        Values are not scanned for NaN/inf here (that would force a device sync on every call);
        load_audio and check_waveform do it where the audio enters. Not differentiable.
        """
        check_input(wave, self.window.device)
        x = wave.reshape(-1, wave.shape[-1]).to(self.window.dtype)  # (B, S) float64
        if x.shape[-1] == 1:
            y = torch.zeros_like(x)
        else:
            y = x[:, 1:] - PRE_EMPHASIS * x[:, :-1]  # (B, S - 1)
        n_frames = self.num_frames(x.shape[-1])
        out = self.mel_fb.new_empty(x.shape[0], self.cfg.n_mels, n_frames)  # (B, F, T)
        for t0, t1 in frame_chunks(n_frames, x, self.cpu_chunk_frames):
            out[:, :, t0:t1] = self._log_mel(frame_span(y, t0, t1, self.cfg.hop_length, self.cfg.n_fft))
        return out[0] if wave.ndim == 1 else out

    def _log_mel(self, samples: torch.Tensor) -> torch.Tensor:
        """Pre-emphasised samples (B, S') whose frames are all complete -> log-mel (B, F, T')."""
        spec = torch.stft(
            samples, self.cfg.n_fft, self.cfg.hop_length, self.cfg.win_length, self.window,
            center=False, return_complex=True,
        )  # (B, K, T') complex128, K = n_fft // 2 + 1; torch.stft centres the window in n_fft
        re_im = torch.view_as_real(spec).square_()  # (B, K, T', 2), in place: spec is ours
        power = (re_im[..., 0] + re_im[..., 1]).to(self.mel_fb.dtype)  # (B, K, T') float32
        mel = torch.matmul(self.mel_fb, power)  # (B, F, T')
        return mel.add_(self.cfg.eps).log_().add_(4.5).div_(5.0)
