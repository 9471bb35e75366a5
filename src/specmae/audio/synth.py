"""Built-in labelled corpus: seedable synthetic sounds, at 16 kHz or any higher rate.

Twelve generative families - tones, sweeps, impulse trains, textures, vowels. Level,
pitch and centre-frequency ranges, duration and onset are drawn at random and overlap
across classes; every clip gets coloured background noise and a third of them a quieter
distractor event from another class. Loudness, broadband energy or spectral centroid
therefore say little about the label; harmonicity, periodicity, sweep direction,
formants and modulation rate say a lot, and those are what masked spectrogram
modelling should learn.

Synthesis is vectorised numpy (no scipy): filters are zero-phase gains applied in the
FFT domain over a whole, zero-padded event, which is exact and cheap at these lengths.
Clip i of a corpus comes from its own generator `default_rng([seed, i])` and its label
from a per-block shuffle, so it does not depend on how many clips are made.

Every family is written in seconds and hertz, so a clip can be synthesised directly at
another rate (32 kHz for MaskSpec): the same classes with the same ranges of frequency,
duration and level, sampled at that rate; clip length in samples scales with the rate.
Tones, sweeps and partials stay below 7.5 kHz at every rate; noise (the background, noise
bursts, noisy AM carriers, the colour of clicks) fills the band up to the rate's Nyquist.
A seed's random draws stay in step across rates until its first draw of noise, whose
length depends on the rate. So a seed gives the same main event at 16 and 32 kHz (same
frequencies, onset, duration) for the tonal, click and vowel families, but not for noise
bursts and noisy AM textures; every draw after the first noise (at the latest the
background noise: its SNR, the clip's level) differs between the rates.
"""

from __future__ import annotations

import csv
import os
from functools import partial
from pathlib import Path

import numpy as np

SAMPLE_RATE = 16000

_TWO_PI = 2.0 * np.pi
_F_TOP = 7500.0  # highest partial synthesised: stays below Nyquist at 16 kHz
# Highest sweep frequency, 7.2 kHz, at every rate (not 0.45 * the rate), so that a chirp
# class covers the same band whatever the rate it is synthesised at.
_F_SWEEP_TOP = 0.45 * SAMPLE_RATE


def _loguniform(rng: np.random.Generator, low: float, high: float) -> float:
    return float(np.exp(rng.uniform(np.log(low), np.log(high))))


# Even 2^a 3^b 5^c sizes: event lengths are random, and an FFT of prime length is slow.
_FFT_SIZES = np.unique([2**a * 3**b * 5**c for a in range(1, 31) for b in range(19)
                        for c in range(13) if 2**a * 3**b * 5**c <= 2**30])


def _fft_size(m: int) -> int:
    """Smallest fast FFT size >= m."""
    return int(_FFT_SIZES[np.searchsorted(_FFT_SIZES, m)])


def _freqs(m: int, sr: int) -> np.ndarray:
    """Frequencies (Hz) of the rfft bins used for an event of m samples (padded FFT size)."""
    return np.fft.rfftfreq(_fft_size(m), 1.0 / sr)


def _fft_filter(x: np.ndarray, gain: np.ndarray) -> np.ndarray:
    """Zero-phase filtering of x (m,) by a real gain over _freqs(m); the padding takes the tail."""
    size = 2 * (len(gain) - 1)
    return np.fft.irfft(np.fft.rfft(x, n=size) * gain, n=size)[:len(x)]


def _coloured_noise(rng: np.random.Generator, gain: np.ndarray, m: int) -> np.ndarray:
    """Gaussian noise (m,) whose amplitude spectrum follows gain over _freqs(m)."""
    spec = rng.standard_normal(len(gain)) + 1j * rng.standard_normal(len(gain))
    return np.fft.irfft(spec * gain, n=2 * (len(gain) - 1))[:m]


