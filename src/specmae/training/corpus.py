"""Pre-training corpora: prepared log-mel shards read memory-mapped, and deterministic random crops.

A prepared corpus (written by prepare.py; the format is in docs/data.md) is a folder:

    manifest.json      format and version, front-end config, shard list with counts, totals,
                       the crop width of the statistics and the normalisation statistics
    shards/NNNNN.f16   float16 log-mel frames, row-major (n, F): time-major, so a crop of T
                       consecutive frames is one contiguous slice
    shards/NNNNN.idx   per clip: source row, first frame, length; int64 little-endian (INDEX)
    shards/NNNNN.src   the shard's source files, one per line: path, size, mtime_ns, status
    errors.tsv         every file that was skipped, and why

Opening reads the manifest and the binary indexes only (np.fromfile: a corpus of 2 million clips
opens in a fraction of a second); frames are memory-mapped on first use in each process that
reads them, and source names are read when asked for. Today's older single-file corpora
(lms.f16 + index.json) still load, as one shard.

Crops are drawn from (seed, epoch) alone, so every rank and every resumed run sees exactly the
same order.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..audio import FrontendConfig, build_frontend
from ..audio.normalize import NormStats
from ..files import read_tsv

log = logging.getLogger(__name__)

FORMAT, VERSION = "specmae-sharded-corpus", 1
MANIFEST, SHARDS = "manifest.json", "shards"
INDEX = np.dtype([("source", "<i8"), ("offset", "<i8"), ("length", "<i8")])
STATS_CROPS = 10_000
# What makes index.json a corpus of specmae's older single-file format, not some other tool's file.
LEGACY_KEYS = {"files", "frontend", "clips", "offsets", "lengths"}
REPREPARE = "prepare the audio again: specmae prepare SRC --out NEW_FOLDER (or --rebuild over this one)"


class Shards(Sequence):
    """The frame arrays (n_i, F) float16 of a prepared corpus, each memory-mapped on first use in
    the process that reads it: a DataLoader worker maps its own, and only paths are pickled."""

    def __init__(self, paths: list[Path], n_frames: list[int], n_mels: int):
        self.paths, self.n_frames, self.n_mels = paths, n_frames, n_mels
        self._maps: list[np.ndarray | None] = [None] * len(paths)
        self._pid = os.getpid()

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> np.ndarray:
        if self._pid != os.getpid():
            self._maps, self._pid = [None] * len(self.paths), os.getpid()
        frames = self._maps[i]
        if frames is None:
            shape = (self.n_frames[i], self.n_mels)
            # A plain ndarray view of the map: slicing an np.memmap runs Python code per slice.
            frames = (np.memmap(self.paths[i], np.float16, "r", shape=shape).view(np.ndarray) if shape[0]
                      else np.zeros(shape, np.float16))
            self._maps[i] = frames
        return frames

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_maps": [None] * len(self.paths)}


class SourceNames(Sequence):
    """names[clip] -> its source path, read from the shard's sources table when first asked."""

    def __init__(self, tables: list[Path], shard: np.ndarray, row: np.ndarray):
        self.tables, self.shard, self.row = tables, shard, row
        self._paths: dict[int, list[str]] = {}

    def __len__(self) -> int:
        return len(self.shard)

    def __getitem__(self, clip: int) -> str:
        s = int(self.shard[clip])
        if s not in self._paths:
            self._paths[s] = [row[0] for row in read_tsv(self.tables[s])]
        return self._paths[s][int(self.row[clip])]


