"""MaskSpec (PaSST) front-end: Kaldi mel banks and the whole recipe held to float64 numpy
references written here from the definitions, on synthetic audio and FSDD recordings."""

import csv
import math

import numpy as np
import pytest
import torch

from specmae.audio import (AudioError, FrontendConfig, LogMelFrontend, MaskSpecFrontend, build_frontend,
                           kaldi_mel_banks, load_audio)

CFG = FrontendConfig.maskspec()
# Max |difference| allowed in the output domain, (log(mel + 1e-5) + 4.5) / 5. Measured: <= 2.6e-7
# on every input below (float32 power and mel product against float64 throughout).
TOL = 1e-6


@pytest.fixture(scope="module")
def frontend():
    return MaskSpecFrontend(CFG)


def reference_banks(n_mels=128, n_fft=1024, sr=32000.0, low=0.0, high=15000.0) -> np.ndarray:
    """torchaudio.compliance.kaldi.get_mel_banks (no warping) bin by bin, plus a zero Nyquist column."""
    def mel(f):
        return 1127.0 * math.log(1.0 + f / 700.0)

    if high <= 0:
        high += sr / 2
    width = sr / n_fft
    m_low, m_high = mel(low), mel(high)
    delta = (m_high - m_low) / (n_mels + 1)
    bank = np.zeros((n_mels, n_fft // 2 + 1))
    for b in range(n_mels):
        left, centre, right = m_low + b * delta, m_low + (b + 1) * delta, m_low + (b + 2) * delta
        for k in range(n_fft // 2):
            m = mel(width * k)
            bank[b, k] = max(0.0, min((m - left) / (centre - left), (right - m) / (right - centre)))
    return bank


BANK64 = reference_banks()


def reference_frontend(y: np.ndarray) -> np.ndarray:
    """The recipe in float64 numpy: (S,) -> (F, T)."""
    y = y.astype(np.float64)
    pre = y[1:] - 0.97 * y[:-1] if len(y) > 1 else np.zeros(1)  # one sample: one zero sample
    padded = np.pad(pre, CFG.n_fft // 2, mode="reflect")
    frames = np.lib.stride_tricks.sliding_window_view(padded, CFG.n_fft)[:: CFG.hop_length]  # (T, n_fft)
    window = np.zeros(CFG.n_fft)
    left = (CFG.n_fft - CFG.win_length) // 2
    window[left : left + CFG.win_length] = np.hanning(CFG.win_length)  # symmetric Hann, centred
    power = np.abs(np.fft.rfft(frames * window, axis=-1)) ** 2  # (T, K)
    return (np.log(BANK64 @ power.T + CFG.eps) + 4.5) / 5


def synthetic(n: int, seed: int = 0) -> np.ndarray:
    """Tones (70 Hz, 440 Hz, 3 kHz, 12 kHz) over noise, float32 (n,) at 32 kHz."""
    rng = np.random.default_rng(seed)
    t = np.arange(n) / CFG.sample_rate
    y = sum(a * np.sin(2 * np.pi * f * t) for a, f in [(0.4, 70), (0.3, 440), (0.2, 3000), (0.05, 12000)])
    return (y + 0.01 * rng.standard_normal(n)).astype(np.float32)


def max_diff(frontend, y: np.ndarray) -> float:
    ours = frontend(torch.from_numpy(y)).numpy()
    ref = reference_frontend(y)
    assert ours.dtype == np.float32 and ours.shape == ref.shape == (CFG.n_mels, CFG.num_frames(len(y)))
    return float(np.abs(ours - ref).max())


# ------------------------------------------------------------------------------------------
# Mel banks
# ------------------------------------------------------------------------------------------


def test_banks_equal_kaldi_definition():
    ours = kaldi_mel_banks(CFG.n_mels, CFG.n_fft, CFG.sample_rate, CFG.f_min, CFG.f_max)
    assert ours.dtype == np.float32 and ours.shape == (128, 513)
    np.testing.assert_allclose(ours, BANK64, rtol=0, atol=1e-6)
    assert not ours[:, -1].any()
    assert (ours > 0).any(axis=1).all()
    assert np.array_equal(ours > 0, BANK64 > 0)


def test_banks_other_parameters_and_errors():
    # Kaldi's convention: f_max <= 0 counts down from Nyquist
    ours = kaldi_mel_banks(64, 512, 16000, 20.0, -400.0)
    np.testing.assert_allclose(ours, reference_banks(64, 512, 16000.0, 20.0, -400.0), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="f_max 17000"):
        kaldi_mel_banks(128, 1024, 32000, 0.0, 17000.0)
    with pytest.raises(ValueError, match="n_fft 1023"):
        kaldi_mel_banks(128, 1023, 32000, 0.0, 15000.0)


# ------------------------------------------------------------------------------------------
# The whole front-end against the float64 reference
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 3, 100, 320, 321, 513, 514, 1000, 10 * 32000 + 7])
def test_matches_reference_on_synthetic(frontend, n):
    assert max_diff(frontend, synthetic(n, seed=n)) < TOL


def test_matches_reference_on_recordings(frontend, fsdd):
    with open(fsdd / "meta.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    worst = 0.0
    for row in rows[:: len(rows) // 12][:12]:  # 12 recordings spread over speakers and digits
        y = load_audio(fsdd / row["path"], CFG.sample_rate)  # 8 kHz files, resampled
        worst = max(worst, max_diff(frontend, y))
    assert worst < TOL


def test_tolerance_catches_a_periodic_window(frontend):
    # PaSST's symmetric window: a periodic one (LogMelFrontend's) must fail the comparison
    y = synthetic(16000)
    wrong = MaskSpecFrontend(CFG)
    wrong.window = torch.hann_window(CFG.win_length, periodic=True, dtype=torch.float64)
    ref = reference_frontend(y)
    assert np.abs(wrong(torch.from_numpy(y)).numpy() - ref).max() > 100 * TOL


# ------------------------------------------------------------------------------------------
# Properties and contract
# ------------------------------------------------------------------------------------------


def test_batch_equals_items_one_by_one(frontend):
    batch = torch.from_numpy(np.stack([synthetic(32000 + 123, seed) for seed in range(3)]))
    out = frontend(batch)
    assert out.shape == (3, CFG.n_mels, CFG.num_frames(batch.shape[1]))
    for i in range(3):
        torch.testing.assert_close(out[i], frontend(batch[i]), rtol=0, atol=1e-6)


def test_chunked_cpu_path_equals_one_pass(frontend):
    waves = torch.from_numpy(np.stack([synthetic(20000, seed) for seed in range(3)]))
    small_chunks = MaskSpecFrontend(CFG)
    small_chunks.cpu_chunk_frames = 7  # 2 frames per chunk for 3 clips: many chunk edges
    torch.testing.assert_close(small_chunks(waves), frontend(waves), rtol=0, atol=1e-6)


@pytest.mark.parametrize("n", [1, 2, 320, 321, 641, 32000])
def test_frame_count_and_silence(frontend, n):
    out = frontend(torch.zeros(2, n))
    assert out.shape == (2, CFG.n_mels, CFG.num_frames(n)) == (2, 128, 1 + (max(n - 1, 0)) // 320)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, torch.full_like(out, CFG.silence), rtol=0, atol=1e-6)


def test_one_sample_is_one_frame_of_silence(frontend):
    out = frontend(torch.tensor([0.5]))
    assert out.shape == (CFG.n_mels, 1)
    torch.testing.assert_close(out, torch.full_like(out, CFG.silence), rtol=0, atol=1e-6)


def test_build_frontend_picks_the_implementation():
    assert isinstance(build_frontend(FrontendConfig.maskspec()), MaskSpecFrontend)
    assert isinstance(build_frontend(FrontendConfig()), LogMelFrontend)
    with pytest.raises(ValueError, match="msm-mae"):
        MaskSpecFrontend(FrontendConfig())


def test_buffers_are_not_saved_and_bad_inputs(frontend):
    assert frontend.state_dict() == {}
    assert {name for name, _ in frontend.named_buffers()} == {"window", "mel_fb"}
    with pytest.raises(AudioError, match="empty"):
        frontend(torch.zeros(0))
    with pytest.raises(AudioError, match="empty"):
        frontend(torch.zeros(2, 0))
    with pytest.raises(ValueError, match=r"\(B, S\) or \(S,\), got \(2, 2, 100\)"):
        frontend(torch.zeros(2, 2, 100))
    if torch.cuda.is_available():
        with pytest.raises(ValueError, match="use .to"):
            frontend(torch.zeros(100, device="cuda"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu(frontend):
    y = torch.from_numpy(np.stack([synthetic(48000, s) for s in range(2)]))
    gpu = MaskSpecFrontend(CFG).cuda()
    torch.testing.assert_close(gpu(y.cuda()).cpu(), frontend(y), rtol=0, atol=1e-5)
