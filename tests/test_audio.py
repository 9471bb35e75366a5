"""Front-end tests: decoding and resampling, and the log-mel held to librosa and to the official golden files."""

import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from conftest import GOLDEN, GOLDEN_MODELS, golden_frontend_config, shared_dir
from specmae.audio import (AudioError, FrontendConfig, LogMelFrontend, check_waveform, load_audio, mel_filterbank, reflect_indices, resample)

FSDD = shared_dir() / "data" / "fsdd" / "recordings"
EPS32 = float(np.finfo(np.float32).eps)
CFG = FrontendConfig()


@pytest.fixture(scope="module")
def frontend():
    return LogMelFrontend()


def librosa_mel(y: np.ndarray, cfg: FrontendConfig = CFG) -> np.ndarray:
    """librosa's power mel spectrogram (F, T), linear, with MSM-MAE's parameters."""
    librosa = pytest.importorskip("librosa")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # librosa warns that n_fft is too large for short inputs
        return librosa.feature.melspectrogram(
            y=y, sr=cfg.sample_rate, n_fft=cfg.n_fft, hop_length=cfg.hop_length, win_length=cfg.win_length,
            window="hann", center=True, pad_mode="reflect", power=2.0, n_mels=cfg.n_mels,
            fmin=cfg.f_min, fmax=cfg.f_max, htk=False, norm="slaney",
        )