def _band(f: np.ndarray, centre: float, octaves: float) -> np.ndarray:
    """Gaussian band in log-frequency; `octaves` is the width between the -8.7 dB points."""
    return np.exp(-0.5 * (np.log2(np.maximum(f, 1.0) / centre) / (octaves / 2)) ** 2)


def _resonator(f: np.ndarray, fc: float, bw: float) -> np.ndarray:
    """Magnitude of an analog two-pole resonator, 1 at DC (the cascade formant model)."""
    return fc**2 / np.sqrt((fc**2 - f**2) ** 2 + (bw * f) ** 2)


def _phase(f_inst: np.ndarray, sr: int, rng: np.random.Generator) -> np.ndarray:
    """Running phase of an instantaneous frequency track (m,) in Hz, random start."""
    return np.cumsum(f_inst) * (_TWO_PI / sr) + rng.uniform(0, _TWO_PI)


def _harmonic_sum(phase: np.ndarray, k: int) -> np.ndarray:
    """sum_{j=1..k} cos(j * phase) in closed form (Dirichlet kernel): two sines, any k."""
    p = np.mod(phase, _TWO_PI)
    half = np.sin(p / 2)
    safe = np.abs(half) > 1e-9
    # At phase 0 the kernel's limit is k; elsewhere the ratio is well conditioned.
    ratio = np.sin((k + 0.5) * p) / (2 * np.where(safe, half, 1.0)) - 0.5
    return np.where(safe, ratio, float(k))


def _impulses(times: np.ndarray, amps: np.ndarray, m: int) -> np.ndarray:
    """(m,) zeros with amps added at sample indices times (coinciding impulses add)."""
    x = np.zeros(m)
    np.add.at(x, np.clip(times, 0, m - 1), amps)
    return x


def _click_colour(rng: np.random.Generator, f: np.ndarray) -> np.ndarray:
    """Spectrum of one click: a broad resonance at a random centre over a weak floor."""
    fc = _loguniform(rng, 400, 5000)
    return _resonator(f, fc, fc * rng.uniform(0.3, 1.5)) * (fc / 1000) ** -1 + 0.05


# Families. Each maps (rng, m, sr) to an event of m samples, at any level; make_clip
# places it in the clip, fades it and sets its level.

def _harmonic(rng, m, sr):
    """Instrument-like tone: many harmonics, slow vibrato, attack and decay."""
    t = np.arange(m) / sr
    f0 = _loguniform(rng, 110, 880)
    depth = rng.uniform(0.005, 0.02)
    f_inst = f0 * (1 + depth * np.sin(_TWO_PI * rng.uniform(4, 7) * t + rng.uniform(0, _TWO_PI)))
    k = max(1, int(_F_TOP / (f0 * (1 + depth))))
    f = _freqs(m, sr)
    # harmonic j gets amplitude j ** -slope: a bright or a mellow timbre
    rolloff = np.minimum(1.0, (np.maximum(f, 1.0) / f0) ** -rng.uniform(0.5, 2.0))
    x = _fft_filter(_harmonic_sum(_phase(f_inst, sr, rng), k), rolloff)
    env = np.minimum(1.0, t / rng.uniform(0.01, 0.1)) * np.exp(-t / rng.uniform(0.3, 3.0))
    return x * env


def _whistle(rng, m, sr):
    """A single steady sinusoid with a slight slow drift."""
    t = np.arange(m) / sr
    f_inst = _loguniform(rng, 250, 4000) * (1 + 0.01 * np.sin(_TWO_PI * rng.uniform(0.2, 1) * t))
    return np.sin(_phase(f_inst, sr, rng))


