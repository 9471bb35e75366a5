"""What the evaluation runner embeds with, and where it keeps the results.

    task clips --AudioStore (decoded once, checked before any work)--> waveforms
      --ClipEmbedder: a checkpoint, the same architecture randomly initialised, log-mel stats-->
      clip embeddings (N, D) --EmbeddingCache--> <cache>/<key>.npz

The cache key hashes the model (the checkpoint by content: features.jobs.checkpoint_identity,
the SHA-256 of its config and weights, computed once per process; the embedding options; or the
baseline's definition) and the clips (paths, sizes, mtimes).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import torch

from ..audio import AudioError, FrontendConfig, build_frontend, load_audio, resample
from ..files import atomic_write_bytes
from .tasks import Task, problems_error

log = logging.getLogger(__name__)

CACHE_VERSION = 2  # 2: checkpoints identified by content
BASELINES = {"random": "random init", "logmel": "log-mel stats"}


class AudioStore:
    """Decoded clips of tasks, checked once before anything is embedded. Kept in memory up to
    `budget_bytes` in all; beyond that, decoded again when embedded."""

    def __init__(self, budget_bytes: int = 2 << 30):
        self.budget, self.used = budget_bytes, 0
        self.kept: dict[tuple, list[np.ndarray]] = {}

    @staticmethod
    def _key(task: Task, rate: int) -> tuple:
        return tuple(map(str, task.paths)), rate

    def check(self, tasks: Sequence[Task], rate: int) -> None:
        """Decode every clip of every task; raise one TaskError listing every bad row of every task."""
        problems = []
        for task in tasks:
            if task.waves is not None or self._key(task, rate) in self.kept:
                continue
            waves, keep = [], True
            for ref, path in zip(task.refs, task.paths):
                try:
                    wave = load_audio(path, rate)
                except AudioError as e:
                    problems.append(f"{ref}: {e}")
                    continue
                if keep and self.used + wave.nbytes <= self.budget:
                    waves.append(wave)
                    self.used += wave.nbytes
                else:
                    keep = False
            if keep and not problems:
                self.kept[self._key(task, rate)] = waves
            else:
                self.used -= sum(w.nbytes for w in waves)
        if problems:
            raise problems_error("unreadable audio: nothing was embedded", problems)

    def clips(self, task: Task, rate: int, idx: Sequence[int]) -> list[np.ndarray]:
        if task.waves is not None:
            return [resample(task.waves[i], task.sample_rate, rate) for i in idx]
        kept = self.kept.get(self._key(task, rate))
        return [kept[i] if kept is not None else load_audio(task.paths[i], rate) for i in idx]


@dataclass
class ClipEmbedder:
    """name, identity (what the cache key hashes), sample_rate, embed(list of (S_i,)) -> (B, D)."""
    name: str
    identity: dict
    sample_rate: int
    embed: Callable[[list[np.ndarray]], np.ndarray]


def _file_identity(path: Path) -> dict:
    st = path.stat()
    return {"file": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _encoder_embedder(name: str, embedder, identity: dict) -> ClipEmbedder:
    def embed(waves: list[np.ndarray]) -> np.ndarray:
        clips = [torch.from_numpy(w) for w in waves]
        return embedder.embed(clips, embedder.sample_rate).clip.float().cpu().numpy()
    return ClipEmbedder(name, identity, embedder.sample_rate, embed)


def logmel_stats_embedder(frontend: FrontendConfig, device: str | torch.device = "cpu",
                          name: str = BASELINES["logmel"]) -> ClipEmbedder:
    """Hand-crafted baseline: per-mel-bin mean and std (over time) of the un-normalised log-mel,
    (2F,) = 160-d for 80 bins."""
    fe = build_frontend(frontend).to(device)

    @torch.no_grad()
    def embed(waves: list[np.ndarray]) -> np.ndarray:
        out = []
        for w in waves:
            lms = fe(torch.from_numpy(w).to(device))  # (F, T)
            std, mean = torch.std_mean(lms, dim=1, correction=0)
            out.append(torch.cat([mean, std]))
        return torch.stack(out).cpu().numpy()
    return ClipEmbedder(name, {"kind": "logmel-stats", "frontend": frontend.to_dict()}, frontend.sample_rate, embed)


def model_embedders(models: Mapping[str, str | os.PathLike], baselines: Sequence[str] = ("random", "logmel"), *,
                    seed: int = 0, device: str | torch.device = "cpu", embed_options: dict | None = None
                    ) -> list[ClipEmbedder]:
    """Embedders for each checkpoint, then the baselines built from the first one's config:
    'random' (same architecture, torch.manual_seed(seed) initialisation) and 'logmel'."""
    from .. import features
    from ..features.jobs import checkpoint_identity
    from ..model.mae import build_mae

    options = dict(embed_options or {})
    if not models:
        raise ValueError("no model to evaluate: give at least one checkpoint")
    unknown = sorted(set(baselines) - set(BASELINES))
    if unknown:
        raise ValueError(f"baselines {unknown}: allowed {sorted(BASELINES)}")
    out, first = [], None
    for name, path in models.items():
        emb = features.load(path, device, **options)
        # By content, as embed and predict record it: a copy of the same weights hits the cache.
        identity = {k: v for k, v in checkpoint_identity(emb).items() if k != "path"}
        out.append(_encoder_embedder(name, emb, {"kind": "checkpoint", **identity, "options": options}))
        first = first or emb.checkpoint
    if "random" in baselines:
        encoder = build_mae(first.config.model, seed).encoder
        emb = features.Embedder(encoder.to(device), first.config.frontend, first.norm_stats,
                                **{k: v for k, v in options.items() if k in features.EMBED_OPTIONS})
        out.append(_encoder_embedder(BASELINES["random"], emb, {
            "kind": "random-init", "seed": seed, "model": first.config.model.to_dict(),
            "frontend": first.config.frontend.to_dict(), "norm_stats": first.norm_stats.to_json(), "options": options}))
    if "logmel" in baselines:
        out.append(logmel_stats_embedder(first.config.frontend, device))
    return out


def task_identity(task: Task) -> dict:
    """What the clips' embeddings depend on: the files (path, size, mtime) or the samples."""
    if task.waves is not None:
        h = hashlib.sha256()
        for w in task.waves:
            h.update(np.int64(len(w)).tobytes())
            h.update(np.ascontiguousarray(w, np.float32).tobytes())
        return {"waves_sha256": h.hexdigest(), "sample_rate": task.sample_rate}
    return {"files": [list(_file_identity(p).values()) for p in task.paths]}


