"""Audio in and out of the visual analysis: model-width segments of a clip, and WAV files.

    clip (audio/stream.py: a file read in pieces, or a waveform) --choose_segments--> indices
      --read_segment--> Segment: log-mel (F, W) un-normalised (a short last segment padded with
                        silence) + its samples
    log-mel (F, T) normalised --undo the stored statistics, invert the mel, Griffin-Lim--> WAV

W is the encoder's width (model.encoder.cfg.n_frames). Long files are read in two passes, so
memory follows a block of audio, never the file:

1. choose_segments counts the segments from the clip's length (the file's header) and, for
   'loudest', computes the log-mel BLOCK_SECONDS at a time, keeping one mean per segment;
2. read_segment decodes only a chosen segment's samples (plus context) and computes its log-mel.

Either pass computes log-mel frames from the samples under them plus a few frames of context
(frames_of), and reads samples with a margin for the resampler (audio/stream.py), so a
segment's log-mel equals the whole clip's frames up to float rounding: the same where no
resampling is needed, otherwise ~1e-5 on average and up to ~2e-3 (log units) in bins 50 dB
below their frame's peak, where the log magnifies the resampler's float32 rounding.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..audio import AudioError, FrontendConfig
from ..audio.stream import Clip
from ..audio.normalize import NormStats
from ..files import atomic_write_bytes

SEGMENT_CHOICES = ("loudest", "first", "all")
BLOCK_SECONDS = 30.0   # audio per step of pass 1 ('loudest'): about 2 MB at 16 kHz, 10 MB of 44.1 kHz stereo


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


def frames_of(clip: Clip, front: torch.nn.Module, t0: int, t1: int) -> tuple[torch.Tensor, np.ndarray, int]:
    """Log-mel frames [t0, t1) of a clip, (F, t1 - t0), as the front-end gives them over the whole
    clip, computed from the samples under them plus FRAME_CONTEXT frames of context each side (the
    clip's own edges are reflect-padded as in the whole clip); also those samples and the first one's index."""
    cfg = front.cfg
    hop, context = cfg.hop_length, cfg.n_fft // cfg.hop_length + 2   # a frame reaches n_fft / 2 (+1) samples out
    a, b = max(0, t0 - context) * hop, min(clip.length, (t1 + context) * hop)
    wave = clip.read(a, b)
    with torch.no_grad():
        lms = front(torch.from_numpy(np.ascontiguousarray(wave)))   # (F, T_span): frame j at sample a + j * hop
    return lms[:, t0 - a // hop:t1 - a // hop], wave, a


def count_segments(clip: Clip, frontend: FrontendConfig, width: int, patch_t: int) -> int:
    """How many `width`-frame segments a clip holds: a last segment holding less than one patch of
    audio says nothing and is not counted. AudioError naming the clip when it is shorter than a patch."""
    total, hop, rate = frontend.num_frames(clip.length), frontend.hop_length, frontend.sample_rate
    if total < patch_t:
        raise AudioError(f"{clip.name}: {clip.length / rate:.3g} s of audio gives {total} log-mel frames, fewer "
                         f"than one {patch_t}-frame patch ({patch_t * hop / rate:.3g} s)")
    return max(1, total // width + (total % width >= patch_t))


def choose_segments(clip: Clip, front: torch.nn.Module, width: int, patch_t: int,
                    choice: str | list[int]) -> tuple[list[int], int]:
    """Pass 1: the chosen segments' 0-based indices and the clip's segment count.

    'loudest' is the segment of highest mean log-mel over its real frames; finding it reads the
    clip BLOCK_SECONDS at a time, keeping only one mean per segment. The other choices read
    nothing. AudioError naming the clip when a chosen number is past its last segment.
    """
    cfg = front.cfg
    count = count_segments(clip, cfg, width, patch_t)
    if choice == "first":
        return [0], count
    if choice == "all":
        return list(range(count)), count
    if choice == "loudest":
        total, means = cfg.num_frames(clip.length), []
        per_block = max(1, round(BLOCK_SECONDS * cfg.sample_rate / cfg.hop_length / width))
        for k0 in range(0, count, per_block):
            k1 = min(count, k0 + per_block)
            lms = frames_of(clip, front, k0 * width, min(total, k1 * width))[0]
            means += [float(lms[:, (k - k0) * width:(k - k0 + 1) * width].mean()) for k in range(k0, k1)]
        return [int(np.argmax(means))], count
    if max(choice) >= count:
        raise AudioError(f"{clip.name}: segment {max(choice) + 1} asked for, but its "
                         f"{clip.length / cfg.sample_rate:.3g} s hold {count} segment(s) of {width} frames "
                         f"({width * cfg.hop_length / cfg.sample_rate:.3g} s)")
    return list(choice), count


def read_segment(clip: Clip, front: torch.nn.Module, width: int, index: int, count: int) -> Segment:
    """Pass 2: segment `index` of a clip, its log-mel padded with silence to `width` frames."""
    cfg = front.cfg
    hop, rate, total = cfg.hop_length, cfg.sample_rate, cfg.num_frames(clip.length)
    t0, t1 = index * width, min(total, (index + 1) * width)
    piece, wave, a = frames_of(clip, front, t0, t1)   # the samples cover [s0, s1) below
    padded = np.full((cfg.n_mels, width), cfg.silence, np.float32)
    padded[:, :t1 - t0] = piece.numpy()
    s0, s1 = t0 * hop, min((index + 1) * width * hop, clip.length)
    return Segment(clip.name, index, count, padded, t1 - t0, np.array(wave[s0 - a:s1 - a], np.float32),
                   s0 / rate, s1 / rate)


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
