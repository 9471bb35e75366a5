"""One way in: the batch job over audio files that `specmae embed` and `specmae predict` run.

    find_inputs(inputs)                     files and folders -> sorted [(file, output name)]
    run_files(files, done, fn, keep, ...)   decode, batch, run, keep each result; resumable
    checkpoint_identity(embedder)           the model an output was made with, by content

A job claims its output first (outputs.claim: its recorded settings, by content, must be this
run's), then skips the inputs already done and runs the rest: files are decoded by a pool of
threads, a bounded number ahead, and handed over in batches of about `batch_seconds` of audio
across files. A batch that fails on one clip (undecodable audio, a non-finite result) is run
again clip by clip; the culprits are reported (log, errors.tsv beside the output: outputs.
write_errors) and skipped, and the job goes on. Results are kept as they come (`keep`); tables
are saved (`save`) every `save_every` seconds and at the end, also on KeyboardInterrupt.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from tqdm import tqdm

from ..audio import AUDIO_EXTENSIONS, AudioError, find_audio_files, load_audio
from ..checkpoint import identity
from ..checkpoint.hub import is_hub_name, reference
from ..files import atomic_write_text
from ..outputs import write_errors

log = logging.getLogger(__name__)


@dataclass
class JobSummary:
    """What a job did: files done now, skipped as done before, failed (name, reason), seconds of audio."""
    done: int = 0
    skipped: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    seconds_of_audio: float = 0.0

    @property
    def embedded(self) -> int:  # the name embed_files' callers know
        return self.done

    @property
    def predicted(self) -> int:  # the name predict_files' callers know
        return self.done


def find_inputs(inputs: list[str | os.PathLike]) -> list[tuple[Path, str]]:
    """Files and folders (recursive) -> sorted [(file, output name)]; names are unique.

    The output name is the path relative to the folder given (prefixed by the folder's name when
    several inputs are given), or the file name for a file given directly. No file at all is an error.
    """
    found: dict[str, Path] = {}
    for root in map(Path, inputs):
        if root.is_dir():
            prefix = Path(root.resolve().name) if len(inputs) > 1 else Path()
            pairs = [(p, (prefix / p.relative_to(root)).as_posix()) for p in find_audio_files(root)]
        elif root.exists():
            pairs = [(root, root.name)]
        else:
            raise FileNotFoundError(f"{root}: no such file or folder")
        for path, name in pairs:
            if name in found and found[name].resolve() != path.resolve():
                raise ValueError(f"{path} and {found[name]} would both be written as {name!r}: "
                                 "give them in separate runs")
            found[name] = path
    if not found:
        raise ValueError(f"{', '.join(map(str, inputs))}: no audio files found (searched recursively for "
                         f"{', '.join(AUDIO_EXTENSIONS)})")
    return sorted(((p, n) for n, p in found.items()), key=lambda pair: pair[1])


def run_files(files: list[tuple[Path, str]], done: Callable[[str], bool], fn: Callable[[list, list], list],
              keep: Callable[[str, object], None], *, sample_rate: int, settings: tuple[Path, dict],
              errors: Path, save: Callable[[], None] | None = None, batch_seconds: float = 160.0,
              workers: int = 4, progress: bool = True, save_every: float = 60.0, desc: str = "") -> JobSummary:
    """Run `fn(names, waves)` -> one result per clip over the files not `done(name)`; `keep(name,
    result)` stores each. `settings` (its JSON file, the settings) are recorded before the first
    result; `save()` writes what is kept to disk (tables), `errors` lists the files that failed."""
    todo = [(p, n) for p, n in files if not done(n)]
    summary = JobSummary(skipped=len(files) - len(todo))
    atomic_write_text(settings[0], json.dumps(settings[1], indent=1))
    bar = tqdm(total=len(todo), unit="file", disable=not progress, desc=desc)
    last_save = time.monotonic()
    try:
        for batch in _batches(todo, sample_rate, batch_seconds, workers, summary.failed):
            lengths = {name: len(wave) for name, wave in batch}
            for name, result in run_batch(fn, batch, summary.failed):
                keep(name, result)
                summary.done += 1
                summary.seconds_of_audio += lengths[name] / sample_rate
            bar.update(summary.done + len(summary.failed) - bar.n)
            if save is not None and time.monotonic() - last_save > save_every:
                save()
                last_save = time.monotonic()
    finally:  # also on KeyboardInterrupt: keep what is done
        bar.close()
        if save is not None:
            save()
        write_errors(errors, summary.failed)
    return summary


def _batches(todo: list[tuple[Path, str]], sample_rate: int, batch_seconds: float, workers: int,
             failed: list[tuple[str, str]]) -> Iterator[list[tuple[str, np.ndarray]]]:
    """Decode files in threads, in order; yield [(name, waveform)] of about batch_seconds each."""
    def read(item):
        path, name = item
        try:
            return name, load_audio(path, sample_rate), None
        except (AudioError, OSError, MemoryError) as e:
            return name, None, str(e)

    batch, seconds = [], 0.0
    with ThreadPoolExecutor(max(1, workers)) as pool:
        pending: deque = deque()
        items = iter(todo)
        while True:
            # A bounded lead: decoded audio waits in memory for a few batches at most.
            while len(pending) < 4 * max(1, workers) and (item := next(items, None)) is not None:
                pending.append(pool.submit(read, item))
            if not pending:
                break
            name, wave, error = pending.popleft().result()
            if error is not None:
                failed.append((name, error))
                log.warning("skipped %s", error)
                continue
            batch.append((name, wave))
            seconds += len(wave) / sample_rate
            if seconds >= batch_seconds:
                yield batch
                batch, seconds = [], 0.0
    if batch:
        yield batch


def run_batch(fn, batch: list[tuple[str, np.ndarray]], failed: list[tuple[str, str]]) -> list:
    """fn(names, waves) -> one result per clip, for a batch [(name, wave)] -> [(name, result)].

    When the batch fails on a clip (unreadable audio, a non-finite result) it is run again clip by
    clip: the culprits are reported in `failed` (and the log) and dropped, the rest are kept.
    """
    names = [n for n, _ in batch]
    try:
        return list(zip(names, fn(names, [w for _, w in batch])))
    except (AudioError, FloatingPointError) as e:
        if len(batch) == 1:
            failed.append((names[0], str(e)))
            log.warning("skipped %s", e)
            return []
    return [item for one in batch for item in run_batch(fn, [one], failed)]


def checkpoint_identity(embedder, checkpoint: str | os.PathLike = "") -> dict:
    """The checkpoint an Embedder (or Predictor) was loaded from, by content (checkpoint.identity):
    a run folder's `latest` moves on as the run trains, so its path alone does not tell which
    model made an output. Hashed once per process for the same files (path, size, mtime)."""
    ck = embedder.checkpoint
    if ck is None:
        return {"path": reference(checkpoint)} if checkpoint else {}
    if Path(ck.path).is_file():  # official weights converted in memory
        config = json.dumps(ck.to_json(), sort_keys=True).encode()
        return {"path": str(Path(ck.path).resolve()), "config_sha256": hashlib.sha256(config).hexdigest(),
                "weights_sha256": ck.imported["sha256"], "step": ck.step}
    folder = Path(ck.path).resolve()
    files = tuple((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.iterdir()) if p.is_file())
    found = dict(_identity(folder, files), step=ck.step)
    # A hub name says where the model came from; its cache folder is an accident of this machine.
    return dict(found, path=checkpoint) if is_hub_name(checkpoint) else found


@functools.lru_cache(maxsize=64)
def _identity(folder: Path, files: tuple) -> dict:
    return identity(folder)  # `files` (name, size, mtime) tells a changed checkpoint from the one hashed
