"""Audio in: decoding, mono mixing, resampling, and finding audio files.

    audio file --load_audio--> waveform (S,) float32 mono at the requested rate

Every reader of audio (pre-training preparation, embedding, evaluation, prediction) goes
through `load_audio`, and every folder search through `find_audio_files`, so one list of
extensions and one set of error messages serve them all.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
import torch

# What libsndfile (>= 1.1) decodes; folders are searched for these, case-insensitively.
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff", ".au", ".caf", ".w64")


class AudioError(ValueError):
    """Raised for unreadable/empty/non-finite/zero-channel audio; message names the file and the reason."""




def check_waveform(wave: np.ndarray | torch.Tensor, name: str = "<waveform>") -> None:
    """Raise AudioError naming `name` if `wave` (any shape, numpy or torch) is empty or non-finite."""
    if isinstance(wave, torch.Tensor):
        empty, finite = wave.numel() == 0, bool(torch.isfinite(wave).all())
    else:
        wave = np.asarray(wave)
        empty, finite = wave.size == 0, bool(np.isfinite(wave).all())
    if empty:
        raise AudioError(f"{name}: empty audio (0 samples)")
    if not finite:
        raise AudioError(f"{name}: non-finite samples (NaN or inf)")


def resample(wave: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """Resample a mono waveform (S,) from orig_sr to target_sr with soxr; returns float32 (S',).

    Quality 'HQ' is soxr's default and what librosa.load uses (res_type='soxr_hq'), so our
    waveforms match the ones most audio pipelines feed their models.
    """
    wave = np.ascontiguousarray(wave, dtype=np.float32)
    if orig_sr == target_sr:
        return wave
    return soxr.resample(wave, orig_sr, target_sr, quality="HQ").astype(np.float32, copy=False)


def load_audio(path: str | Path, sample_rate: int) -> np.ndarray:
    """Decode an audio file (wav/flac/ogg/mp3, anything libsndfile reads) to float32 mono (S,).

    Channels are mixed by their mean; the result is resampled to `sample_rate` when the file's
    rate differs. Raises AudioError(f"{path}: <reason>") when the file is missing or cannot be
    decoded, or holds no channels, no samples, or NaN/inf samples.
    """
    if not Path(path).exists():
        raise AudioError(f"{path}: file not found")
    if Path(path).is_file() and Path(path).stat().st_size == 0:
        raise AudioError(f"{path}: empty file (0 bytes)")
    try:
        data, file_sr = sf.read(str(path), dtype="float32", always_2d=True)  # (S, C)
    except (sf.SoundFileError, RuntimeError, TypeError, ValueError) as e:
        reason = getattr(e, "error_string", None) or str(e)  # libsndfile's own words, without the path
        raise AudioError(f"{path}: cannot decode audio ({reason})") from e
    if data.shape[1] == 0:
        raise AudioError(f"{path}: no channels")
    check_waveform(data, name=str(path))
    wave = resample(data.mean(axis=1), file_sr, sample_rate)
    if wave.size == 0:  # soxr rounds the length: a few samples can resample to none
        raise AudioError(f"{path}: too short, {len(data)} samples at {file_sr} Hz give 0 at {sample_rate} Hz")
    return wave


def is_audio_file(path: Path) -> bool:
    return path.suffix.lower() in AUDIO_EXTENSIONS and path.is_file()


def find_audio_files(root: str | os.PathLike) -> list[Path]:
    """Every audio file under `root` (recursive), sorted so the order is reproducible; a file is itself."""
    root = Path(root)
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such file or folder")
    return sorted(p for p in root.rglob("*") if is_audio_file(p))