def _chirp(rng, m, sr, up):
    """1-3 logarithmic sweeps over the same band; only their direction tells up from down."""
    n_sweeps = int(rng.integers(1, 4))
    period = m / n_sweeps
    dur = period * rng.uniform(0.5, 1.0)
    f_lo = _loguniform(rng, 200, 2000)
    f_hi = min(f_lo * _loguniform(rng, 2, 6), _F_SWEEP_TOP)
    tau = np.mod(np.arange(m), period)
    frac = np.minimum(tau / dur, 1.0)
    f_inst = f_lo * (f_hi / f_lo) ** (frac if up else 1 - frac)
    phase = _phase(f_inst, sr, rng)
    # an optional weak second harmonic when it stays below Nyquist
    second = rng.uniform(0, 0.5) if 2 * f_hi < _F_TOP else 0.0
    ramp = int(0.005 * sr)
    gate = np.clip(np.minimum(tau, dur - tau) / ramp, 0.0, 1.0)
    return (np.sin(phase) + second * np.sin(2 * phase)) * gate


def _noise_burst(rng, m, sr):
    """1-4 short bursts of noise in one random band."""
    f = _freqs(m, sr)
    noise = _coloured_noise(rng, _band(f, _loguniform(rng, 300, 6000), rng.uniform(0.5, 3)), m)
    n_bursts = int(rng.integers(1, 5))
    lengths = (rng.uniform(0.05, 0.4, n_bursts) * sr).astype(int)
    starts = rng.integers(0, np.maximum(m - lengths, 1))
    idx = np.arange(m)[:, None]
    pos = (idx - starts) / np.maximum(lengths, 1)
    # sqrt-sine window per burst: a quick rise, a broad top; overlapping bursts add
    env = np.where((pos >= 0) & (pos <= 1), np.sin(np.pi * np.clip(pos, 0, 1)) ** 0.5, 0.0)
    return noise * env.sum(axis=1)


def _click_train(rng, m, sr):
    """Periodic clicks at 5-50 Hz with a little timing and amplitude jitter."""
    period = sr / _loguniform(rng, 5, 50)
    times = np.arange(rng.uniform(0, period), m, period)
    times = np.round(times + rng.normal(0, 0.005 * period, len(times))).astype(int)
    amps = 1 + 0.1 * rng.standard_normal(len(times))
    return _fft_filter(_impulses(times, amps, m), _click_colour(rng, _freqs(m, sr)))


def _crackle(rng, m, sr):
    """Rain-like crackle: Poisson clicks at 15-300 per second with scattered amplitudes."""
    count = rng.poisson(_loguniform(rng, 15, 300) * m / sr) + 1
    times = rng.integers(0, m, count)
    amps = rng.lognormal(0, 0.8, count) * rng.choice([-1.0, 1.0], count)
    return _fft_filter(_impulses(times, amps, m), _click_colour(rng, _freqs(m, sr)))


def _am_texture(rng, m, sr):
    """Band noise or a tone, amplitude-modulated at 2-20 Hz."""
    t = np.arange(m) / sr
    if rng.random() < 0.5:
        carrier = _coloured_noise(
            rng, _band(_freqs(m, sr), _loguniform(rng, 300, 5000), rng.uniform(0.5, 3)), m)
    else:
        carrier = np.sin(_phase(np.full(m, _loguniform(rng, 200, 4000)), sr, rng))
    depth = rng.uniform(0.7, 1.0)
    mod = 0.5 - 0.5 * np.cos(_TWO_PI * _loguniform(rng, 2, 20) * t + rng.uniform(0, _TWO_PI))
    return carrier * (1 - depth * mod)


def _fm_texture(rng, m, sr):
    """Warble: a tone whose frequency swings by 8-30 % at 2-15 Hz."""
    t = np.arange(m) / sr
    swing = rng.uniform(0.08, 0.3) * np.sin(_TWO_PI * _loguniform(rng, 2, 15) * t)
    phase = _phase(_loguniform(rng, 300, 3000) * (1 + swing), sr, rng)
    return np.sin(phase) + rng.uniform(0, 0.3) * np.sin(2 * phase)