def numpy_mel(y: np.ndarray, cfg: FrontendConfig = CFG) -> np.ndarray:
    """Direct float64 reference (F, T): np.pad reflect, periodic Hann, rfft, power, mel."""
    librosa = pytest.importorskip("librosa")
    bank = librosa.filters.mel(sr=cfg.sample_rate, n_fft=cfg.n_fft, n_mels=cfg.n_mels, fmin=cfg.f_min,
                               fmax=cfg.f_max, htk=False, norm="slaney", dtype=np.float64)
    padded = np.pad(y.astype(np.float64), cfg.n_fft // 2, mode="reflect")
    frames = np.lib.stride_tricks.sliding_window_view(padded, cfg.n_fft)[:: cfg.hop_length]  # (T, n_fft)
    window = np.hanning(cfg.n_fft + 1)[:-1]  # periodic Hann
    return bank @ (np.abs(np.fft.rfft(frames * window, axis=-1)) ** 2).T


def assert_lms_close(ours: np.ndarray, ref_mel: np.ndarray, eps: float = CFG.eps) -> float:
    """Compare our log-mel (F, T) with a reference linear mel (F, T); returns the max |difference|.

    A float32 STFT makes an error that is absolute on the scale of the frame's loudest bins, not
    relative to each bin, so a bin far below its frame's peak carries a large relative error, and
    log(mel + eps) turns relative error into absolute error until eps takes over. Measured against
    librosa on 36 clips (tones, noise, FSDD speech, golden waves): every |d| > 1e-5 is below
    1.6 * EPS32 * sqrt(peak / (mel + eps)) (worst case: tones over a faint noise floor, |d| 7.6e-4
    at mel 2.6e-7), and |d| <= 6e-6 anywhere within 30 dB of its frame's peak. We allow 1e-5 plus 8x
    that term (>= 4x margin on all 36); a symmetric instead of periodic window already breaks it
    (test_tolerance_catches_a_wrong_window).
    """
    ref_mel = np.maximum(ref_mel.astype(np.float64), 0.0)
    ref = np.log(ref_mel + eps)
    peak = ref_mel.max(axis=0, keepdims=True)  # (1, T) per frame
    tol = 1e-5 + 8 * EPS32 * np.sqrt(peak / (ref_mel + eps))
    diff = np.abs(ours.astype(np.float64) - ref)
    assert ours.shape == ref.shape
    bad = diff > tol
    assert not bad.any(), f"{bad.sum()} bins off; worst excess {np.max(diff - tol):.3g}, max |d| {diff.max():.3g}"
    return float(diff.max())


def synthetic(n: int, seed: int = 0, sr: int = CFG.sample_rate) -> np.ndarray:
    """Seeded noise plus two tones (440 Hz, 3 kHz), float32 (n,)."""
    rng = np.random.default_rng(seed)
    t = np.arange(n) / sr
    y = 0.5 * np.sin(2 * np.pi * 440 * t) + 0.3 * np.sin(2 * np.pi * 3000 * t) + 0.01 * rng.standard_normal(n)
    return y.astype(np.float32)


def sine(freq: float, sr: int, seconds: float = 1.0, channels: int = 1) -> np.ndarray:
    t = np.arange(int(sr * seconds)) / sr
    y = 0.5 * np.sin(2 * np.pi * freq * t).astype(np.float32)
    return np.repeat(y[:, None], channels, axis=1) if channels > 1 else y


def peak_hz(y: np.ndarray, sr: int) -> float:
    spectrum = np.abs(np.fft.rfft(y * np.hanning(len(y))))
    return float(np.fft.rfftfreq(len(y), 1.0 / sr)[spectrum.argmax()])


# ------------------------------------------------------------------------------------------
# Configuration and filter bank
# ------------------------------------------------------------------------------------------


def test_config_round_trip_and_validation():
    cfg = FrontendConfig.msm_mae_32k()
    assert (cfg.sample_rate, cfg.n_fft, cfg.win_length, cfg.hop_length, cfg.n_mels) == (32000, 800, 800, 320, 80)
    assert FrontendConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown"):
        FrontendConfig.from_dict({**CFG.to_dict(), "n_fftt": 512})
    with pytest.raises(ValueError, match="f_max"):
        FrontendConfig(f_max=9000.0)


@pytest.mark.parametrize("cfg", [CFG, FrontendConfig.msm_mae_32k()], ids=["16k", "32k"])
def test_mel_filterbank_matches_librosa(cfg):
    librosa = pytest.importorskip("librosa")
    ref = librosa.filters.mel(sr=cfg.sample_rate, n_fft=cfg.n_fft, n_mels=cfg.n_mels, fmin=cfg.f_min,
                              fmax=cfg.f_max, htk=False, norm="slaney")
    ours = mel_filterbank(cfg.sample_rate, cfg.n_fft, cfg.n_mels, cfg.f_min, cfg.f_max)
    assert ours.dtype == np.float32 and ours.shape == (cfg.n_mels, cfg.n_fft // 2 + 1)
    # librosa rounds to float32 before its area normalisation, we after: at most ~1 ulp apart.
    np.testing.assert_allclose(ours, ref, rtol=3e-7, atol=1e-7 * ref.max())
    assert np.array_equal(ours > 0, ref > 0)


@pytest.mark.parametrize("n", list(range(1, 12)) + [150, 199, 200, 201, 202, 399, 400, 401, 1000])
def test_reflect_padding_equals_numpy(n):
    padded = reflect_indices(torch.arange(-200, n + 200), n).numpy()
    np.testing.assert_array_equal(padded, np.pad(np.arange(n), 200, mode="reflect"))


# ------------------------------------------------------------------------------------------
# Log-mel against references
# ------------------------------------------------------------------------------------------


def test_logmel_matches_librosa_on_synthetic(frontend):
    y = synthetic(3 * 16000 + 77)
    ours = frontend(torch.from_numpy(y)).numpy()
    assert_lms_close(ours, librosa_mel(y))


def test_logmel_32k_matches_librosa():
    cfg = FrontendConfig.msm_mae_32k()
    y = synthetic(2 * 32000 + 5, sr=32000)
    ours = LogMelFrontend(cfg)(torch.from_numpy(y)).numpy()
    assert ours.shape == (80, 1 + len(y) // 320)
    assert_lms_close(ours, librosa_mel(y, cfg), eps=cfg.eps)


def test_tolerance_catches_a_wrong_window():
    wrong = LogMelFrontend()
    wrong.window = torch.hann_window(CFG.win_length, periodic=False, dtype=torch.float64)
    y = synthetic(16000)
    with pytest.raises(AssertionError, match="bins off"):
        assert_lms_close(wrong(torch.from_numpy(y)).numpy(), librosa_mel(y))


def test_logmel_is_float64_grade_between_loud_bins(frontend):
    """Four loud tones over noise 50 dB down: the quiet bins between them are where a float32
    FFT errs (its error scales with the frame's loudest bins): 4.2e-4 here in the log domain,
    with 7.9e-6 median. The front-end's float64 FFT keeps every bin within 6.1e-7 of numpy's
    float64 reference, which is what holds it to the golden files on any CPU."""
    rng = np.random.default_rng(0)
    t = np.arange(32000) / CFG.sample_rate
    tones = sum(0.3 * np.sin(2 * np.pi * f * t + rng.uniform(0, 6)) for f in (130, 447, 1230, 3100))
    y = (tones + 1e-3 * rng.standard_normal(t.size)).astype(np.float32)
    ours = frontend(torch.from_numpy(y)).numpy()
    np.testing.assert_allclose(ours, np.log(numpy_mel(y) + CFG.eps), rtol=0, atol=3e-6)


@pytest.mark.skipif(not FSDD.is_dir(), reason=f"no recordings at {FSDD}")
def test_logmel_matches_librosa_on_recordings(frontend):
    files = sorted(FSDD.glob("*.wav"))[::500]  # 6 speakers/digits, 8 kHz, resampled to 16 kHz
    for path in files:
        y = load_audio(path, 16000)
        assert len(y) == 2 * sf.info(str(path)).frames
        assert_lms_close(frontend(torch.from_numpy(y)).numpy(), librosa_mel(y))


@pytest.mark.parametrize("n", [1, 2, 150, 199, 200, 201, 399, 400, 401])
def test_logmel_shorter_than_a_window(frontend, n):
    y = np.random.default_rng(n).uniform(-1, 1, n).astype(np.float32)
    ours = frontend(torch.from_numpy(y)).numpy()
    assert ours.shape == (80, 1 + n // 160)
    assert_lms_close(ours, numpy_mel(y))
    assert_lms_close(ours, librosa_mel(y))


@pytest.mark.parametrize("suffix", ["", "_len16000", "_len33120", "_len81760"])
def test_golden_parity(suffix):
    waves, lms = GOLDEN / f"waves{suffix}.npy", GOLDEN / f"lms{suffix}.npy"
    if not (waves.exists() and lms.exists()):
        pytest.skip(f"golden files not found under {GOLDEN} (set SPECMAE_SHARED)")
    # The log-mel files are shared: every golden model's runtime produced them, so their
    # front-end settings must agree, and ours is built from them.
    configs = [golden_frontend_config(folder) for folder in GOLDEN_MODELS]
    assert configs and all(c == configs[0] for c in configs), f"golden runtime_config differ: {configs}"
    frontend = LogMelFrontend(configs[0])
    golden = np.load(lms)  # (3, 1, F, T), official nnAudio front-end
    ours = frontend(torch.from_numpy(np.load(waves)))[:, None]
    assert ours.shape == golden.shape
    # Measured max |d|: 1.9e-5 / 1.1e-5 / 3.4e-5 / 2.0e-5, which is the golden files' own distance
    # from a float64 computation (the official front-end is a float32 conv1d DFT); ours is within
    # 3e-7 of float64. A float32 FFT was 1.7e-4 off on _len33120 on one CPU (Intel, MKL) and 4.7e-5
    # on another (AMD): the reason the FFT runs in float64.
    np.testing.assert_allclose(ours.numpy(), golden, rtol=0, atol=5e-5)


# ------------------------------------------------------------------------------------------
# Properties
# ------------------------------------------------------------------------------------------


def test_batch_equals_items_one_by_one(frontend):
    batch = torch.from_numpy(np.stack([synthetic(16000 + 321, seed) for seed in range(4)]))
    out = frontend(batch)
    assert out.shape == (4, 80, 1 + (16000 + 321) // 160)
    for i in range(4):
        torch.testing.assert_close(out[i], frontend(batch[i]), rtol=0, atol=1e-6)


def test_chunked_cpu_path_equals_one_pass(frontend):
    waves = torch.from_numpy(np.stack([synthetic(40000, seed) for seed in range(3)]))
    small_chunks = LogMelFrontend()
    small_chunks.cpu_chunk_frames = 7  # 2 frames per chunk for 3 clips: many chunk edges
    torch.testing.assert_close(small_chunks(waves), frontend(waves), rtol=0, atol=1e-6)
    short = waves[:, :250]  # every frame reaches past both ends of the clip
    small_chunks.cpu_chunk_frames = 1
    torch.testing.assert_close(small_chunks(short), frontend(short), rtol=0, atol=1e-6)


@pytest.mark.parametrize("cfg", [CFG, FrontendConfig.msm_mae_32k()], ids=["16k", "32k"])
def test_frame_count_dtype_finite(cfg):
    fe = LogMelFrontend(cfg)
    hop = cfg.hop_length
    for n in [1, 2, hop - 1, hop, hop + 1, 399, 400, 401, 1000, 16000, 16159, 33120, 81760]:
        out = fe(torch.zeros(2, n, dtype=torch.float64) + 0.1)
        assert out.shape == (2, cfg.n_mels, 1 + n // hop) and fe.num_frames(n) == 1 + n // hop
        assert out.dtype == torch.float32 and torch.isfinite(out).all()
    silent = fe(torch.zeros(1000))
    torch.testing.assert_close(silent, torch.full_like(silent, float(np.log(np.float32(cfg.eps)))))


def test_frontend_buffers_and_bad_inputs(frontend):
    assert frontend.window.shape == (400,) and frontend.mel_fb.shape == (80, 201)
    assert not frontend.state_dict()  # derived from the config, never saved
    with pytest.raises(AudioError, match="0 samples"):
        frontend(torch.zeros(2, 0))
    with pytest.raises(ValueError, match="shape"):
        frontend(torch.zeros(1, 1, 400))
    with pytest.raises(ValueError, match="meta"):
        frontend(torch.zeros(1, 400, device="meta"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu(frontend):
    y = torch.from_numpy(np.stack([synthetic(48000, s) for s in range(2)]))
    gpu = LogMelFrontend().cuda()(y.cuda()).cpu()
    torch.testing.assert_close(gpu, frontend(y), rtol=0, atol=1e-3)


def test_check_waveform():
    check_waveform(np.zeros(3, np.float32))
    check_waveform(torch.zeros(2, 3))
    for bad, reason in [(np.zeros(0), "0 samples"), (torch.zeros(2, 0), "0 samples"),
                        (np.array([0.0, np.nan]), "non-finite"), (torch.tensor([np.inf, 0.0]), "non-finite")]:
        with pytest.raises(AudioError, match=f"clip7: .*{reason}"):
            check_waveform(bad, name="clip7")


# ------------------------------------------------------------------------------------------
# Decoding, mixing, resampling
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt,subtype,atol", [
    ("WAV", "PCM_16", 1 / 32768), ("WAV", "FLOAT", 0.0), ("FLAC", "PCM_16", 1 / 32768),
    ("OGG", "VORBIS", None), ("MP3", "MPEG_LAYER_III", None),
])
def test_load_formats_stereo_to_mono(tmp_path, fmt, subtype, atol):
    stereo = np.stack([sine(1000, 16000), sine(1000, 16000) * 0.5], axis=1)  # (S, 2)
    path = tmp_path / f"clip.{fmt.lower()}"
    try:
        sf.write(str(path), stereo, 16000, format=fmt, subtype=subtype)
    except (sf.LibsndfileError, ValueError, TypeError) as e:
        pytest.skip(f"this libsndfile cannot write {fmt}: {e}")
    y = load_audio(path, 16000)
    assert y.dtype == np.float32 and y.ndim == 1
    if atol is not None:  # lossless: exactly the channel mean, up to the sample format
        np.testing.assert_allclose(y, stereo.mean(axis=1), rtol=0, atol=atol)
    else:  # lossy codecs: same length (+- encoder padding) and the same tone
        assert abs(len(y) - len(stereo)) <= 2048
        assert abs(peak_hz(y, 16000) - 1000) <= 2


def test_six_channels_mix_to_mean(tmp_path):
    rng = np.random.default_rng(6)
    data = rng.uniform(-0.9, 0.9, size=(8000, 6)).astype(np.float32)
    sf.write(str(tmp_path / "six.wav"), data, 16000, subtype="FLOAT")
    np.testing.assert_allclose(load_audio(tmp_path / "six.wav", 16000), data.mean(axis=1), rtol=0, atol=1e-7)


@pytest.mark.parametrize("sr", [8000, 44100, 96000])
def test_load_resamples_to_target_rate(tmp_path, sr):
    path = tmp_path / f"tone{sr}.wav"
    sf.write(str(path), sine(1000, sr), sr, subtype="FLOAT")
    y = load_audio(path, 16000)
    assert abs(len(y) - 16000) <= 1
    assert abs(peak_hz(y, 16000) - 1000) <= 1
    assert np.isclose(np.abs(y[1000:-1000]).max(), 0.5, atol=5e-3)  # passband gain ~1
    np.testing.assert_array_equal(resample(y, 16000, 16000), y)


def write_bad(kind: str, path: Path) -> None:
    if kind == "text":
        path.write_text("this is not audio, just text with a .wav name\n" * 10)
    elif kind == "zero_bytes":
        path.write_bytes(b"")
    elif kind == "no_frames":
        sf.write(str(path), np.zeros((0, 1), np.float32), 16000)
    elif kind == "two_samples_96k":
        sf.write(str(path), np.array([0.1, 0.2], np.float32), 96000, subtype="FLOAT")
    elif kind == "nan":
        y = sine(440, 16000, 0.1)
        y[100] = np.nan
        sf.write(str(path), y, 16000, subtype="FLOAT")


@pytest.mark.parametrize("kind,reason", [
    ("missing", "not found"), ("text", "cannot decode"), ("zero_bytes", "empty file"),
    ("no_frames", "0 samples"), ("nan", "non-finite"), ("two_samples_96k", "too short"),
])
def test_load_errors_name_file_and_reason(tmp_path, kind, reason):
    path = tmp_path / f"{kind}.wav"
    write_bad(kind, path)
    with pytest.raises(AudioError) as info:
        load_audio(path, 16000)
    assert str(path) in str(info.value) and reason in str(info.value)
