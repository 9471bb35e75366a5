"""Pre-training data: log-mel corpora on disk and deterministic random crops (docs/architecture.md).

A prepared corpus is a folder:

    lms.f16      all clips' log-mel frames, float16, row-major (total_frames, F): a crop of
                 T consecutive frames is one contiguous slice of a memory map
    index.json   per clip: source path, offset, length (frames); the front-end config,
                 every source file with its size and modification time, the files that
                 were skipped and why, and the normalisation statistics

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
# One source file of a pre-training corpus; longer ones are skipped (prepare_corpus's max_seconds).
# Crops are drawn per clip, so hours of one file add little, and a file this long is more often
# a header that lies or a concatenation gone wrong than a recording.
MAX_CLIP_SECONDS = 3 * 3600
# What makes index.json a specmae corpus's, not some other tool's file of the same name.
INDEX_KEYS = {"files", "frontend", "clips", "offsets", "lengths"}


@dataclass
class Corpus:
    """Log-mel clips concatenated along time: frames (total_frames, F), float16 or float32."""
    frames: np.ndarray
    offsets: np.ndarray        # (N,) int64, first frame of each clip
    lengths: np.ndarray        # (N,) int64, frames per clip
    frontend: FrontendConfig
    names: list[str]
    labels: np.ndarray | None = None
    source: str = "in-memory corpus"  # how messages name it: the prepared folder, or in memory

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
    return Corpus(lms.reshape(n * t, f), np.arange(n) * t, np.full(n, t), frontend,
                  [f"builtin/{i:05d}" for i in range(n)], labels)


@functools.lru_cache(maxsize=4)
def _frontend(items: tuple) -> torch.nn.Module:
    """One front-end per worker process and config, not one per file (it builds the mel bank)."""
    return build_frontend(FrontendConfig.from_dict(dict(items)))


def _lms_of_file(args) -> tuple[str, np.ndarray | None, str | None]:
    """(path, front-end config, max seconds) -> (path, log-mel (T, F) float16 or None, error or None)."""
    path, cfg, max_seconds = args
    try:
        wave = load_audio(path, cfg.sample_rate, max_seconds)
        with torch.no_grad():
            lms = _frontend(tuple(sorted(cfg.to_dict().items())))(torch.from_numpy(wave))  # (F, T)
    except AudioError as e:
        return str(path), None, str(e)
    lms = lms.T.numpy().astype(np.float16)
    if not np.isfinite(lms).all():  # after the cast: float16 overflows past 65504
        return str(path), None, f"{path}: log-mel is not finite (samples far outside [-1, 1]?)"
    return str(path), lms, None


def prepare_corpus(source: str | os.PathLike, out: str | os.PathLike, frontend: FrontendConfig,
                   n_frames: int, workers: int = 0, *, max_seconds: float | None = MAX_CLIP_SECONDS,
                   rebuild: bool = False) -> Path:
    """Decode every audio file under `source` into a prepared corpus folder `out`.

    Bad files (unreadable, lying headers, longer than `max_seconds`, samples non-finite or far
    beyond full scale, a non-finite log-mel) are reported once each (path and reason) and
    skipped. Reuses `out` when it already holds a corpus of the same files - same paths, sizes
    and modification times - and front-end. A corpus made from other files or settings is
    refused (ValueError), or prepared again over with `rebuild`; a folder that holds anything
    but a specmae corpus is always refused, never written into.
    """
    out = Path(out)
    files = find_audio_files(source)
    if not files:
        raise ValueError(f"{source}: no audio files ({', '.join(AUDIO_EXTENSIONS)}) found")
    paths, file_stats = [str(p) for p in files], [_file_stat(p) for p in files]
    index = _existing_index(out)
    if index is not None:
        changes = _changes(index, paths, file_stats, frontend)
        if not changes:
            if "file_stats" not in index:
                log.warning("reusing %s: prepared by an older specmae that did not record file sizes and "
                            "times, so changed contents cannot be detected", out)
            log.info("reusing prepared corpus %s", out)
            return out
        if not rebuild:
            raise ValueError(f"{out}: holds a corpus prepared from other audio or settings than {source} "
                             f"has now ({'; '.join(changes)}); it is left as it is: remove it or prepare "
                             "into another folder")
        log.warning("preparing %s again: %s", out, "; ".join(changes))
    out.mkdir(parents=True, exist_ok=True)
    (out / "index.json").unlink(missing_ok=True)  # never an old index beside new frames
    tmp = out / "lms.f16.tmp"
    offsets, lengths, names, errors, total = [], [], [], [], 0
    jobs = [(p, frontend, max_seconds) for p in files]
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
    corpus = _corpus(out, offsets, lengths, names, frontend)
    stats = corpus.stats(n_frames)
    index = dict(files=paths, file_stats=file_stats, frontend=frontend.to_dict(), clips=names,
                 offsets=offsets, lengths=lengths, errors=errors, stats_frames=n_frames,
                 norm_stats=stats.to_json())
    atomic_write_text(out / "index.json", json.dumps(index))
    log.info("prepared %d clips (%d frames) into %s; %d files skipped", len(names), total, out, len(errors))
    return out


def _file_stat(path: Path) -> list[int]:
    """[size, mtime_ns]: what tells a changed file from the one a corpus was prepared from."""
    try:
        st = path.stat()
    except OSError:
        return [-1, -1]
    return [st.st_size, st.st_mtime_ns]


def _existing_index(out: Path) -> dict | None:
    """The index of the corpus in `out`; None when `out` is absent, empty or holds only an
    interrupted preparation's frames. ValueError when it holds anything else."""
    if not out.exists():
        return None
    if not out.is_dir():
        raise ValueError(f"{out}: is a file; a prepared corpus is a folder")
    index_path = out / "index.json"
    if index_path.exists():
        try:
            index = json.loads(index_path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"{index_path}: unreadable ({e}); not touching {out}: prepare into another "
                             "folder") from e
        if not isinstance(index, dict) or not INDEX_KEYS <= index.keys():
            raise ValueError(f"{index_path}: not a specmae corpus index; not touching {out}: prepare into "
                             "another folder")
        return index
    others = sorted(p.name for p in out.iterdir() if p.name not in ("lms.f16", "lms.f16.tmp"))
    if others:
        listed = ", ".join(others[:5]) + (f" and {len(others) - 5} more" if len(others) > 5 else "")
        raise ValueError(f"{out}: not empty and not a prepared corpus (holds {listed}); prepare into a new "
                         "or empty folder")
    return None