@dataclass
class Corpus:
    """Log-mel clips in one or more frame arrays: clip i is shards[shard[i]][offsets[i]:][:lengths[i]]."""
    shards: Sequence[np.ndarray]  # each (n_frames, F), float16 or float32, time-major
    shard: np.ndarray             # (N,) int32, the shard of each clip
    offsets: np.ndarray           # (N,) int64, first frame of each clip in its shard
    lengths: np.ndarray           # (N,) int64, frames per clip
    frontend: FrontendConfig
    names: Sequence[str]
    labels: np.ndarray | None = None
    source: str = "in-memory corpus"  # how messages name it: the prepared folder, or in memory

    @classmethod
    def of_array(cls, frames: np.ndarray, offsets, lengths, frontend: FrontendConfig, names: Sequence[str],
                 labels: np.ndarray | None = None, source: str = "in-memory corpus") -> "Corpus":
        """A corpus whose clips all lie in one (total_frames, F) array."""
        offsets = np.asarray(offsets, np.int64)
        return cls([frames], np.zeros(len(offsets), np.int32), offsets, np.asarray(lengths, np.int64), frontend,
                   names, labels, source)

    def __len__(self) -> int:
        return len(self.offsets)

    def crop_into(self, out: np.ndarray, clip: int, start: int, pad_value: float) -> None:
        """Write the clip's frames from `start` into out (F, T) float32; past its end, `pad_value`."""
        n_frames = out.shape[1]
        off = int(self.offsets[clip]) + start
        n = max(min(n_frames, int(self.lengths[clip]) - start), 0)
        out[:, :n] = self.shards[int(self.shard[clip])][off:off + n].T
        if n < n_frames:
            out[:, n:] = pad_value

    def crop(self, clip: int, start: int, n_frames: int, pad_value: float) -> np.ndarray:
        """(F, n_frames) float32 from `start`; clips shorter than n_frames are padded with silence."""
        out = np.empty((self.frontend.n_mels, n_frames), np.float32)
        self.crop_into(out, clip, start, pad_value)
        return out

    def stats(self, n_frames: int, n_crops: int = STATS_CROPS, seed: int = 0) -> NormStats:
        """Mean and std of the log-mel over `n_crops` random crops (with their padding): one pair
        ('global' statistics) or one per mel bin ('per-bin'), as the front-end config says."""
        rng = np.random.default_rng(seed)
        clips = rng.integers(0, len(self), size=min(n_crops, max(len(self), 1) * 64))
        per_bin = self.frontend.stats == "per-bin"
        axis = 1 if per_bin else None
        total, total_sq, count = 0.0, 0.0, 0
        for clip in clips:
            start = rng.integers(0, max(int(self.lengths[clip]) - n_frames, 0) + 1)
            x = self.crop(int(clip), int(start), n_frames, self.frontend.silence).astype(np.float64)  # (F, T)
            total, total_sq = total + x.sum(axis=axis), total_sq + (x * x).sum(axis=axis)
            count += x.size // (x.shape[0] if per_bin else 1)
        with np.errstate(invalid="ignore", over="ignore"):  # inf - inf: reported just below
            mean = np.atleast_1d(total / count)
            var = np.atleast_1d(total_sq / count) - mean * mean
        if not (np.isfinite(mean).all() and np.isfinite(var).all()):
            raise ValueError(f"{self.source}: normalisation statistics are not finite (mean {mean[:4]}, "
                             f"variance {var[:4]}): some clip's log-mel holds NaN/inf or absurd values")
        if not per_bin and var[0] <= 1e-12:
            raise ValueError(f"{self.source}: every log-mel value is {mean[0]:.4g} (silence only?): "
                             "the statistics would divide by a zero standard deviation")
        # A single mel bin may be constant (audio band-limited below it); it is left un-scaled.
        std = np.sqrt(np.maximum(var, 1e-12))
        return NormStats(tuple(map(float, mean)), tuple(map(float, std)))


def corpus_from_waves(waves: np.ndarray, frontend: FrontendConfig, labels: np.ndarray | None = None,
                      batch: int = 64) -> Corpus:
    """(N, S) float32 waveforms at the front-end rate -> in-memory Corpus (float32 frames)."""
    fe = build_frontend(frontend)
    parts = []
    with torch.no_grad():
        for i in range(0, len(waves), batch):
            parts.append(fe(torch.from_numpy(np.ascontiguousarray(waves[i:i + batch]))).transpose(1, 2))
    lms = torch.cat(parts).numpy()                                    # (N, T, F)
    n, t, f = lms.shape
    return Corpus.of_array(lms.reshape(n * t, f), np.arange(n) * t, np.full(n, t), frontend,
                           [f"builtin/{i:05d}" for i in range(n)], labels)


# --- the files of a prepared corpus ---------------------------------------------------------------

def is_prepared(folder: str | os.PathLike) -> bool:
    """Whether `folder` holds a prepared corpus (this format or the older single-file one)."""
    folder = Path(folder)
    return (folder / MANIFEST).is_file() or (folder / "index.json").is_file()


def read_manifest(folder: Path, any_version: bool = False) -> dict:
    """The manifest of the corpus in `folder`, checked to be this format and version (ValueError)."""
    path = folder / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: unreadable ({e}); not touching {folder}: prepare into another folder") from e
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ValueError(f"{path}: not a specmae corpus manifest; not touching {folder}: prepare into another folder")
    if manifest.get("version") != VERSION and not any_version:
        raise ValueError(f"{folder}: a corpus of format version {manifest.get('version')!r}; this specmae reads "
                         f"version {VERSION}: {REPREPARE}")
    return manifest


