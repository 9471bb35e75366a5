"""Audio read in pieces: a clip's samples [s0, s1) at the model rate, decoded on demand.

    open_clip(path, rate) --read(s0, s1)--> samples (s1 - s0,) float32 mono at `rate`

For tools that look at a few pieces of long files (`specmae visualize`): memory follows the
piece, not the file. A piece equals the same samples of `load_audio(path, rate)` (same checks,
mono mixing and soxr resampling) up to float rounding: it is resampled from the file's frames
under it plus READ_MARGIN seconds on each side, starting on a frame where the input and output
sample grids meet, so the resampling filter sees what it sees in the whole file.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import soundfile as sf

from .decode import AudioError, check_file, check_header, check_waveform, decode_reason, load_audio, resample

# soxr's HQ filter reaches a few milliseconds; 0.25 s of context leaves a piece within float32
# rounding (~1e-7) of the whole file's samples at every rate tried (8-48 kHz, up and down).
READ_MARGIN = 0.25


class Clip:
    """A mono waveform at `sample_rate`, held in memory; `read` as FileClip's."""

    def __init__(self, name: str, wave: np.ndarray, sample_rate: int):
        self.name, self.sample_rate = name, sample_rate
        self.wave = np.asarray(wave, np.float32)
        self.length = len(self.wave)   # samples at sample_rate

    def read(self, s0: int, s1: int) -> np.ndarray:
        """Samples [s0, s1) of the clip, 0 <= s0 <= s1 <= length: (s1 - s0,) float32."""
        return self.wave[s0:s1]

    def close(self) -> None:
        pass

    def __enter__(self) -> "Clip":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class FileClip(Clip):
    """An audio file read in pieces: each `read` seeks and decodes only the frames under it.

    The file stays open until `close` (or the end of a `with` block). Errors are AudioError
    naming the file, worded as load_audio's; a file that ends before its header says is
    reported as truncated when the read reaches the missing part.
    """

    def __init__(self, path: Path, f: sf.SoundFile, sample_rate: int):
        self.name, self.path, self.file, self.sample_rate = str(path), path, f, sample_rate
        self.frames, rate = f.frames, f.samplerate
        # soxr gives round(frames * out / in) samples, halves rounded up.
        self.length = (self.frames * sample_rate + rate // 2) // rate
        step = math.gcd(rate, sample_rate)
        self.step_in, self.step_out = rate // step, sample_rate // step   # grids meet every step_in frames

    def read(self, s0: int, s1: int) -> np.ndarray:
        if self.step_in == self.step_out:
            return self._decode(s0, s1)
        margin = math.ceil(READ_MARGIN * self.sample_rate)
        a = max(0, (s0 - margin) // self.step_out)                       # in steps of the grids
        b = -(-(s1 + margin) // self.step_out)
        i0, i1 = a * self.step_in, min(self.frames, b * self.step_in)
        wave = resample(self._decode(i0, i1), self.file.samplerate, self.sample_rate)
        piece = wave[s0 - a * self.step_out:s1 - a * self.step_out]
        if len(piece) != s1 - s0:   # not expected: the length rule above is soxr's
            raise AudioError(f"{self.name}: frames {i0}-{i1} resampled to {len(wave)} samples, expected at "
                             f"least {s1 - a * self.step_out}")
        return piece

    def _decode(self, i0: int, i1: int) -> np.ndarray:
        """Frames [i0, i1) of the file, checked and mixed to mono: (i1 - i0,) float32."""
        try:
            self.file.seek(i0)
            block = self.file.read(i1 - i0, dtype="float32", always_2d=True)   # (n, C)
        except (sf.SoundFileError, RuntimeError, TypeError, ValueError) as e:
            raise AudioError(f"{self.name}: cannot decode audio ({decode_reason(e, self.path)})") from e
        if len(block) < i1 - i0:
            raise AudioError(f"{self.name}: decoding stopped at frame {i0 + len(block)} of the {self.frames} its "
                             "header claims: truncated or corrupt file")
        check_waveform(block, name=self.name)
        return block.mean(axis=1)

    def close(self) -> None:
        self.file.close()


def open_clip(path: str | Path, sample_rate: int, max_seconds: float | None = None) -> Clip:
    """A file to read in pieces at `sample_rate` (FileClip), after load_audio's checks of the file
    and its header (AudioError naming it). MPEG audio (mp3) is decoded whole into a Clip: seeking
    an MPEG stream changes what it decodes (see load_audio)."""
    path = Path(path)
    check_file(path)
    try:
        f = sf.SoundFile(str(path))
    except (sf.SoundFileError, RuntimeError, TypeError, ValueError) as e:
        raise AudioError(f"{path}: cannot decode audio ({decode_reason(e, path)})") from e
    try:
        check_header(f, path, max_seconds)
        if f.subtype.startswith("MPEG"):
            f.close()
            return Clip(str(path), load_audio(path, sample_rate, max_seconds), sample_rate)
        clip = FileClip(path, f, sample_rate)
        if clip.frames == 0:
            raise AudioError(f"{path}: empty audio (0 samples)")
        if clip.length == 0:   # soxr rounds the length: a few samples can resample to none
            raise AudioError(f"{path}: too short, {clip.frames} samples at {f.samplerate} Hz give 0 at "
                             f"{sample_rate} Hz")
        return clip
    except BaseException:
        f.close()
        raise