def cache_key(embedder: ClipEmbedder, task_id: dict) -> str:
    blob = json.dumps({"version": CACHE_VERSION, "model": embedder.identity, "clips": task_id}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


class EmbeddingCache:
    """(N, D) float32 embeddings keyed by cache_key, in memory and, given a folder, as
    <folder>/<key>.npz written atomically. A damaged file is ignored and rewritten."""

    def __init__(self, folder: str | os.PathLike | None):
        self.folder = Path(folder) if folder is not None else None
        self.memory: dict[str, np.ndarray] = {}

    def get(self, key: str, n: int) -> np.ndarray | None:
        if key in self.memory:
            return self.memory[key]
        path = self.folder / f"{key}.npz" if self.folder else None
        if path is None or not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as f:
                emb = f["embeddings"]
        except (OSError, ValueError, KeyError) as e:
            log.warning("%s: unreadable cached embeddings, recomputing (%s)", path, e)
            return None
        if emb.ndim != 2 or len(emb) != n:
            log.warning("%s: cached embeddings of shape %s for %d clips, recomputing", path, emb.shape, n)
            return None
        self.memory[key] = emb
        return emb

    def put(self, key: str, emb: np.ndarray, meta: dict) -> None:
        self.memory[key] = emb
        if self.folder is not None:
            buf = io.BytesIO()
            np.savez(buf, embeddings=emb, meta=np.array(json.dumps(meta)))
            atomic_write_bytes(self.folder / f"{key}.npz", buf.getvalue())


def embed_task(task: Task, embedder: ClipEmbedder, audio: AudioStore, max_clips: int = 64,
               max_seconds: float = 600.0) -> np.ndarray:
    """(N, D) clip embeddings, in batches of at most max_clips clips and max_seconds of audio."""
    out, batch, samples = [], [], 0
    limit = max_seconds * embedder.sample_rate
    lengths = None if task.waves is None else [len(w) * embedder.sample_rate / task.sample_rate for w in task.waves]
    for i in range(len(task) + 1):
        n = lengths[i] if lengths is not None and i < len(task) else 0
        if batch and (i == len(task) or len(batch) == max_clips or samples + n > limit):
            out.append(embedder.embed(audio.clips(task, embedder.sample_rate, batch)))
            batch, samples = [], 0
        if i < len(task):
            batch.append(i)
            samples += n
    return np.concatenate(out).astype(np.float32, copy=False)