def open_shards(folder: Path, manifest: dict) -> Corpus:
    """The clips of the committed shards listed in `manifest`: indexes read, frames not yet mapped."""
    frontend = FrontendConfig.from_dict(manifest["frontend"])
    entries = manifest["shards"]
    base = folder / SHARDS
    for e in entries:
        want = e["frames"] * frontend.n_mels * 2
        size = (base / f"{e['name']}.f16").stat().st_size if (base / f"{e['name']}.f16").exists() else -1
        if size != want:
            raise ValueError(f"{base / e['name']}.f16: {size} bytes, the manifest says {want}; the corpus is "
                             f"damaged: {REPREPARE}")
    index = np.concatenate([np.fromfile(base / f"{e['name']}.idx", INDEX) for e in entries] or [np.empty(0, INDEX)])
    counts = [e["clips"] for e in entries]
    if len(index) != sum(counts):
        raise ValueError(f"{base}: the indexes hold {len(index)} clips, the manifest {sum(counts)}; the corpus is "
                         f"damaged: {REPREPARE}")
    shard = np.repeat(np.arange(len(entries), dtype=np.int32), counts)
    frames = Shards([base / f"{e['name']}.f16" for e in entries], [e["frames"] for e in entries], frontend.n_mels)
    names = SourceNames([base / f"{e['name']}.src" for e in entries], shard, index["source"])
    return Corpus(frames, shard, index["offset"], index["length"], frontend, names, source=str(folder))


def load_corpus(folder: str | os.PathLike) -> tuple[Corpus, NormStats]:
    """Open a prepared corpus (memory-mapped) -> (corpus, its normalisation statistics)."""
    folder = Path(folder)
    if (folder / MANIFEST).is_file():
        manifest = read_manifest(folder)
        if not manifest.get("complete"):
            raise ValueError(f"{folder}: its preparation did not finish; run the same `specmae prepare` again to "
                             "resume it")
        stats = NormStats.parse(manifest["norm_stats"], f"{folder / MANIFEST}: norm_stats")
        return open_shards(folder, manifest), stats
    try:
        index = json.loads((folder / "index.json").read_text())
        if not isinstance(index, dict) or not LEGACY_KEYS <= index.keys():
            raise ValueError("no manifest.json, and index.json is not a specmae corpus index")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, ValueError) as e:
        raise ValueError(f"{folder}: not a prepared corpus ({e})") from e
    log.warning("%s: a corpus of specmae's older single-file format (lms.f16 + index.json), read as one shard; "
                "its index is one JSON document read whole: for large corpora %s", folder, REPREPARE)
    frontend = FrontendConfig.from_dict(index["frontend"])
    frames = Shards([folder / "lms.f16"], [int(np.sum(index["lengths"]))], frontend.n_mels)
    corpus = Corpus(frames, np.zeros(len(index["offsets"]), np.int32), np.asarray(index["offsets"], np.int64),
                    np.asarray(index["lengths"], np.int64), frontend, list(index["clips"]), source=str(folder))
    stats = index["norm_stats"] if "norm_stats" in index else [index["mean"], index["std"]]  # older corpora
    return corpus, NormStats.parse(stats, f"{folder / 'index.json'}: norm_stats")


class CropBatches(torch.utils.data.Dataset):
    """One epoch's batches for one rank: item k is a (B, 1, F, T) float32 batch of random crops.

    The clip order and crop positions depend only on (seed, epoch), so ranks split one global
    permutation and a resumed run can start at any batch. A DataLoader worker builds whole
    batches, so the workers' shares are disjoint too.
    """

    def __init__(self, corpus: Corpus, n_frames: int, batch_size: int, seed: int, epoch: int,
                 rank: int = 0, world: int = 1):
        rng = np.random.default_rng([seed, epoch])
        order = rng.permutation(len(corpus))
        room = np.maximum(corpus.lengths[order] - n_frames, 0) + 1
        starts = (rng.random(len(order)) * room).astype(np.int64)
        per_rank = len(order) // world
        if per_rank < batch_size:
            raise ValueError(f"corpus of {len(corpus)} clips is too small for {world} x {batch_size} per step")
        self.clips = order[rank * per_rank:(rank + 1) * per_rank]
        self.starts = starts[rank * per_rank:(rank + 1) * per_rank]
        self.corpus, self.n_frames, self.batch_size = corpus, n_frames, batch_size
        self.pad = corpus.frontend.silence

    def __len__(self) -> int:
        return len(self.clips) // self.batch_size

    def __getitem__(self, k: int) -> torch.Tensor:
        sl = slice(k * self.batch_size, (k + 1) * self.batch_size)
        out = np.empty((self.batch_size, 1, self.corpus.frontend.n_mels, self.n_frames), np.float32)  # (B, 1, F, T)
        for i, (clip, start) in enumerate(zip(self.clips[sl].tolist(), self.starts[sl].tolist())):
            self.corpus.crop_into(out[i, 0], clip, start, self.pad)
        return torch.from_numpy(out)
