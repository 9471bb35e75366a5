"""Audio handed to the Python API: one reading and one set of checks for every entry point.

    audio, sample_rate --read_clips--> Clips: mono float32 waveforms [(S_i,)] at the model rate,
                                       their names, the input's kind ('one' | 'batch' | 'list')

`Embedder.embed`, `Predictor.predict`, the HEAR functions (after the HEAR contract, hear.py),
`visualize_clips` and in-memory evaluation tasks all read audio here, so a mistake gets the same
message wherever it is made, naming the argument (`audio`, `audio[3]`, `sample_rate`) or the file.

What is accepted (the kind in brackets):

    (S,) array or tensor            one clip ('one')
    (B, S) array or tensor          B clips of S samples each ('batch'). A 2-D input is always
                                    (B, S): nothing is guessed. But clips of at most 8 samples in
                                    a batch of more clips than that are refused: that is audio
                                    read as (samples, channels) (soundfile, scipy), which would
                                    otherwise run as millions of clips; mix it first,
                                    `wave.mean(1)`, or give its file path. The HEAR API, whose
                                    contract fixes the layout, passes `layout_fixed=True`.
    list or tuple                   clips of any lengths ('list'): each a 1-D array or tensor,
                                    or each a file path
    a file path (str, os.PathLike)  decoded by `load_audio` ('one'): mixed to mono, resampled

Samples are floats (any float dtype, taken as float32) in [-1, 1]. Integer PCM is refused with
the scale to divide by (32768 for int16), since reading it as is would be 90 dB too loud. Every
clip must be non-empty, finite and within MAX_ABS_SAMPLE, as decoded files are (`check_waveform`).

`sample_rate` is the rate of samples given in memory, which are resampled here (soxr, as files
are): a positive whole number of Hz (16000, 44100.0, a numpy integer; not 44100.5, not True).
A file carries its own rate, so with paths `sample_rate` may be left out (None); a rate given
beside a path must be the file's own (`embed("clip.wav", 16000)` for a 16 kHz file), and any
other is refused, naming both, rather than guessed to mean a resampling. A list holds samples or
paths, not both. `Clips` already read pass through unchanged.
"""

from __future__ import annotations

import numbers
import os
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import soundfile as sf
import torch
from torch import Tensor

from .decode import AudioError, check_waveform, load_audio, resample

# What integer PCM is divided by to lie in [-1, 1), for the refusal's hint.
PCM_SCALE = {"int8": "divide by 128", "uint8": "subtract 128, divide by 128", "int16": "divide by 32768",
             "int32": "divide by 2147483648"}


# A batch of clips this short and more clips than that is audio read as (samples, channels).
MAX_CHANNELS = 8


@dataclass
class Clips:
    """Audio as read by read_clips: waves[i] (S_i,) float32 mono at `sample_rate`, named names[i]."""
    waves: list[Tensor]
    names: list[str]
    kind: str  # 'one' (one clip or file), 'batch' ((B, S) samples), 'list'
    sample_rate: int


def check_sample_rate(value, argument: str = "sample_rate") -> int:
    """A positive whole number of Hz -> int; ValueError naming `argument` and the value otherwise."""
    whole = (not isinstance(value, (bool, np.bool_)) and isinstance(value, numbers.Real)
             and np.isfinite(float(value)) and float(value).is_integer())
    if not whole or int(value) <= 0:
        raise ValueError(f"{argument} {value!r}: expected a positive whole number of Hz (e.g. 16000)")
    return int(value)


def is_path(audio) -> bool:
    return isinstance(audio, (str, os.PathLike))


