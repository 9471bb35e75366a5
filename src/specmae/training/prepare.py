"""Preparing a pre-training corpus: audio files -> float16 log-mel shards (the format: corpus.py, docs/data.md).

How a preparation holds at AudioSet scale (2 million files, days of CPU time):

- Files are decoded in worker processes, at most CHUNK x WINDOW_PER_WORKER per worker in
  flight, and their log-mel taken in file order: memory stays bounded whatever the corpus size,
  and the shards are the same whatever the number of workers.
- A shard is closed once it holds `shard_bytes` of frames, so its boundaries are a function of
  the sorted file list and the files' contents alone. It is committed atomically: frames written
  under a temporary name, fsynced and renamed, then its index and sources table, then the
  manifest that lists it (written atomically). Whatever lies in shards/ but is not in the
  manifest is what an interrupted run left, and the next run deletes it first.
- A file is prepared once: a run prepares the files that no committed shard holds - the rest of
  an interrupted run (which then ends byte-identical to an uninterrupted one), files added to
  the source, and files changed since (size or modification time). The clips of changed and
  removed files are dropped from the indexes; their frames stay in the shard until --rebuild.
- The normalisation statistics are measured once, at the end, on random crops of the whole corpus.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import time
from collections import deque
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ..audio import AUDIO_EXTENSIONS, AudioError, FrontendConfig, build_frontend, load_audio
from ..procs import worker_pool
from .corpus import FORMAT, SHARDS, VERSION, open_shards
from .plan import Plan, plan
from .shards import ShardWriter, discard_uncommitted, drop, existing_manifest, write_errors, write_manifest
from .sources import list_sources

log = logging.getLogger(__name__)

DEFAULT_SHARD_BYTES = 1 << 30
# One source file of a pre-training corpus; longer ones are skipped (prepare_corpus's max_seconds).
# Crops are drawn per clip, so hours of one file add little, and a file this long is more often
# a header that lies or a concatenation gone wrong than a recording.
MAX_CLIP_SECONDS = 3 * 3600
CHUNK, WINDOW_PER_WORKER = 8, 2  # files per task, tasks in flight per worker


def prepare_corpus(source: str | os.PathLike, out: str | os.PathLike, frontend: FrontendConfig, n_frames: int,
                   workers: int = 0, *, max_seconds: float | None = MAX_CLIP_SECONDS, rebuild: bool = False,
                   incremental: bool = True, shard_bytes: int | None = None, progress: bool = False) -> Path:
    """Prepare the audio files of `source` (a folder, a file, or a .txt/.csv list) into corpus folder `out`.

    Bad files (unreadable, lying headers, longer than `max_seconds`, silent, samples non-finite or
    far beyond full scale, a non-finite log-mel) are reported once each and listed in errors.tsv.
    A corpus already in `out` is continued: only files no committed shard holds are prepared, and
    the clips of changed or removed files dropped. With `incremental=False` a finished corpus whose
    files changed is refused instead (a training run's own corpus must stay what it trained on).
    `rebuild` prepares `out` again from scratch, also when its front-end or format differs (else
    refused). A folder that holds anything but a specmae corpus is always refused, never written into.
    """
    out = Path(out)
    files, missing = list_sources(source)
    if not files and not missing:
        raise ValueError(f"{source}: no audio files ({', '.join(AUDIO_EXTENSIONS)}) found")
    manifest = existing_manifest(out, frontend, rebuild)
    work = plan(files, out, manifest)
    changed, added, removed = work.changed, work.added, work.removed
    if manifest is not None and manifest["complete"]:
        if not (changed or added or removed) and manifest["frontend"] == frontend.to_dict():
            log.info("reusing prepared corpus %s", out)
            return out
        if (changed or added or removed) and not incremental:
            raise ValueError(f"{out}: holds a corpus prepared from other audio or settings than {source} has now "
                             f"({_describe(changed, added, removed)}); it is left as it is: remove it or prepare "
                             "into another folder")
    if manifest is None:
        out.mkdir(parents=True, exist_ok=True)
        manifest = dict(format=FORMAT, version=VERSION, shard_bytes=shard_bytes or DEFAULT_SHARD_BYTES, shards=[])
    elif shard_bytes and shard_bytes != manifest["shard_bytes"]:
        log.warning("%s: keeps its shard size of %d bytes (not %d), so that its shards stay a function of its files",
                    out, manifest["shard_bytes"], shard_bytes)
    # Written first: from here on the folder is a corpus, not finished until the statistics are in.
    manifest.update(frontend=frontend.to_dict(), complete=False)
    manifest.pop("norm_stats", None)
    write_manifest(out, manifest)
    (out / SHARDS).mkdir(exist_ok=True)
    discard_uncommitted(out, manifest)
    errors = drop(out, manifest, set(changed) | set(removed))
    writer = ShardWriter(out, manifest, errors, missing)
    for path, reason in missing:
        log.warning("skipping %s", reason)
    if len(work.todo):
        log.info("preparing %d files into %s (%d already prepared, %d dropped)", len(work.todo), out,
                 work.prepared - len(changed) - len(removed), len(changed) + len(removed))
    try:
        _prepare_files(work, frontend, max_seconds, workers, writer, progress)
    except OSError as e:
        writer.discard()
        if e.errno != errno.ENOSPC:
            raise
        full = OSError(f"{out}: no space left on the device while writing shard {writer.name}; the "
                       f"{len(manifest['shards'])} shards committed so far are intact and the unfinished one was "
                       "removed: free some space and run the same command again to resume")
        full.errno = errno.ENOSPC
        raise full from e
    except BaseException:
        writer.discard()
        raise
    return _finish(out, manifest, writer.all_errors(), n_frames, source, len(files) + len(missing))


def _prepare_files(work: Plan, frontend: FrontendConfig, max_seconds: float | None,
                   workers: int, writer: ShardWriter, progress: bool) -> None:
    todo = [work.files[i] for i in work.todo]  # one index at a time: a list of 2 million ints is 70 MB
    started, seconds = time.perf_counter(), 0.0
    bar = tqdm(total=len(todo), unit="file", desc="prepare", disable=not progress, dynamic_ncols=True)
    for i, (path, lms, error) in zip(work.todo, _log_mels(todo, frontend, max_seconds, workers)):
        if error is not None:
            log.warning("skipping %s", error)
        else:
            seconds += len(lms) * frontend.hop_length / frontend.sample_rate
        writer.add(path, work.stat(i), lms, error)
        bar.update()
        if bar.n % 64 == 0 or bar.n == len(todo):
            bar.set_postfix_str(f"{seconds / 3600 / (time.perf_counter() - started):.3g} audio h/s", refresh=False)
    writer.finish()
    bar.close()
    if todo:
        elapsed = time.perf_counter() - started
        log.info("prepared %d files, %.2f h of audio, in %.0f s: %.1f files/s, %.3g audio h/s", len(todo),
                 seconds / 3600, elapsed, len(todo) / elapsed, seconds / 3600 / elapsed)


def _finish(out: Path, manifest: dict, errors: list[tuple[str, str]], n_frames: int, source, n_files: int) -> Path:
    """Measure the statistics on the whole corpus and mark it complete."""
    write_errors(out, errors)
    corpus = open_shards(out, manifest)
    if not len(corpus):
        raise ValueError(f"{source}: none of the {n_files} audio files could be read "
                         f"(first error: {errors[0][1] if errors else 'none'})")
    stats = corpus.stats(n_frames)
    frames = int(corpus.lengths.sum())
    manifest.update(complete=True, clips=len(corpus), frames=frames, stats_frames=n_frames,
                    hours=round(frames * corpus.frontend.hop_length / corpus.frontend.sample_rate / 3600, 3),
                    norm_stats=stats.to_json())
    write_manifest(out, manifest)
    log.info("prepared corpus %s: %d clips (%.1f h) in %d shards; %d files skipped (errors.tsv)", out, len(corpus),
             manifest["hours"], len(manifest["shards"]), len(errors))
    return out


def _log_mels(todo: list[str], frontend: FrontendConfig, max_seconds: float | None, workers: int):
    """-> (path, log-mel (T, F) float16 or None, error or None) per file, in order.

    Files go to the workers CHUNK at a time (one round trip per file would cost more than a short
    file's decoding), and at most WINDOW_PER_WORKER chunks per worker are in flight, so memory
    does not grow with the corpus. One file's small matrix products gain nothing from threads,
    and threads fighting over busy cores cost much: every decoder runs one torch thread.
    """
    chunks = ([(p, frontend, max_seconds) for p in todo[i:i + CHUNK]] for i in range(0, len(todo), CHUNK))
    if workers <= 0:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            for chunk in chunks:
                yield from _lms_of_files(chunk)
        finally:
            torch.set_num_threads(threads)
        return
    pool = worker_pool(workers, initializer=torch.set_num_threads, initargs=(1,))  # they end if this process is killed
    try:
        window: deque = deque()
        for chunk in chunks:
            window.append(pool.submit(_lms_of_files, chunk))
            if len(window) >= WINDOW_PER_WORKER * workers:
                yield from window.popleft().result()
        while window:
            yield from window.popleft().result()
    finally:
        pool.shutdown(cancel_futures=True)


def _lms_of_files(chunk: list) -> list[tuple[str, np.ndarray | None, str | None]]:
    return [_lms_of_file(job) for job in chunk]


@functools.lru_cache(maxsize=4)
def _frontend(items: tuple) -> torch.nn.Module:
    """One front-end per worker process and config, not one per file (it builds the mel bank)."""
    return build_frontend(FrontendConfig.from_dict(dict(items)))


def _lms_of_file(args) -> tuple[str, np.ndarray | None, str | None]:
    """(path, front-end config, max seconds) -> (path, log-mel (T, F) float16 or None, error or None)."""
    path, cfg, max_seconds = args
    try:
        wave = load_audio(path, cfg.sample_rate, max_seconds)
        if not wave.any():
            return str(path), None, f"{path}: digital silence (every sample is 0)"
        with torch.no_grad():
            lms = _frontend(tuple(sorted(cfg.to_dict().items())))(torch.from_numpy(wave))  # (F, T)
    except AudioError as e:
        return str(path), None, str(e)
    lms = lms.T.numpy().astype(np.float16)
    if not np.isfinite(lms).all():  # after the cast: float16 overflows past 65504
        return str(path), None, f"{path}: log-mel is not finite (samples far outside [-1, 1]?)"
    return str(path), lms, None


def _describe(changed: list[str], added: list[str], removed: list[str]) -> str:
    parts = []
    for what, names in (("changed", changed), ("added", added), ("removed", removed)):
        if names:
            more = f" and {len(names) - 3} more" if len(names) > 3 else ""
            parts.append(f"{len(names)} file{'s' * (len(names) > 1)} {what}: {', '.join(names[:3])}{more}")
    return "; ".join(parts)
