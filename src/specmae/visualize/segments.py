"""Audio in and out of the visual analysis: model-width segments of a clip, and WAV files.

    waveform (S,) --front-end--> log-mel (F, T_lms) --cut into W-frame segments, the chosen kept-->
      Segment: log-mel (F, W) un-normalised (a short last segment padded with silence) + its samples
    log-mel (F, T) normalised --undo the stored statistics, invert the mel, Griffin-Lim--> WAV

W is the encoder's width (model.encoder.cfg.n_frames). The front-end runs over the whole clip in
frame chunks (audio/frontend.py frame_chunks), so memory follows the clip's length (bounded by
the command's --max-duration) and only the chosen segments are kept.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..audio import AudioError, FrontendConfig
from ..audio.normalize import NormStats
from ..files import atomic_write_bytes

SEGMENT_CHOICES = ("loudest", "first", "all")


@dataclass
class Segment:
    """One model-width piece of a clip."""
    clip: str                 # the clip's name (file path or title)
    index: int                # 0-based position among the clip's segments
    count: int                # segments in the clip
    lms: np.ndarray           # (F, W) un-normalised log-mel, padded with silence past real_frames
    real_frames: int          # log-mel frames holding audio (the rest is padding)
    wave: np.ndarray          # (S_seg,) float32 samples under the real frames
    start: float              # seconds from the start of the clip to the segment's first sample
    end: float                # ... and to its last real sample

    def label(self, short: bool = False) -> str:
        """'<clip>, segment k of n (start-end s)'; `short`: the clip's file name only (figure titles)."""
        name = Path(self.clip).name if short else self.clip
        return f"{name}, segment {self.index + 1} of {self.count} ({self.start:.2f}-{self.end:.2f} s)"


def parse_segments(text: str) -> str | list[int]:
    """--segments as written: 'loudest', 'first', 'all', or 1-based numbers '1,3' -> the choice
    ('loudest' | 'first' | 'all' | [0-based indices]); ValueError naming the text otherwise."""
    word = text.strip().lower()
    if word in SEGMENT_CHOICES:
        return word
    try:
        numbers = [int(v) for v in word.split(",")]
    except ValueError:
        numbers = []
    if not numbers or min(numbers) < 1:
        raise ValueError(f"--segments {text!r}: expected {', '.join(SEGMENT_CHOICES)} or segment numbers "
                         "from 1, e.g. 1,3")
    return sorted({n - 1 for n in numbers})


def cut_segments(name: str, wave: np.ndarray, lms: torch.Tensor, frontend: FrontendConfig, width: int,
                 patch_t: int, choice: str | list[int]) -> list[Segment]:
    """The chosen W-frame segments of one clip: wave (S,) and its log-mel lms (F, T_lms).

    AudioError naming the clip when it is shorter than one patch or a chosen number is past its
    last segment. 'loudest' is the segment of highest mean log-mel over its real frames. A last
    segment holding less than one patch of audio is not one of the clip's segments.
    """
    total = lms.shape[-1]
    hop, rate = frontend.hop_length, frontend.sample_rate
    if total < patch_t:
        raise AudioError(f"{name}: {len(wave) / rate:.3g} s of audio gives {total} log-mel frames, fewer than "
                         f"one {patch_t}-frame patch ({patch_t * hop / rate:.3g} s)")
    # A last segment holding less than one patch of audio says nothing: it is not counted.
    count = max(1, total // width + (total % width >= patch_t))
    if choice == "first":
        chosen = [0]
    elif choice == "all":
        chosen = list(range(count))
    elif choice == "loudest":
        means = [float(lms[:, k * width:(k + 1) * width].mean()) for k in range(count)]
        chosen = [int(np.argmax(means))]
    else:
        if max(choice) >= count:
            raise AudioError(f"{name}: segment {max(choice) + 1} asked for, but its {len(wave) / rate:.3g} s "
                             f"hold {count} segment(s) of {width} frames ({width * hop / rate:.3g} s)")
        chosen = list(choice)
    segments = []
    for k in chosen:
        piece = lms[:, k * width:(k + 1) * width].numpy()
        padded = np.full((lms.shape[0], width), frontend.silence, np.float32)
        padded[:, :piece.shape[1]] = piece
        s0, s1 = k * width * hop, min((k + 1) * width * hop, len(wave))
        segments.append(Segment(name, k, count, padded, piece.shape[1], np.asarray(wave[s0:s1], np.float32),
                                s0 / rate, s1 / rate))
    return segments


def normalised(seg: Segment, stats: NormStats) -> torch.Tensor:
    """The segment as the model's input: (1, 1, F, W) normalised log-mel."""
    return stats.apply(torch.from_numpy(seg.lms))[None, None]


def to_audio(x: torch.Tensor, stats: NormStats, frontend: FrontendConfig, frames: int, n_iter: int,
             seed: int) -> np.ndarray:
    """A normalised log-mel x (F, T) -> waveform (S,) float32: the stored statistics undone, the
    first `frames` frames (the real audio) inverted by the front-end's mel inversion + Griffin-Lim."""
    from ..audio.invert import invert_lms

    mean, std = stats.tensors()
    lms = (x.float().cpu() * std + mean)[:, :frames].numpy()
    return invert_lms(lms, frontend, n_iter=n_iter, seed=seed)


def write_wav(path: str | os.PathLike, wave: np.ndarray, sample_rate: int) -> Path:
    """16-bit PCM WAV, atomically; a waveform peaking above full scale (Griffin-Lim does not keep
    the level exactly) is scaled down to a 0.99 peak rather than clipped."""
    import soundfile as sf

    wave = np.asarray(wave, np.float32)
    peak = float(np.abs(wave).max()) if wave.size else 0.0
    if peak > 0.99:
        wave = wave * (0.99 / peak)
    buf = io.BytesIO()
    sf.write(buf, wave, sample_rate, format="WAV", subtype="PCM_16")
    return atomic_write_bytes(path, buf.getvalue())
