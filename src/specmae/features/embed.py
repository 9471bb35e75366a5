"""`specmae embed`: embed every audio file under some paths, resumably (docs/architecture.md).

    specmae embed CKPT audio/ extra.wav --out emb/      one <out>/<relative path>.npz per file
    specmae embed CKPT audio/ --table clips.npz         one table: paths and clip embeddings

Per-file outputs hold `frames` (N, D) float32, `timestamps` (N,) float64 (span centres, ms) and
`clip` (D,) float32. A table (.npz with `paths` and `clip`, or .csv with one row per file) holds
clip embeddings only. Every file is written under a temporary name and renamed, so an interrupted
run leaves only complete outputs, and a re-run skips the files already done; a table is saved
every `save_every` seconds and on interruption. `<out>/specmae-embed.json` (`<table>.json`)
records the checkpoint it resolved to, by content (its folder, the SHA-256 of its config.json and
weights), and the options: a re-run with another checkpoint or options is refused instead of
mixing the two, as is an output folder that specmae embed did not make; `overwrite` moves the
old output aside (never deletes it) and embeds everything again.

Files are decoded by a pool of threads and embedded in batches of about `batch_seconds` of audio
across files. A file that cannot be decoded, is empty or holds NaN is reported (log, and
`errors.tsv` beside the outputs, tabs and newlines in names escaped: `read_errors`) and skipped.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
import time
import zipfile
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..audio import AUDIO_EXTENSIONS, AudioError, find_audio_files, load_audio
from ..checkpoint import identity
from ..files import (OutputError, atomic_write_bytes, atomic_write_text, check_output, is_empty_folder, move_aside,
                     read_tsv, write_tsv)
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
    several inputs are given), or the file name for a file given directly. No file at all is an error.
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
    if not found:
        raise ValueError(f"{', '.join(map(str, inputs))}: no audio files found (searched recursively for "
                         f"{', '.join(AUDIO_EXTENSIONS)})")
    return sorted(((p, n) for n, p in found.items()), key=lambda pair: pair[1])


def _npz_bytes(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def batches(todo: list[tuple[Path, str]], sample_rate: int, batch_seconds: float, workers: int,
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


def _embed_batch(embedder: Embedder, batch: list[tuple[str, np.ndarray]], summary: EmbedSummary, **options):
    """-> [(name, frames, timestamps, clip)] of the clips that embed."""
    def embed(names, waves):
        out = embedder.embed(waves, embedder.sample_rate, names=names, **options)
        return zip(out.frames, out.timestamps, out.clip)
    return [(n, *r) for n, r in run_batch(embed, batch, summary.failed)]


def check_target(out: str | Path | None = None, table: str | Path | None = None) -> tuple[Path, Path]:
    """-> (output folder or table file, its specmae-embed.json); an OutputError before any work for a
    path of the wrong kind (--out naming a file, --table naming a folder or another suffix)."""
    if (out is None) == (table is None):
        raise ValueError("give exactly one of out (a folder, one file per input) or table (one file)")
    if out is not None:
        target = check_output(out, "folder", "embeddings (--out; for one table of clip embeddings use --table)")
        return target, target / META
    target = check_output(table, "file", "table of clip embeddings (--table)")
    if target.suffix not in (".npz", ".csv"):
        raise OutputError(f"{target}: expected a .npz or .csv name for the table of clip embeddings")
    return target, target.with_name(target.name + ".json")


def checkpoint_identity(embedder: Embedder, checkpoint: str | Path = "") -> dict:
    """The checkpoint an embedder was loaded from, by content (checkpoint.identity): a run folder's
    `latest` moves on as the run trains, so its path alone does not tell which model made an output."""
    ck = embedder.checkpoint
    if ck is None:
        return {"path": str(Path(checkpoint).resolve())} if checkpoint else {}
    if Path(ck.path).is_file():  # official weights converted in memory
        config = json.dumps(ck.to_json(), sort_keys=True).encode()
        return {"path": str(Path(ck.path).resolve()), "config_sha256": hashlib.sha256(config).hexdigest(),
                "weights_sha256": ck.imported["sha256"], "step": ck.step}
    return dict(identity(ck.path), step=ck.step)


def embed_files(embedder: Embedder, inputs: list[str | Path], out: str | Path | None = None,
                table: str | Path | None = None, *, checkpoint: str = "", batch_seconds: float = 160.0,
                workers: int = 4, overwrite: bool = False, progress: bool = True, save_every: float = 60.0,
                files: list[tuple[Path, str]] | None = None, **options) -> EmbedSummary:
    """Embed every audio file of `inputs` into `out` (one .npz per file) or `table` (.npz or .csv).

    options go to Embedder.embed (layers, layer_mode, precision); `files` is `find_audio(inputs)`
    when the caller has it. An output made with the same checkpoint (by content) and options is
    resumed; one made otherwise, or not by this function, is refused before any work, or with
    `overwrite` moved aside (never deleted) and everything embedded again. Returns what was done.
    """
    target, meta_path = check_target(out, table)
    layers = embedder.layers if options.get("layers") is None else \
        resolve_layers(options["layers"], embedder.encoder.cfg.depth)
    embedder._options(options.get("layers"), options.get("layer_mode"), None, options.get("precision"))
    files = find_audio(inputs) if files is None else files
    meta = {"checkpoint": checkpoint_identity(embedder, checkpoint), "sample_rate": embedder.sample_rate,
            "layers": layers, "layer_mode": options.get("layer_mode") or embedder.layer_mode,
            "normalization": embedder.normalization, "precision": options.get("precision") or embedder.precision,
            "embedding_size": embedder.embedding_size}
    meta = json.loads(json.dumps(meta))
    _claim(target, meta_path, meta, table is not None, overwrite)
    rows: dict[str, np.ndarray] = _read_table(target) if table is not None and target.is_file() else {}
    summary = EmbedSummary()
    done = (lambda name: name in rows) if table is not None else \
        (lambda name: (target / f"{name}.npz").is_file())
    todo = [(p, n) for p, n in files if not done(n)]
    summary.skipped = len(files) - len(todo)
    atomic_write_text(meta_path, json.dumps(meta, indent=1))
    bar = tqdm(total=len(todo), unit="file", disable=not progress, desc="embed")
    last_save = time.monotonic()
    try:
        for batch in batches(todo, embedder.sample_rate, batch_seconds, workers, summary):
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
        errors = _errors_path(target, table is not None)
        if summary.failed:
            write_tsv(errors, summary.failed)
        else:
            errors.unlink(missing_ok=True)  # a report from an earlier run would be stale
    return summary


def _claim(target: Path, meta_path: Path, meta: dict, is_table: bool, overwrite: bool) -> None:
    """Resume an output made with `meta`; refuse any other existing output, or move it aside on `overwrite`."""
    if is_table:
        if not os.path.lexists(target):
            return  # a table's .json or errors without the table hold no embeddings
        existing = [p for p in (target, meta_path, _errors_path(target, True)) if os.path.lexists(p)]
    else:
        if not os.path.lexists(target) or is_empty_folder(target):
            return
        existing = [target]
    old = None
    if meta_path.is_file():
        try:
            old = json.loads(meta_path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            pass
    if old is not None and _by_content(old) == _by_content(meta) and not overwrite:
        return
    if overwrite:
        for path in existing:
            log.warning("moved the existing %s aside to %s (--overwrite)", path, move_aside(path))
        return
    what = "embeddings" if is_table or old is not None else "files"
    if old is None:
        why = f"not made by specmae embed (no readable {meta_path.name})"
    else:
        why = "made with other settings: " + "; ".join(_differences(old, meta))
    raise OutputError(f"{target}: already holds {what} {why}. Choose another output, or pass --overwrite to move "
                      "it aside and embed everything again (nothing is deleted)")


def _by_content(meta: dict) -> dict:
    """`meta` as compared between runs: a checkpoint identified by its hashes is the same model
    wherever it lies (copied, moved), so its path is left out."""
    checkpoint = meta.get("checkpoint")
    if isinstance(checkpoint, dict) and "weights_sha256" in checkpoint:
        meta = dict(meta, checkpoint={k: v for k, v in checkpoint.items() if k != "path"})
    return meta


def _differences(old: dict, new: dict) -> list[str]:
    def show(key, value):
        if key == "checkpoint" and isinstance(value, dict):
            return f"{value.get('path')} (step {value.get('step')})"
        return repr(value)

    found = []
    for key in sorted(set(old) | set(new)):
        if _by_content(old).get(key) != _by_content(new).get(key):
            then, now = show(key, old.get(key)), show(key, new.get(key))
            found.append(f"{key} {then} then, {now}{' with other contents' if then == now else ''} now")
    return found


def _errors_path(target: Path, is_table: bool) -> Path:
    return target.parent / f"{target.name}.errors.tsv" if is_table else target / "errors.tsv"


def read_errors(path: str | Path) -> list[tuple[str, str]]:
    """An errors.tsv written by embed_files (one `name<TAB>reason` line per file, escaped as
    files.tsv_line does) -> [(file name, reason)]."""
    return [tuple(row) for row in read_tsv(path)]


def _read_table(path: Path) -> dict[str, np.ndarray]:
    try:
        if path.suffix == ".npz":
            with np.load(path) as data:
                return dict(zip(data["paths"].tolist(), data["clip"]))
        with open(path, newline="") as f:
            return {row[0]: np.array(row[1:], dtype=np.float32) for row in list(csv.reader(f))[1:]}
    except (OSError, ValueError, KeyError, IndexError, zipfile.BadZipFile, csv.Error) as e:
        raise OutputError(f"{path}: unreadable table of clip embeddings ({' '.join(str(e).split())[:200]}); "
                          "pass --overwrite to move it aside and embed everything again") from e


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
