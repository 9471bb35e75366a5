"""Pre-training data: log-mel corpora on disk and deterministic random crops (docs/architecture.md).

A prepared corpus is a folder:

    lms.f16      all clips' log-mel frames, float16, row-major (total_frames, F): a crop of
                 T consecutive frames is one contiguous slice of a memory map
    index.json   per clip: source path, offset, length (frames); the front-end config,
                 the files that were skipped and why, and the normalisation statistics

An audio folder is prepared once into such a cache; the built-in corpus lives in memory.
Crops are drawn from (seed, epoch) alone, so every rank and every resumed run sees exactly
the same order.
"""

from __future__ import annotations

import functools
import json
import logging
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..audio import AUDIO_EXTENSIONS, AudioError, FrontendConfig, build_frontend, find_audio_files, load_audio
from ..audio.normalize import NormStats
from ..files import atomic_write_text

log = logging.getLogger(__name__)

STATS_CROPS = 10_000


@dataclass
class Corpus:
    """Log-mel clips concatenated along time: frames (total_frames, F), float16 or float32."""
    frames: np.ndarray
    offsets: np.ndarray        # (N,) int64, first frame of each clip
    lengths: np.ndarray        # (N,) int64, frames per clip
    frontend: FrontendConfig
    names: list[str]
    labels: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.offsets)

    def crop(self, clip: int, start: int, n_frames: int, pad_value: float) -> np.ndarray:
        """(F, n_frames) float32 from `start`; clips shorter than n_frames are padded with silence."""
        off, length = int(self.offsets[clip]), int(self.lengths[clip])
        piece = np.asarray(self.frames[off + start: off + min(start + n_frames, length)], dtype=np.float32)
        out = np.full((n_frames, self.frames.shape[1]), pad_value, dtype=np.float32)
        out[: len(piece)] = piece
        return out.T

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
        mean = np.atleast_1d(total / count)
        std = np.sqrt(np.maximum(np.atleast_1d(total_sq / count) - mean * mean, 1e-12))
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
    return Corpus(lms.reshape(n * t, f), np.arange(n) * t, np.full(n, t), frontend,
                  [f"builtin/{i:05d}" for i in range(n)], labels)


@functools.lru_cache(maxsize=4)
def _frontend(items: tuple) -> torch.nn.Module:
    """One front-end per worker process and config, not one per file (it builds the mel bank)."""
    return build_frontend(FrontendConfig.from_dict(dict(items)))


def _lms_of_file(args) -> tuple[str, np.ndarray | None, str | None]:
    path, cfg = args
    try:
        wave = load_audio(path, cfg.sample_rate)
        with torch.no_grad():
            lms = _frontend(tuple(sorted(cfg.to_dict().items())))(torch.from_numpy(wave))  # (F, T)
        return str(path), lms.T.numpy().astype(np.float16), None
    except AudioError as e:
        return str(path), None, str(e)


def prepare_corpus(source: str | os.PathLike, out: str | os.PathLike, frontend: FrontendConfig,
                   n_frames: int, workers: int = 0) -> Path:
    """Decode every audio file under `source` into a prepared corpus folder `out`.

    Bad files are reported once each (path and reason) and skipped. Reuses `out` when it
    already holds a complete corpus of the same files and front-end.
    """
    out = Path(out)
    files = find_audio_files(source)
    index_path = out / "index.json"
    if index_path.is_file():
        index = json.loads(index_path.read_text())
        if index["frontend"] == frontend.to_dict() and index["files"] == [str(p) for p in files]:
            log.info("reusing prepared corpus %s", out)
            return out
    if not files:
        raise ValueError(f"{source}: no audio files ({', '.join(AUDIO_EXTENSIONS)}) found")
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "lms.f16.tmp"
    offsets, lengths, names, errors, total = [], [], [], [], 0
    jobs = [(p, frontend) for p in files]
    pool = ProcessPoolExecutor(workers) if workers > 0 else None
    results = pool.map(_lms_of_file, jobs, chunksize=8) if pool else map(_lms_of_file, jobs)
    with open(tmp, "wb") as f:
        for name, lms, error in results:
            if error is not None:
                log.warning("skipping %s", error)
                errors.append({"path": name, "error": error})
                continue
            f.write(lms.tobytes())
            offsets.append(total)
            lengths.append(len(lms))
            names.append(name)
            total += len(lms)
        f.flush()
        os.fsync(f.fileno())
    if pool:
        pool.shutdown()
    if not names:
        tmp.unlink()
        raise ValueError(f"{source}: none of the {len(files)} audio files could be read "
                         f"(first error: {errors[0]['error']})")
    os.replace(tmp, out / "lms.f16")
    corpus = _corpus(out / "lms.f16", offsets, lengths, names, frontend)
    stats = corpus.stats(n_frames)
    index = dict(files=[str(p) for p in files], frontend=frontend.to_dict(), clips=names,
                 offsets=offsets, lengths=lengths, errors=errors, stats_frames=n_frames,
                 norm_stats=stats.to_json())
    atomic_write_text(index_path, json.dumps(index))
    log.info("prepared %d clips (%d frames) into %s; %d files skipped", len(names), total, out, len(errors))
    return out


def _corpus(path: Path, offsets, lengths, names, frontend: FrontendConfig) -> Corpus:
    total = int(np.sum(lengths))
    frames = np.memmap(path, dtype=np.float16, mode="r", shape=(total, frontend.n_mels))
    return Corpus(frames, np.asarray(offsets, np.int64), np.asarray(lengths, np.int64), frontend, list(names))


def load_corpus(folder: str | os.PathLike) -> tuple[Corpus, NormStats]:
    """Open a prepared corpus (memory-mapped) -> (corpus, its normalisation statistics)."""
    folder = Path(folder)
    try:
        index = json.loads((folder / "index.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{folder}: not a prepared corpus ({e})") from e
    corpus = _corpus(folder / "lms.f16", index["offsets"], index["lengths"], index["clips"],
                     FrontendConfig.from_dict(index["frontend"]))
    stats = index["norm_stats"] if "norm_stats" in index else [index["mean"], index["std"]]  # older corpora
    return corpus, NormStats.parse(stats, f"{folder / 'index.json'}: norm_stats")


class CropBatches(torch.utils.data.Dataset):
    """One epoch's batches for one rank: item k is a (B, 1, F, T) float32 batch of random crops.

    The clip order and crop positions depend only on (seed, epoch), so ranks split one global
    permutation and a resumed run can start at any batch.
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
        crops = [self.corpus.crop(int(c), int(s), self.n_frames, self.pad)
                 for c, s in zip(self.clips[sl], self.starts[sl])]
        return torch.from_numpy(np.stack(crops)[:, None])
