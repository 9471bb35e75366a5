"""Writing the shards and manifest of a prepared corpus, and reading its state to continue it.

Used by prepare.py; the format is in corpus.py and docs/data.md. Every file is written
atomically (temporary name, fsync, rename); a shard becomes part of the corpus when the
manifest that lists it is written, so whatever shards/ holds beyond the manifest is what an
interrupted run left (`discard_uncommitted`).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np

from ..audio import FrontendConfig
from ..files import atomic_write_bytes, atomic_write_text, fsync_dir, read_tsv, write_tsv
from .corpus import INDEX, LEGACY_KEYS, MANIFEST, SHARDS, read_manifest

log = logging.getLogger(__name__)

OK, DROPPED = "ok", "dropped"  # a source row's status; any other status is the reason it was skipped
LEGACY_LEFTOVERS = ("lms.f16", "lms.f16.tmp")  # an interrupted preparation of the older format


class ShardWriter:
    """Appends clips to the next shard in file order and commits it once it holds `shard_bytes`."""

    def __init__(self, out: Path, manifest: dict, errors: list[tuple[str, str]], missing: list[tuple[str, str]]):
        self.out, self.manifest, self.errors, self.missing = out, manifest, errors, missing
        self.bytes_per_frame = manifest["frontend"]["n_mels"] * 2
        self.number = 1 + max((int(e["name"]) for e in manifest["shards"]), default=-1)
        self._open()

    def _open(self) -> None:
        self.name = f"{self.number:05d}"
        self.path = self.out / SHARDS / self.name
        self.file = open(f"{self.path}.f16.tmp", "wb")
        self.index: list[tuple[int, int, int]] = []  # (source row, offset, length)
        self.rows: list[list[str]] = []              # path, size, mtime_ns, status
        self.frames = 0

    def add(self, path: str, stat: tuple[int, int], lms: np.ndarray | None, error: str | None) -> None:
        """One source file, in order: its log-mel (T, F) float16, or why it was skipped."""
        if lms is not None:
            write_frames(self.file, lms)
            self.index.append((len(self.rows), self.frames, len(lms)))
            self.frames += len(lms)
        self.rows.append([path, str(stat[0]), str(stat[1]), OK if lms is not None else error])
        if self.frames * self.bytes_per_frame >= self.manifest["shard_bytes"]:
            self.commit()
            self.number += 1
            self._open()

    def commit(self) -> None:
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        os.replace(f"{self.path}.f16.tmp", f"{self.path}.f16")
        atomic_write_bytes(f"{self.path}.idx", np.array(self.index, INDEX).tobytes())
        write_tsv(f"{self.path}.src", self.rows)
        fsync_dir(self.out / SHARDS)
        self.errors += [(row[0], row[3]) for row in self.rows if row[3] != OK]
        write_errors(self.out, self.all_errors())
        entry = dict(name=self.name, clips=len(self.index), frames=self.frames, sources=len(self.rows))
        # The commit: from here on the shard is part of the corpus (a failed write leaves the old manifest).
        write_manifest(self.out, {**self.manifest, "shards": [*self.manifest["shards"], entry]})
        self.manifest["shards"].append(entry)
        log.info("committed shard %s: %d clips, %d frames", self.name, len(self.index), self.frames)

    def finish(self) -> None:
        """Commit the last, partly filled shard; a shard of nothing is not written."""
        if self.rows:
            self.commit()
        else:
            self.discard()

    def discard(self) -> None:
        """Remove the shard being written, if it was not committed."""
        try:
            self.file.close()
        except OSError:  # flushing what is being thrown away onto a full disk
            pass
        if all(e["name"] != self.name for e in self.manifest["shards"]):
            for suffix in (".f16.tmp", ".f16", ".idx", ".src"):
                Path(f"{self.path}{suffix}").unlink(missing_ok=True)

    def all_errors(self) -> list[tuple[str, str]]:
        return self.errors + self.missing


def write_frames(file, lms: np.ndarray) -> None:
    """Append (T, F) float16 frames to the shard being written (the one write a full disk fails)."""
    file.write(lms.tobytes())


def existing_manifest(out: Path, frontend: FrontendConfig, rebuild: bool) -> dict | None:
    """The manifest of the corpus in `out` to continue; None to start afresh (absent, empty, the
    leftovers of an older interrupted preparation, or cleared by `rebuild`). ValueError when `out`
    holds anything else, or a corpus of another front-end or format without `rebuild`."""
    if not out.exists():
        return None
    if not out.is_dir():
        raise ValueError(f"{out}: is a file; a prepared corpus is a folder")
    if (out / MANIFEST).exists():
        if rebuild:
            read_manifest(out, any_version=True)  # ours, of whatever version: it may go
            log.warning("preparing %s again from scratch (--rebuild)", out)
            clear(out)
            return None
        manifest = read_manifest(out)
        before, now = manifest["frontend"], frontend.to_dict()
        fields = sorted(k for k in before.keys() | now.keys() if k != "stats" and before.get(k) != now.get(k))
        if fields:
            raise ValueError(f"{out}: holds a corpus prepared with another front-end (front-end "
                             + ", ".join(f"{k} {before.get(k)!r} -> {now.get(k)!r}" for k in fields)
                             + "); it is left as it is: pass --rebuild to prepare it again, or prepare into "
                               "another folder")
        return manifest  # other statistics (global / per-bin) at most: measured again at the end
    if (out / "index.json").exists():
        _check_legacy(out)
        if not rebuild:
            raise ValueError(f"{out}: holds a corpus of specmae's older single-file format (lms.f16 + index.json), "
                             "which still loads for training as it is; to prepare it in the sharded format "
                             "(resumable, incremental, quick to open) pass --rebuild, or prepare into another folder")
        (out / "index.json").unlink()
    leftovers = atomic_leftovers(out)  # a run killed while writing its first manifest
    others = sorted(p.name for p in out.iterdir() if p.name not in LEGACY_LEFTOVERS and p not in leftovers)
    if others:
        listed = ", ".join(others[:5]) + (f" and {len(others) - 5} more" if len(others) > 5 else "")
        raise ValueError(f"{out}: not empty and not a prepared corpus (holds {listed}); prepare into a new "
                         "or empty folder")
    for name in LEGACY_LEFTOVERS:
        (out / name).unlink(missing_ok=True)
    for p in leftovers:
        p.unlink()
    return None


def _check_legacy(out: Path) -> None:
    path = out / "index.json"
    try:
        index = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: unreadable ({e}); not touching {out}: prepare into another folder") from e
    if not isinstance(index, dict) or not LEGACY_KEYS <= index.keys():
        raise ValueError(f"{path}: not a specmae corpus index; not touching {out}: prepare into another folder")


def clear(out: Path) -> None:
    """Remove a corpus of ours from `out` (--rebuild): its shards first, the manifest last."""
    shards = out / SHARDS
    if shards.is_dir():
        for p in shards.iterdir():
            if p.name.split(".")[0].isdigit() or p.name.startswith("."):
                p.unlink()
        shards.rmdir()
    (out / "errors.tsv").unlink(missing_ok=True)
    for p in atomic_leftovers(out):
        p.unlink()
    (out / MANIFEST).unlink()


def atomic_leftovers(out: Path) -> list[Path]:
    """The temporary files of atomic writes of manifest.json and errors.tsv that a killed run left
    in `out` (files.atomic_write_bytes names them .<name>.<random>.tmp)."""
    return [p for name in (MANIFEST, "errors.tsv") for p in out.glob(f".{name}.*.tmp") if p.is_file()]


def discard_uncommitted(out: Path, manifest: dict) -> None:
    """Delete what an interrupted run left: files of shards the manifest does not list, and the
    temporary files of its atomic writes."""
    for p in atomic_leftovers(out):
        log.info("removing %s, left by an interrupted preparation", p)
        p.unlink()
    committed = {e["name"] for e in manifest["shards"]}
    for p in (out / SHARDS).iterdir():
        if p.is_file() and (p.name.startswith(".") or p.name.endswith(".tmp") or p.name.split(".")[0] not in committed):
            log.info("removing %s, left by an interrupted preparation", p)
            p.unlink()


def drop(out: Path, manifest: dict, gone: set[str]) -> list[tuple[str, str]]:
    """Mark the rows of `gone` files dropped in their shards' sources tables, then remove from every
    index the clips whose row is not 'ok' (which also completes a drop that was interrupted).
    -> (path, reason) of the skipped files that remain, in shard order."""
    errors = []
    for entry in manifest["shards"]:
        base = out / SHARDS / entry["name"]
        rows = read_tsv(f"{base}.src")
        marked = [row for row in rows if row[0] in gone and row[3] != DROPPED]
        for row in marked:
            row[3] = DROPPED
        if marked:
            write_tsv(f"{base}.src", rows)
        errors += [(row[0], row[3]) for row in rows if row[3] not in (OK, DROPPED)]
        index = np.fromfile(f"{base}.idx", INDEX)
        keep = np.array([row[3] == OK for row in rows], bool)[index["source"]] if len(index) else np.ones(0, bool)
        if not keep.all():
            atomic_write_bytes(f"{base}.idx", index[keep].tobytes())
        entry["clips"] = int(keep.sum())
    write_manifest(out, manifest)
    return errors


def write_errors(out: Path, errors: list[tuple[str, str]]) -> None:
    write_tsv(out / "errors.tsv", [("path", "reason"), *errors])


def write_manifest(out: Path, manifest: dict) -> None:
    atomic_write_text(out / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True) + "\n")
