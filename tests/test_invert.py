"""Log-mel inversion (audio/invert.py): pitch and spectrum survive the round trip through each
front-end, the pieces are exact where they can be, and bad input is refused."""

import numpy as np
import pytest
import torch

from specmae.audio import FrontendConfig, build_frontend, invert_lms
from specmae.audio.invert import mel_power, mel_to_linear, undo_pre_emphasis
from specmae.audio.maskspec import PRE_EMPHASIS

FRONTENDS = {"msm-mae": FrontendConfig(), "maskspec": FrontendConfig.maskspec()}


def harmonic_tone(sr: int, f0: float = 220.0, seconds: float = 1.0, noise_db: float = -50.0) -> np.ndarray:
    """f0 and its next five harmonics at falling levels, over a faint white-noise floor (so that no
    mel bin is digital silence, which the log would make the whole comparison about)."""
    t = np.arange(int(sr * seconds)) / sr
    x = sum(0.3 / k * np.sin(2 * np.pi * f0 * k * t + k) for k in range(1, 7))
    x += 10 ** (noise_db / 20) * np.random.default_rng(0).standard_normal(t.size)
    return x.astype(np.float32)


def f0_autocorrelation(x: np.ndarray, sr: int, lo: float = 60.0, hi: float = 1000.0) -> float:
    """Fundamental by the autocorrelation peak between 1/hi and 1/lo s, refined by a parabola."""
    x = x - x.mean()
    r = np.fft.irfft(np.abs(np.fft.rfft(x, 2 * x.size)) ** 2)[: x.size]
    a, b = int(sr / hi), int(sr / lo)
    k = a + int(np.argmax(r[a:b]))
    shift = 0.5 * (r[k - 1] - r[k + 1]) / (r[k - 1] - 2 * r[k] + r[k + 1])
    return sr / (k + shift)


def log_mel(cfg: FrontendConfig, wave: np.ndarray) -> np.ndarray:
    return build_frontend(cfg)(torch.from_numpy(wave)).numpy()


@pytest.mark.parametrize("kind", FRONTENDS)
def test_round_trip_keeps_pitch_and_spectrum(kind):
    cfg = FRONTENDS[kind]
    tone = harmonic_tone(cfg.sample_rate)
    lms = log_mel(cfg, tone)
    wave = invert_lms(lms, cfg)
    assert wave.dtype == np.float32 and wave.ndim == 1
    back = log_mel(cfg, wave)
    assert back.shape == lms.shape  # the front-end gives the same frames back
    assert f0_autocorrelation(wave, cfg.sample_rate) == pytest.approx(220.0, rel=0.01)
    # Spectral convergence on the mel power, and log-mel error against that of unrelated noise
    # at the same level: Griffin-Lim is not exact, but it is far from a random signal.
    mel, mel_back = np.exp(lms), np.exp(back)
    assert np.linalg.norm(mel_back - mel) / np.linalg.norm(mel) < 0.2
    noise = np.random.default_rng(1).standard_normal(tone.size).astype(np.float32) * tone.std()
    error, noise_error = ((back - lms) ** 2).mean(), ((log_mel(cfg, noise) - lms) ** 2).mean()
    assert error < 0.02 * noise_error
    # Without the front-end's own log offset and scale the level would be off by orders of magnitude.
    assert np.sqrt((wave ** 2).mean()) == pytest.approx(np.sqrt((tone ** 2).mean()), rel=0.1)


