"""What a preparation has to do: the source files against the corpus already prepared from them.

At AudioSet scale the plan is what grows with the corpus (the frames stream through shard by
shard), so it holds each path once, as the str of the file list, and everything else in numpy
arrays aligned with it: about 220 bytes per file with paths of 100 characters, where dicts of
(size, mtime) tuples keyed by path, for the files found and again for those prepared, and the
Path objects of the listing took about 650 (benchmarks/README.md); the paths' str are 150 of
the 220. A corpus's sources tables are read one at a time and matched against the file list by
the paths' hashes, never held whole.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import compress
from pathlib import Path

import numpy as np

from ..files import read_tsv
from .corpus import SHARDS
from .shards import DROPPED
from .sources import file_stat

_hash = hash  # paths are matched by hash first (tests make them collide)


@dataclass
class Plan:
    """The files of a preparation and what becomes of each."""
    files: list[str]        # the source files, in the order they are prepared
    sizes: np.ndarray       # (N,) int64, each file's size now (-1: could not stat)
    mtimes: np.ndarray      # (N,) int64, its modification time in ns now
    todo: np.ndarray        # (M,) int64, the files to prepare (new or changed), ascending
    changed: list[str]      # prepared files whose size or time differs now, in the corpus's order
    added: list[str]        # files no committed shard holds, in file order
    removed: list[str]      # prepared files the source no longer has, in the corpus's order
    prepared: int           # distinct files the committed shards hold

    def stat(self, i: int) -> tuple[int, int]:
        return int(self.sizes[i]), int(self.mtimes[i])


def plan(files: list[str], out: Path, manifest: dict | None) -> Plan:
    """Stat `files` (no repeats) and compare them with the live (not dropped) rows of the sources
    tables of `manifest`'s committed shards; a path listed twice there counts with its last row."""
    n = len(files)
    sizes, mtimes = np.empty(n, np.int64), np.empty(n, np.int64)
    for i, path in enumerate(files):
        sizes[i], mtimes[i] = file_stat(path)
    # first[i]: the position of file i's first live row in the corpus (-1: none); differs[i]: whether
    # its last row's size and time are not what the file has now.
    first, differs = np.full(n, -1, np.int64), np.zeros(n, bool)
    removed: dict[str, None] = {}  # ordered and without repeats, as a dict keyed by path was
    if manifest and manifest["shards"]:
        hashes = np.fromiter(map(_hash, files), np.int64, n)
        order = np.argsort(hashes, kind="stable").astype(np.int32 if n < 2**31 else np.int64)
        hashes = hashes[order]
        row = 0
        for entry in manifest["shards"]:
            rows = [r for r in read_tsv(out / SHARDS / f"{entry['name']}.src") if r[3] != DROPPED]
            found = _find(rows, files, hashes, order)
            removed.update((r[0], None) for r, i in zip(rows, found.tolist()) if i < 0)
            mine = found >= 0
            at = found[mine]
            size = np.fromiter((int(r[1]) for r, m in zip(rows, mine.tolist()) if m), np.int64, len(at))
            mtime = np.fromiter((int(r[2]) for r, m in zip(rows, mine.tolist()) if m), np.int64, len(at))
            files_at, k = np.unique(at, return_index=True)  # each file's first row in this table
            new = first[files_at] < 0
            first[files_at[new]] = row + k[new]
            files_at, k = np.unique(at[::-1], return_index=True)  # and its last row
            last = len(at) - 1 - k
            differs[files_at] = (size[last] != sizes[files_at]) | (mtime[last] != mtimes[files_at])
            row += len(at)
        del hashes, order
    live = first >= 0
    changed = np.flatnonzero(differs)
    changed = changed[np.argsort(first[changed], kind="stable")]
    todo = np.flatnonzero(differs | ~live)
    return Plan(files, sizes, mtimes, todo, changed=[files[i] for i in changed.tolist()],
                added=list(compress(files, ~live)), removed=list(removed),
                prepared=int(live.sum()) + len(removed))


def _find(rows: list[list[str]], files: list[str], hashes: np.ndarray, order: np.ndarray) -> np.ndarray:
    """-> the index in `files` of each row's path, -1 where absent. `hashes` are the files' hashes
    sorted, `order` the files they belong to; equal hashes are told apart by comparing the paths."""
    if not len(hashes) or not rows:
        return np.full(len(rows), -1, np.int64)
    want = np.fromiter((_hash(r[0]) for r in rows), np.int64, len(rows))
    at = np.minimum(np.searchsorted(hashes, want), len(hashes) - 1)
    found = []
    for j, i, hit, path in zip(at.tolist(), order[at].tolist(), (hashes[at] == want).tolist(), (r[0] for r in rows)):
        if hit and files[i] != path:  # a hash collision: look through the other files of that hash
            i = -1
            while j + 1 < len(hashes) and hashes[j + 1] == hashes[j] and i < 0:
                j += 1
                i = int(order[j]) if files[order[j]] == path else -1
        found.append(i if hit else -1)
    return np.array(found, np.int64)