def read_clips(audio, sample_rate, rate: int, *, names: Sequence[str] | None = None,
               device: str | torch.device | None = None, argument: str = "audio",
               layout_fixed: bool = False) -> Clips:
    """Any accepted audio (module doc) at `sample_rate` -> Clips at `rate` on `device` (None: the
    samples stay where they are; decoded and resampled ones are on the CPU).

    names: one per clip, for messages (default: the path, `audio` for one clip, `audio[i]`).
    layout_fixed: the caller's contract says a 2-D input is (B, S) whatever its shape (HEAR).
    Raises AudioError (a ValueError) for the audio, ValueError for sample_rate and names.
    """
    if isinstance(audio, Clips):
        if audio.sample_rate != rate:
            raise ValueError(f"{argument}: clips read at {audio.sample_rate} Hz for a model at {rate} Hz")
        return audio
    items, kind = _items(audio, argument, layout_fixed)
    paths = [is_path(x) for x in items]
    if any(paths) and not all(paths):
        i = paths.index(not paths[0])
        raise AudioError(f"{argument}[{i}]: {'a file path' if paths[i] else 'samples'} in a list of "
                         f"{'file paths' if paths[0] else 'samples'}: give files and samples in separate calls")
    if paths[0] and sample_rate is not None:
        _check_file_rates(items, check_sample_rate(sample_rate))
    if not paths[0]:
        if sample_rate is None:
            raise ValueError(f"sample_rate missing: {argument} given as samples needs the rate they are at "
                             "(e.g. 16000); only file paths carry their own")
        sample_rate = check_sample_rate(sample_rate)
    if names is None:
        names = [str(x) if p else argument if kind == "one" else f"{argument}[{i}]"
                 for i, (x, p) in enumerate(zip(items, paths))]
    elif len(names) != len(items):
        raise ValueError(f"names: {len(names)} names for {len(items)} clips")
    waves = []
    for item, name, path in zip(items, names, paths):
        if path:
            x = torch.from_numpy(load_audio(item, rate))  # its messages name the file
        else:
            x = _samples(item, name)
            if x.ndim != 1:
                raise AudioError(f"{name}: shape {tuple(x.shape)}: a clip in a list is mono samples (S,)"
                                 + (" (mix channels first)" if x.ndim == 2 else ""))
            check_waveform(x, name)
            if sample_rate != rate:
                x = torch.from_numpy(resample(x.cpu().float().numpy(), sample_rate, rate))
                if x.numel() == 0:
                    raise AudioError(f"{name}: too short, gives 0 samples at {rate} Hz")
        waves.append(x.to(device or x.device, torch.float32))
    return Clips(waves, list(names), kind, rate)


def _check_file_rates(paths: list, sample_rate: int) -> None:
    """A rate given with file paths must be each file's own: a file is decoded at its rate."""
    for path in paths:
        try:
            own = sf.info(str(path)).samplerate
        except (sf.SoundFileError, RuntimeError, TypeError, ValueError, OSError):
            continue  # load_audio says what is wrong with the file
        if own != sample_rate:
            raise ValueError(f"sample_rate {sample_rate}: {path} is at {own} Hz; a file is decoded at its own "
                             "rate and resampled to the model's: leave sample_rate out (None)")


def _items(audio, argument: str, layout_fixed: bool = False) -> tuple[list, str]:
    """audio -> (its clips: samples or paths, kind); the clips are checked by the caller."""
    if is_path(audio):
        return [audio], "one"
    if isinstance(audio, (list, tuple)):
        if not audio:
            raise AudioError(f"{argument}: an empty {type(audio).__name__}: no clips given")
        if all(isinstance(x, numbers.Number) for x in audio):
            raise AudioError(f"{argument}: a {type(audio).__name__} of numbers: a list holds clips (arrays, "
                             "tensors or file paths); give one clip's samples as an array, np.asarray(...)")
        return list(audio), "list"
    x = _samples(audio, argument)
    if x.ndim == 1:
        return [x], "one"
    if x.ndim == 2:
        if x.shape[0] == 0:
            raise AudioError(f"{argument}: shape {tuple(x.shape)}: a batch of no clips")
        if not layout_fixed and x.shape[1] <= MAX_CHANNELS < x.shape[0]:
            raise AudioError(f"{argument}: shape {tuple(x.shape)}: a batch (B, S) of {x.shape[0]} clips of "
                             f"{x.shape[1]} samples each; audio read as (samples, channels) is mixed to mono "
                             f"first ({argument}.mean(1)) or given as its file path")
        return list(x), "batch"
    raise AudioError(f"{argument}: shape {tuple(x.shape)}: expected samples (S,), a batch (B, S) of mono clips "
                     "(mix channels first), a list of clips, or a file path")


def _samples(obj, name: str) -> Tensor:
    """A tensor or anything numpy reads as a numeric array -> a float tensor (not copied when it is
    one already); AudioError naming `name` for other types and for integer, bool or complex samples."""
    if isinstance(obj, Tensor):
        x = obj.detach()
        dtype = str(x.dtype).removeprefix("torch.")
    else:
        try:
            arr = np.asarray(obj)
        except (TypeError, ValueError) as e:  # ragged nested lists, objects numpy refuses
            raise AudioError(f"{name}: a {type(obj).__name__} that is no array of samples ({e})") from e
        if arr.dtype.kind not in "biufc":
            what = f"an array of {arr.dtype}" if isinstance(obj, np.ndarray) else f"a {type(obj).__name__}"
            raise AudioError(f"{name}: {what}: expected samples (a float array or tensor), "
                             "a list of clips, or a file path (str or os.PathLike)")
        dtype = str(arr.dtype)
        x = torch.from_numpy(np.ascontiguousarray(arr, np.float32)) if arr.dtype.kind == "f" else None
    if x is None or not x.is_floating_point():
        hint = "real samples" if "complex" in dtype else "float samples in [-1, 1]"
        if "int" in dtype:
            hint += f" (integer PCM: {PCM_SCALE.get(dtype, 'divide by its full scale, 32768 for 16 bits')})"
        raise AudioError(f"{name}: {dtype} samples: give {hint}")
    return x
