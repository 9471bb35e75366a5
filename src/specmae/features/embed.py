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

The job itself is features/jobs.py's, shared with `specmae predict`: files decoded by a pool of
threads and embedded in batches of about `batch_seconds` of audio across files; a file that
cannot be decoded, is empty or holds NaN is reported (log, and `errors.tsv` beside the outputs,
tabs and newlines in names escaped: `read_errors`) and skipped. The output is claimed, refused
or moved aside as every command's is (outputs.claim).
"""

from __future__ import annotations

import csv
import io
import json
import zipfile
from pathlib import Path

import numpy as np

from ..files import OutputError, atomic_write_bytes, atomic_write_text, check_output
from ..outputs import claim, read_errors  # noqa: F401 - read_errors reads embed's errors.tsv back
from .chunking import resolve_layers
from .embedder import Embedder
from .jobs import JobSummary, checkpoint_identity, find_inputs, run_files

META = "specmae-embed.json"
EmbedSummary = JobSummary


def _npz_bytes(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


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


def embed_files(embedder: Embedder, inputs: list[str | Path], out: str | Path | None = None,
                table: str | Path | None = None, *, checkpoint: str = "", batch_seconds: float = 160.0,
                workers: int = 4, overwrite: bool = False, progress: bool = True, save_every: float = 60.0,
                files: list[tuple[Path, str]] | None = None, **options) -> EmbedSummary:
    """Embed every audio file of `inputs` into `out` (one .npz per file) or `table` (.npz or .csv).

    options go to Embedder.embed (layers, layer_mode, precision); `files` is `find_inputs(inputs)`
    when the caller has it. An output made with the same checkpoint (by content) and options is
    resumed; one made otherwise, or not by this function, is refused before any work, or with
    `overwrite` moved aside (never deleted) and everything embedded again. Returns what was done.
    """
    target, meta_path = check_target(out, table)
    layers = embedder.layers if options.get("layers") is None else \
        resolve_layers(options["layers"], embedder.encoder.cfg.depth)
    embedder.check_options(options.get("layers"), options.get("layer_mode"), None, options.get("precision"))
    files = find_inputs(inputs) if files is None else files
    meta = {"checkpoint": checkpoint_identity(embedder, checkpoint), "sample_rate": embedder.sample_rate,
            "layers": layers, "layer_mode": options.get("layer_mode") or embedder.layer_mode,
            "normalization": embedder.normalization, "precision": options.get("precision") or embedder.precision,
            "embedding_size": embedder.embedding_size}
    meta = json.loads(json.dumps(meta))
    is_table = table is not None
    errors = target.parent / f"{target.name}.errors.tsv" if is_table else target / "errors.tsv"
    claim(target, "file" if is_table else "folder", "specmae embed", overwrite=overwrite,
          settings=(meta_path, meta, "embeddings"), also=(meta_path, errors) if is_table else ()).take()
    rows: dict[str, np.ndarray] = _read_table(target) if is_table and target.is_file() else {}

    def embed(names, waves):
        out = embedder.embed(waves, embedder.sample_rate, names=names, **options)
        return zip(out.frames, out.timestamps, out.clip)

    def keep(name, result):
        frames, stamps, clip = result
        if is_table:
            rows[name] = clip.cpu().numpy()
        else:
            atomic_write_bytes(target / f"{name}.npz", _npz_bytes(
                frames=frames.cpu().numpy(), timestamps=stamps.cpu().numpy(), clip=clip.cpu().numpy()))

    return run_files(files, rows.__contains__ if is_table else lambda name: (target / f"{name}.npz").is_file(),
                     embed, keep, sample_rate=embedder.sample_rate, settings=(meta_path, meta), errors=errors,
                     save=(lambda: rows and _write_table(target, rows)) if is_table else None,
                     batch_seconds=batch_seconds, workers=workers, progress=progress, save_every=save_every,
                     desc="embed")


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
