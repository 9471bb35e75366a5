"""`specmae embed`: embed every audio file under some paths, resumably (docs/architecture.md).

    specmae embed CKPT audio/ extra.wav --out emb/      one <out>/<relative path>.npz per file
    specmae embed CKPT audio/ --table clips.npz         one table: paths and clip embeddings

Per-file outputs hold `frames` (N, D) float32, `timestamps` (N,) float64 (span centres, ms) and
`clip` (D,) float32. A table (.npz with `paths` and `clip`, or .csv with one row per file) holds
clip embeddings only. Every file is written under a temporary name and renamed, so an interrupted
run leaves only complete outputs, and a re-run skips the files already done; a table is saved
every `save_every` seconds and on interruption. `<out>/specmae-embed.json` records the checkpoint
and options, and a re-run with other settings is refused instead of mixing the two.

Files are decoded by a pool of threads and embedded in batches of about `batch_seconds` of audio
across files. A file that cannot be decoded, is empty or holds NaN is reported (log, and
`errors.tsv` beside the outputs) and skipped.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..audio import AudioError, find_audio_files, load_audio
from ..files import atomic_write_bytes, atomic_write_text
from .chunking import resolve_layers
from .embedder import Embedder

log = logging.getLogger(__name__)

META = "specmae-embed.json"


@dataclass
class EmbedSummary:
    embedded: int = 0
    skipped: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)
    seconds_of_audio: float = 0.0


def find_audio(inputs: list[str | Path]) -> list[tuple[Path, str]]:
    """Files and folders (recursive) -> sorted [(file, output name)]; names are unique.

    The output name is the path relative to the folder given (prefixed by the folder's name when
    several inputs are given), or the file name for a file given directly.
    """
    found: dict[str, Path] = {}
    for root in map(Path, inputs):
        if root.is_dir():
            files = find_audio_files(root)
            prefix = Path(root.resolve().name) if len(inputs) > 1 else Path()
            pairs = [(p, (prefix / p.relative_to(root)).as_posix()) for p in files]
        elif root.exists():
            pairs = [(root, root.name)]
        else:
            raise FileNotFoundError(f"{root}: no such file or folder")
        for path, name in pairs:
            if name in found and found[name].resolve() != path.resolve():
                raise ValueError(f"{path} and {found[name]} would both be written as {name!r}: "
                                 "embed them in separate runs")
            found[name] = path
    return sorted(((p, n) for n, p in found.items()), key=lambda pair: pair[1])


def _npz_bytes(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _batches(todo: list[tuple[Path, str]], sample_rate: int, batch_seconds: float, workers: int,
             summary: EmbedSummary) -> Iterator[list[tuple[str, np.ndarray]]]:
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
                summary.failed.append((name, error))
                log.warning("skipped %s", error)
                continue
            batch.append((name, wave))
            seconds += len(wave) / sample_rate
            if seconds >= batch_seconds:
                yield batch
                batch, seconds = [], 0.0
    if batch:
        yield batch


def _embed_batch(embedder: Embedder, batch: list[tuple[str, np.ndarray]], summary: EmbedSummary, **options):
    """-> [(name, Embeddings of one clip)]; a clip that fails alone is reported and dropped."""
    names = [n for n, _ in batch]
    try:
        out = embedder.embed([w for _, w in batch], embedder.sample_rate, names=names, **options)
        return [(n, f, t, c) for n, f, t, c in zip(names, out.frames, out.timestamps, out.clip)]
    except (AudioError, FloatingPointError):
        if len(batch) == 1:
            raise
    results = []
    for item in batch:  # find the culprit: embed one by one
        try:
            results += _embed_batch(embedder, [item], summary, **options)
        except (AudioError, FloatingPointError) as e:
            summary.failed.append((item[0], str(e)))
            log.warning("skipped %s", e)
    return results


def embed_files(embedder: Embedder, inputs: list[str | Path], out: str | Path | None = None,
                table: str | Path | None = None, *, checkpoint: str = "", batch_seconds: float = 160.0,
                workers: int = 4, overwrite: bool = False, progress: bool = True, save_every: float = 60.0,
                **options) -> EmbedSummary:
    """Embed every audio file of `inputs` into `out` (one .npz per file) or `table` (.npz or .csv).

    options go to Embedder.embed (layers, layer_mode, precision). Returns what was done.
    """
    if (out is None) == (table is None):
        raise ValueError("give exactly one of out (a folder, one file per input) or table (one file)")
    target = Path(out) if out is not None else Path(table)
    if table is not None and target.suffix not in (".npz", ".csv"):
        raise ValueError(f"table {target}: expected a .npz or .csv name")
    meta_path = target / META if out is not None else target.with_name(target.name + ".json")
    layers = embedder.layers if options.get("layers") is None else \
        resolve_layers(options["layers"], embedder.encoder.cfg.depth)
    meta = {"checkpoint": str(Path(checkpoint).resolve()) if checkpoint else "", "sample_rate": embedder.sample_rate, "layers": layers,
            "layer_mode": options.get("layer_mode") or embedder.layer_mode,
            "normalization": embedder.normalization, "embedding_size": embedder.embedding_size}
    if meta_path.is_file() and not overwrite and json.loads(meta_path.read_text()) != json.loads(json.dumps(meta)):
        raise ValueError(f"{target} holds embeddings made with other settings ({meta_path}); "
                         "choose another output or pass overwrite")
    embedder._options(options.get("layers"), options.get("layer_mode"), None, options.get("precision"))
    files = find_audio(inputs)
    rows: dict[str, np.ndarray] = {}
    if table is not None and target.is_file() and not overwrite:
        rows = _read_table(target)
    summary = EmbedSummary()
    done = (lambda name: name in rows) if table is not None else \
        (lambda name: (target / f"{name}.npz").is_file())
    todo = [(p, n) for p, n in files if overwrite or not done(n)]
    summary.skipped = len(files) - len(todo)
    atomic_write_text(meta_path, json.dumps(meta, indent=1))
    bar = tqdm(total=len(todo), unit="file", disable=not progress, desc="embed")
    last_save = time.monotonic()
    try:
        for batch in _batches(todo, embedder.sample_rate, batch_seconds, workers, summary):
            lengths = {name: len(wave) for name, wave in batch}
            for name, frames, stamps, clip in _embed_batch(embedder, batch, summary, **options):
                if table is None:
                    atomic_write_bytes(target / f"{name}.npz", _npz_bytes(
                        frames=frames.cpu().numpy(), timestamps=stamps.cpu().numpy(), clip=clip.cpu().numpy()))
                else:
                    rows[name] = clip.cpu().numpy()
                summary.embedded += 1
                summary.seconds_of_audio += lengths[name] / embedder.sample_rate
            bar.update(summary.embedded + len(summary.failed) - bar.n)
            if table is not None and time.monotonic() - last_save > save_every:
                _write_table(target, rows)
                last_save = time.monotonic()
    finally:  # also on KeyboardInterrupt: keep what is done
        bar.close()
        if table is not None and rows:
            _write_table(target, rows)
        errors = target.parent / f"{target.name}.errors.tsv" if table is not None else target / "errors.tsv"
        if summary.failed:
            atomic_write_text(errors, "".join(f"{n}\t{' '.join(e.split())}\n" for n, e in summary.failed))
        else:
            errors.unlink(missing_ok=True)  # a report from an earlier run would be stale
    return summary


def _read_table(path: Path) -> dict[str, np.ndarray]:
    if path.suffix == ".npz":
        with np.load(path) as data:
            return dict(zip(data["paths"].tolist(), data["clip"]))
    with open(path, newline="") as f:
        return {row[0]: np.array(row[1:], dtype=np.float32) for row in list(csv.reader(f))[1:]}


def _write_table(path: Path, rows: dict[str, np.ndarray]) -> None:
    names = sorted(rows)
    clip = np.stack([rows[n] for n in names]).astype(np.float32)
    if path.suffix == ".npz":
        return atomic_write_bytes(path, _npz_bytes(paths=np.array(names), clip=clip))
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["path"] + [f"e{i}" for i in range(clip.shape[1])])
    writer.writerows([n] + [f"{v:.9g}" for v in row] for n, row in zip(names, clip))
    atomic_write_text(path, text.getvalue())
