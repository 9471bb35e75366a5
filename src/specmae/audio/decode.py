"""Audio in: decoding, mono mixing, resampling, and finding audio files.

    audio file --load_audio--> waveform (S,) float32 mono at the requested rate

Every reader of audio (pre-training preparation, embedding, evaluation, prediction) goes
through `load_audio`, and every folder search through `find_audio_files`, so one list of
extensions and one set of error messages serve them all.
"""

from __future__ import annotations

import heapq
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


# Decoded PCM lies in [-1, 1) and float files overshoot full scale by a few dB at most (intersample
# peaks, unnormalised mixes). A sample above 1e3 (+60 dB) is no recording but a corrupt or mis-scaled
# file (raw int16 values stored as float, a codec bug): beyond ~1e17 its power overflows float32
# to an infinite log-mel, and well below that one such file dominates a corpus's mean and std.
MAX_ABS_SAMPLE = 1e3
# Uncompressed samples take their full width on disk; MPEG audio spends a byte on at most 24
# frames (8 kbit/s at 24 kHz); no other codec libsndfile reads packs more than about 6,600 frames
# into a byte (FLAC's densest: 65,535 equal samples in a frame of ~10 bytes). A header claiming
# more than that for the file's size lies, and reading it would try to allocate what it claims.
PCM_BYTES = {"PCM_S8": 1, "PCM_U8": 1, "PCM_16": 2, "PCM_24": 3, "PCM_32": 4, "FLOAT": 4, "DOUBLE": 8,
             "ULAW": 1, "ALAW": 1}
MPEG_FRAMES_PER_BYTE = 64
MAX_FRAMES_PER_BYTE = 16_384
READ_BLOCK = 1 << 18  # frames decoded at a time: memory follows the audio actually there, not the header


def check_waveform(wave: np.ndarray | torch.Tensor, name: str = "<waveform>",
                   max_abs: float | None = MAX_ABS_SAMPLE) -> None:
    """Raise AudioError naming `name` if `wave` (any shape, numpy or torch) is empty, non-finite or
    holds samples beyond `max_abs` (MAX_ABS_SAMPLE, far above full scale; None to skip)."""
    if isinstance(wave, torch.Tensor):
        empty, finite = wave.numel() == 0, bool(torch.isfinite(wave).all())
        peak = float(wave.abs().max()) if not empty and finite else 0.0
    else:
        wave = np.asarray(wave)
        empty, finite = wave.size == 0, bool(np.isfinite(wave).all())
        peak = float(np.abs(wave).max()) if not empty and finite else 0.0
    if empty:
        raise AudioError(f"{name}: empty audio (0 samples)")
    if not finite:
        raise AudioError(f"{name}: non-finite samples (NaN or inf)")
    if max_abs is not None and peak > max_abs:
        raise AudioError(f"{name}: samples up to {peak:.3g}, far beyond full scale (audio lies in [-1, 1]; "
                         f"more than {max_abs:g} is a corrupt or mis-scaled file)")