# Peterson & Barney (1952) mean formants of adult male speakers, Hz.
_VOWEL_FORMANTS = {"a": (730, 1090, 2440), "i": (270, 2290, 3010), "u": (300, 870, 2240)}


def _vowel(rng, m, sr, formants):
    """Sung/spoken vowel: glottal pulse train through three formant resonators.

    Speaker size scales all formants together (0.9-1.25), so the classes are told apart
    by formant pattern, not by absolute frequency; the pitch glides and wavers.
    """
    t = np.arange(m) / sr
    f0 = _loguniform(rng, 90, 280)
    glide = 1 + rng.uniform(-0.15, 0.15) * t / t[-1]
    f_inst = f0 * glide * (1 + 0.01 * np.sin(_TWO_PI * rng.uniform(3, 6) * t))
    k = max(1, int(_F_TOP / (f0 * 1.17)))
    f = _freqs(m, sr)
    scale = rng.uniform(0.9, 1.25)
    # -6 dB/octave: glottal source (-12) plus lip radiation (+6)
    gain = 1 / (1 + f / 150)
    for fc, bw in zip(formants, (80, 100, 140)):
        fc = fc * scale * rng.uniform(0.95, 1.05)
        gain = gain * _resonator(f, fc, bw * rng.uniform(0.8, 1.3))
    x = _fft_filter(_harmonic_sum(_phase(f_inst, sr, rng), k), gain)
    # 1-3 syllables, each a smooth swell
    n_syl = int(rng.integers(1, 4))
    pos = np.mod(np.arange(m) * n_syl / m, 1.0)
    return x * np.sin(np.pi * pos) ** 0.5


_FAMILIES = {
    "harmonic": _harmonic,
    "whistle": _whistle,
    "chirp_up": partial(_chirp, up=True),
    "chirp_down": partial(_chirp, up=False),
    "noise_burst": _noise_burst,
    "click_train": _click_train,
    "crackle": _crackle,
    "am_texture": _am_texture,
    "fm_texture": _fm_texture,
    **{f"vowel_{v}": partial(_vowel, formants=fs) for v, fs in _VOWEL_FORMANTS.items()},
}
CLASSES: tuple[str, ...] = tuple(_FAMILIES)
_GENERATORS = tuple(_FAMILIES.values())


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(x * x))) + 1e-12


def _place(rng: np.random.Generator, label: int, n: int, sr: int) -> np.ndarray:
    """One event of class `label` at unit RMS over its own span, inside n samples of silence."""
    m = int(rng.integers(int(0.4 * n), n + 1))
    onset = int(rng.integers(0, n - m + 1))
    x = _GENERATORS[label](rng, m, sr)
    ramp = int(rng.uniform(0.005, 0.03) * sr)
    fade = np.minimum(1.0, np.minimum(np.arange(m), np.arange(m)[::-1]) / ramp)
    x = x * fade
    out = np.zeros(n)
    out[onset:onset + m] = x / _rms(x)
    return out