def test_matches_librosa_mel_to_audio_on_msm_mae():
    """librosa's mel_to_audio (L-BFGS-B NNLS, the same fast Griffin-Lim) on the same mel power:
    ours fits the mel filters more closely and gives a log-mel at least as close to the input."""
    librosa = pytest.importorskip("librosa")
    cfg = FRONTENDS["msm-mae"]
    tone = harmonic_tone(cfg.sample_rate, seconds=0.5)
    lms = log_mel(cfg, tone)
    mel = mel_power(lms, cfg).numpy()
    np.random.seed(0)  # librosa's Griffin-Lim draws its initial phase from numpy's global generator
    theirs = librosa.feature.inverse.mel_to_audio(
        mel, sr=cfg.sample_rate, n_fft=cfg.n_fft, hop_length=cfg.hop_length, win_length=cfg.win_length,
        window="hann", center=True, pad_mode="reflect", power=2.0, n_iter=32, fmin=cfg.f_min, fmax=cfg.f_max,
        htk=False, norm="slaney").astype(np.float32)
    ours = invert_lms(lms, cfg)
    assert ours.shape == theirs.shape
    error = {name: ((log_mel(cfg, w) - lms) ** 2).mean() for name, w in (("ours", ours), ("librosa", theirs))}
    assert error["ours"] <= 1.2 * error["librosa"], error

    fb = build_frontend(cfg).mel_fb
    linear = mel_to_linear(torch.from_numpy(mel), fb).numpy()
    linear_theirs = librosa.util.nnls(fb.numpy().astype(np.float64), mel)
    residual = {name: np.linalg.norm(fb.numpy() @ p - mel) / np.linalg.norm(mel)
                for name, p in (("ours", linear), ("librosa", linear_theirs))}
    assert residual["ours"] <= residual["librosa"], residual


@pytest.mark.parametrize("kind", FRONTENDS)
def test_mel_inversion_is_non_negative_and_fits_the_filters(kind):
    cfg = FRONTENDS[kind]
    fb = build_frontend(cfg).mel_fb
    power = torch.rand(fb.shape[1], 50, generator=torch.Generator().manual_seed(0)) ** 4  # (K, T) spiky spectra
    mel = fb @ power
    linear = mel_to_linear(mel, fb)
    assert linear.shape == power.shape and (linear >= 0).all()
    assert (fb @ linear - mel).norm() / mel.norm() < 1e-2


def test_undo_pre_emphasis_is_the_exact_inverse_filter():
    x = np.random.default_rng(0).standard_normal(1000)
    x[0] = 0.0  # the sample pre-emphasis cannot give back
    y = x[1:] - PRE_EMPHASIS * x[:-1]
    back = undo_pre_emphasis(y, block=64)  # several blocks, the last one partial
    assert back.shape == x.shape
    np.testing.assert_allclose(back, x, atol=1e-10)


@pytest.mark.parametrize("kind", FRONTENDS)
@pytest.mark.parametrize("frames", [1, 2, 37])
def test_any_length_gives_its_frames_back(kind, frames):
    cfg = FRONTENDS[kind]
    lms = np.full((cfg.n_mels, frames), cfg.silence + 1.0, dtype=np.float32)
    wave = invert_lms(lms, cfg, n_iter=2)
    assert np.isfinite(wave).all()
    assert log_mel(cfg, wave).shape == lms.shape


def test_deterministic_for_a_seed():
    cfg = FRONTENDS["msm-mae"]
    lms = log_mel(cfg, harmonic_tone(cfg.sample_rate, seconds=0.3))
    a, b = invert_lms(lms, cfg, n_iter=4, seed=3), invert_lms(lms, cfg, n_iter=4, seed=3)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, invert_lms(lms, cfg, n_iter=4, seed=4))


@pytest.mark.parametrize("lms, match", [
    (np.zeros((64, 10)), r"shape \(64, 10\), expected \(80, T\)"),
    (np.zeros(80), r"expected \(80, T\)"),
    (np.zeros((80, 0)), r"T >= 1"),
    (np.where(np.eye(80, 10) > 0, np.nan, 0.0), "10 of 800 values are NaN or inf"),
    (np.full((80, 3), np.inf), "NaN or inf"),
    (np.full((80, 3), 1e4), "far beyond"),
    (np.full((80, 3), "a"), "expected real numbers"),
])
def test_bad_input(lms, match):
    with pytest.raises(ValueError, match=match):
        invert_lms(lms, FRONTENDS["msm-mae"])


def test_bad_mel_bins_name_the_frontend():
    with pytest.raises(ValueError, match=r"maskspec front-end's 128 mel bins"):
        invert_lms(np.zeros((80, 10)), FRONTENDS["maskspec"])