def _changes(index: dict, paths: list[str], file_stats: list[list[int]], frontend: FrontendConfig) -> list[str]:
    """How the files and front-end differ from those `index` was prepared from; [] when they don't."""
    changes = []
    before, now = index["frontend"], frontend.to_dict()
    fields = sorted(k for k in before.keys() | now.keys() if before.get(k) != now.get(k))
    if fields:
        changes.append("front-end " + ", ".join(f"{k} {before.get(k)!r} -> {now.get(k)!r}" for k in fields))
    old = dict(zip(index["files"], index.get("file_stats") or [None] * len(index["files"])))
    new = dict(zip(paths, file_stats))
    for what, names in (("changed", [p for p in new if p in old and old[p] is not None and old[p] != new[p]]),
                        ("added", [p for p in new if p not in old]),
                        ("removed", [p for p in old if p not in new])):
        if names:
            more = f" and {len(names) - 3} more" if len(names) > 3 else ""
            changes.append(f"{len(names)} file{'s' * (len(names) > 1)} {what}: {', '.join(names[:3])}{more}")
    return changes


def _corpus(folder: Path, offsets, lengths, names, frontend: FrontendConfig) -> Corpus:
    total = int(np.sum(lengths))
    frames = np.memmap(folder / "lms.f16", dtype=np.float16, mode="r", shape=(total, frontend.n_mels))
    return Corpus(frames, np.asarray(offsets, np.int64), np.asarray(lengths, np.int64), frontend, list(names),
                  source=str(folder))


def load_corpus(folder: str | os.PathLike) -> tuple[Corpus, NormStats]:
    """Open a prepared corpus (memory-mapped) -> (corpus, its normalisation statistics)."""
    folder = Path(folder)
    try:
        index = json.loads((folder / "index.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{folder}: not a prepared corpus ({e})") from e
    corpus = _corpus(folder, index["offsets"], index["lengths"], index["clips"],
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