def make_clip(label: int, rng: np.random.Generator, duration: float = 2.08,
              sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """One clip of class CLASSES[label]: float32 (S,), S = round(duration * sample_rate).

    Event, then (a third of the time) a distractor of another class 12-24 dB down, then
    background noise of random colour at 5-30 dB SNR, then a level of -32..-8 dBFS RMS,
    scaled down where needed so that the peak stays at or below 0.99.
    """
    if not 0 <= label < len(CLASSES):
        raise ValueError(f"label {label} out of range: expected 0..{len(CLASSES) - 1} ({CLASSES})")
    if sample_rate < SAMPLE_RATE:
        raise ValueError(f"sample_rate {sample_rate} is below {SAMPLE_RATE}: the sounds reach "
                         f"{_F_TOP:.0f} Hz and would alias")
    n = round(duration * sample_rate)
    if n < sample_rate // 10:
        raise ValueError(f"duration {duration} s is too short: expected at least 0.1 s")
    x = _place(rng, label, n, sample_rate)
    if rng.random() < 0.35:
        other = (label + int(rng.integers(1, len(CLASSES)))) % len(CLASSES)
        x += _place(rng, other, n, sample_rate) * 10 ** (-rng.uniform(12, 24) / 20)
    # amplitude slope 0 (white) .. -1 (brown), pink in between
    tilt = (np.maximum(_freqs(n, sample_rate), 20.0) / 1000) ** -rng.uniform(0, 1)
    noise = _coloured_noise(rng, tilt, n)
    x += noise / _rms(noise) * 10 ** (-rng.uniform(5, 30) / 20)
    x *= 10 ** (rng.uniform(-32, -8) / 20) / _rms(x)
    peak = np.max(np.abs(x))
    if peak > 0.99:
        x *= 0.99 / peak
    return x.astype(np.float32)


def corpus_labels(n_clips: int, seed: int = 0) -> np.ndarray:
    """Labels (n_clips,) int64: each block of len(CLASSES) clips is one shuffle of all classes.

    Shuffling per block rather than globally keeps label i independent of n_clips and
    every prefix balanced to within one clip per class.
    """
    c = len(CLASSES)
    # three-word seeds: a stream apart from the clips' default_rng([seed, i])
    blocks = [np.random.default_rng([seed, b, 1]).permutation(c) for b in range(-(-n_clips // c))]
    return np.concatenate(blocks or [np.zeros(0, np.int64)])[:n_clips].astype(np.int64)


def make_corpus(n_clips: int, seed: int = 0, duration: float = 2.08,
                sample_rate: int = SAMPLE_RATE) -> tuple[np.ndarray, np.ndarray]:
    """n_clips clips: waves float32 (n_clips, S) and labels int64 (n_clips,).

    Clip i is drawn from default_rng([seed, i]), so it is the same in any corpus size.
    """
    labels = corpus_labels(n_clips, seed)
    waves = np.zeros((n_clips, round(duration * sample_rate)), np.float32)
    for i, label in enumerate(labels):
        waves[i] = make_clip(int(label), np.random.default_rng([seed, i]), duration, sample_rate)
    return waves, labels


_SUBTYPES = {"wav": "PCM_16", "flac": "PCM_16", "ogg": "VORBIS"}


def write_corpus(folder: str | os.PathLike, n_clips: int, seed: int = 0,
                 duration: float = 2.08, fmt: str = "wav", sample_rate: int = SAMPLE_RATE) -> Path:
    """Write <folder>/<class>/<i:05d>.<fmt> and <folder>/meta.csv; return the meta.csv path.

    The clips are those of make_corpus(n_clips, seed, duration, sample_rate), written at
    sample_rate and made one at a time so that memory does not grow with n_clips.
    meta.csv has columns path (relative to folder), label (int), split: every fifth clip
    (i % 5 == 4) is 'test', the rest 'train'. meta.csv is written last and atomically, so
    its presence means the corpus is complete.
    """
    import soundfile as sf

    if fmt not in _SUBTYPES:
        raise ValueError(f"format {fmt!r} not supported: expected one of {sorted(_SUBTYPES)}")
    folder = Path(folder)
    rows = []
    for i, label in enumerate(corpus_labels(n_clips, seed)):
        wave = make_clip(int(label), np.random.default_rng([seed, i]), duration, sample_rate)
        rel = Path(CLASSES[label]) / f"{i:05d}.{fmt}"
        (folder / rel.parent).mkdir(parents=True, exist_ok=True)
        sf.write(folder / rel, wave, sample_rate, subtype=_SUBTYPES[fmt])
        rows.append((rel.as_posix(), int(label), "test" if i % 5 == 4 else "train"))
    meta = folder / "meta.csv"
    tmp = meta.with_name(meta.name + ".tmp")
    with open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(("path", "label", "split"))
        writer.writerows(rows)
    os.replace(tmp, meta)
    return meta