def resample(wave: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """Resample a mono waveform (S,) from orig_sr to target_sr with soxr; returns float32 (S',).

    Quality 'HQ' is soxr's default and what librosa.load uses (res_type='soxr_hq'), so our
    waveforms match the ones most audio pipelines feed their models.
    """
    wave = np.ascontiguousarray(wave, dtype=np.float32)
    if orig_sr == target_sr:
        return wave
    return soxr.resample(wave, orig_sr, target_sr, quality="HQ").astype(np.float32, copy=False)


def load_audio(path: str | Path, sample_rate: int, max_seconds: float | None = None) -> np.ndarray:
    """Decode an audio file (wav/flac/ogg/mp3, anything libsndfile reads) to float32 mono (S,).

    Channels are mixed by their mean; the result is resampled to `sample_rate` when the file's
    rate differs. Raises AudioError(f"{path}: <reason>") when the file is missing, unreadable
    (permission denied) or cannot be decoded; when its header claims more frames than its size
    can hold, or (with `max_seconds`) a longer duration; or when it holds no channels, no samples,
    NaN/inf samples or samples beyond MAX_ABS_SAMPLE.
    """
    path = Path(path)
    check_file(path)
    try:
        with sf.SoundFile(str(path)) as f:
            file_sr = f.samplerate
            check_header(f, path, max_seconds)
            # Seeking an MPEG stream changes what it decodes, and soundfile seeks after every
            # read: MPEG is read in one call (its claimed length is bounded above), the rest in blocks.
            data = None if f.subtype.startswith("MPEG") else _read_blocks(f, path)
        if data is None:
            data = sf.read(str(path), dtype="float32", always_2d=True)[0]  # (S, C)
            check_waveform(data, name=str(path))
            data = data.mean(axis=1)
    except (sf.SoundFileError, RuntimeError, TypeError, ValueError) as e:
        if isinstance(e, AudioError):
            raise
        raise AudioError(f"{path}: cannot decode audio ({decode_reason(e, path)})") from e
    except MemoryError as e:
        raise AudioError(f"{path}: too large to decode in memory") from e
    wave = resample(data, file_sr, sample_rate)
    if wave.size == 0:  # soxr rounds the length: a few samples can resample to none
        raise AudioError(f"{path}: too short, {len(data)} samples at {file_sr} Hz give 0 at {sample_rate} Hz")
    return wave


def check_file(path: Path) -> None:
    """The reasons libsndfile words badly: missing, not a file, empty, not readable."""
    if not path.exists():
        raise AudioError(f"{path}: file not found")
    if not path.is_file():
        raise AudioError(f"{path}: not a regular file")
    if path.stat().st_size == 0:
        raise AudioError(f"{path}: empty file (0 bytes)")
    if not os.access(path, os.R_OK):
        raise AudioError(f"{path}: permission denied")


def check_header(f: sf.SoundFile, path: Path, max_seconds: float | None) -> None:
    """Refuse impossible headers before anything is allocated from them."""
    if f.channels <= 0:
        raise AudioError(f"{path}: no channels")
    if f.samplerate <= 0:
        raise AudioError(f"{path}: sample rate {f.samplerate} Hz in its header")
    size = path.stat().st_size
    width = PCM_BYTES.get(f.subtype) if f.format != "FLAC" else None
    if width:
        most = size // (width * f.channels)
    else:
        most = size * (MPEG_FRAMES_PER_BYTE if f.subtype.startswith("MPEG") else MAX_FRAMES_PER_BYTE)
    if f.frames > most:
        raise AudioError(f"{path}: header claims {f.frames} frames ({_duration(f.frames / f.samplerate)} "
                         f"at {f.samplerate} Hz), more than its {size} bytes can hold (at most {most}): "
                         "corrupt header or truncated file")
    if max_seconds is not None and f.frames > max_seconds * f.samplerate:
        raise AudioError(f"{path}: {_duration(f.frames / f.samplerate)} long, over the limit of "
                         f"{_duration(max_seconds)} for one file")


def _read_blocks(f: sf.SoundFile, path: Path) -> np.ndarray:
    """Decode READ_BLOCK frames at a time, checking each block -> mono float32 (S,)."""
    parts = []
    while True:
        block = f.read(READ_BLOCK, dtype="float32", always_2d=True)  # (n, C)
        if not len(block):
            break
        check_waveform(block, name=str(path))
        parts.append(block.mean(axis=1))
    if not parts:
        raise AudioError(f"{path}: empty audio (0 samples)")
    return np.concatenate(parts)


def decode_reason(e: Exception, path: Path) -> str:
    """libsndfile's own words, without the path - except where they are wrong about the cause."""
    reason = getattr(e, "error_string", None) or str(e)
    code = getattr(e, "code", None)
    if code == 2:  # "System error.": the operating system refused; ask it why
        try:
            open(path, "rb").close()
        except PermissionError:
            return "permission denied"
        except OSError as err:
            return err.strerror or str(err)
    if code == 7 or "does not exist" in reason:  # the file exists: its codec found no stream in it
        return f"no valid {path.suffix.lstrip('.').upper() or 'audio'} stream: corrupt, truncated or another format"
    return reason


def _duration(seconds: float) -> str:
    return f"{seconds / 3600:.3g} h" if seconds >= 3600 else f"{seconds:.3g} s"


def is_audio_file(path: Path) -> bool:
    return path.suffix.lower() in AUDIO_EXTENSIONS and path.is_file()


def find_audio_files(root: str | os.PathLike) -> list[Path]:
    """Every audio file under `root` (recursive), sorted so the order is reproducible; a file is itself."""
    return [Path(p) for p in find_audio_paths(root)]


def find_audio_paths(root: str | os.PathLike) -> list[str]:
    """find_audio_files as str paths: what a folder of 2 million files can afford (a Path costs
    three times a str's memory, and Path.rglob also keeps a set of every path it yielded).

    The order is Path's: component by component, which a walk that visits each folder's entries
    sorted by name yields as it goes. As Path.rglob("*") did: hidden files and folders are
    searched, symbolic links to files are listed under their own path, links to folders are not
    followed, and folders that cannot be read are passed over.
    """
    root = Path(root)
    if root.is_file():
        return [str(root)]
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such file or folder")
    found: list[str] = []
    base = str(root)  # as Path joins: "." adds nothing, "/" no second slash
    _walk("" if base == "." else base if base.endswith("/") else base + "/", found)
    return found


def _walk(prefix: str, found: list[str]) -> None:
    # Names only, not the DirEntry objects (three strings each): a flat folder of 2 million files
    # would hold them all at once.
    files, folders = [], []
    try:
        with os.scandir(prefix or ".") as it:
            for entry in it:
                name = entry.name
                dot = name.rfind(".")  # Path.suffix: a leading dot (".wav") starts no suffix
                if 0 < dot < len(name) - 1 and name[dot:].lower() in AUDIO_EXTENSIONS and _is(entry.is_file):
                    files.append(name)
                elif _is(entry.is_dir) and not entry.is_symlink():
                    folders.append(name)
    except PermissionError:
        return
    files.sort()
    folders.sort()
    for name, folder in heapq.merge(((n, False) for n in files), ((n, True) for n in folders)):
        if folder:
            _walk(prefix + name + "/", found)
        else:
            found.append(prefix + name)


def _is(test) -> bool:
    try:
        return test()
    except OSError:
        return False
