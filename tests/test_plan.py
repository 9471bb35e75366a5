"""The preparation plan (training/plan.py): the source files against a corpus's sources tables,
checked against the dicts keyed by path that it replaces, also when every path's hash collides."""

import os

import numpy as np
import pytest

from specmae.files import write_tsv
from specmae.training import plan as plan_module
from specmae.training.corpus import SHARDS
from specmae.training.plan import plan
from specmae.training.shards import DROPPED
from specmae.training.sources import file_stat


def reference(files, tables):
    """What prepare_corpus computed before plan.py, with dicts of (size, mtime) tuples."""
    now = {p: file_stat(p) for p in files}
    live = {}
    for rows in tables:
        for path, size, mtime, status in rows:
            if status != DROPPED:
                live[path] = (int(size), int(mtime))
    changed = [p for p, stat in live.items() if p in now and now[p] != stat]
    added = [p for p in now if p not in live]
    removed = [p for p in live if p not in now]
    redo = set(changed) | set(added)
    return dict(changed=changed, added=added, removed=removed, todo=[p for p in files if p in redo],
                prepared=len(live))


@pytest.fixture
def corpus(tmp_path):
    files = []
    for i in range(12):
        path = tmp_path / "src" / f"d{i % 3}" / f"f{i:02d}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x" * i)
        files.append(str(path))
    files.sort()
    row = {p: [p, *map(str, file_stat(p)), "ok"] for p in files}
    gone = str(tmp_path / "src" / "gone.wav")
    tables = [
        [row[files[0]], [files[1], "99", "1", "ok"], row[files[2]], [gone, "1", "2", "ok"],
         [files[3], "5", "5", DROPPED], [files[4], "7", "7", "ok"], row[files[5]], [*row[files[6]][:3], "bad header"]],
        [[files[4], *row[files[4]][1:]], row[files[3]], [files[2], "3", "3", "ok"], [gone, "1", "2", "ok"],
         row[files[7]]],
    ]
    out = tmp_path / "corpus"
    (out / SHARDS).mkdir(parents=True)
    for s, rows in enumerate(tables):
        write_tsv(out / SHARDS / f"{s:05d}.src", rows)
    manifest = dict(shards=[dict(name=f"{s:05d}") for s in range(len(tables))])
    return files, out, manifest, tables


@pytest.mark.parametrize("collide", [None, lambda p: 7, lambda p: len(p) % 3])
def test_the_plan_is_what_the_dicts_of_paths_gave(corpus, monkeypatch, collide):
    files, out, manifest, tables = corpus
    if collide:
        monkeypatch.setattr(plan_module, "_hash", collide)
    work = plan(files, out, manifest)
    want = reference(files, tables)
    assert [files[i] for i in work.todo] == want["todo"]
    assert (work.changed, work.added, work.removed, work.prepared) == (
        want["changed"], want["added"], want["removed"], want["prepared"])
    # The cases the tables hold: a file changed (its last row wins), one back after a dropped row,
    # one skipped, one gone, files never prepared.
    name = [os.path.basename(p) for p in files]
    assert [os.path.basename(p) for p in work.changed] == [name[1], name[2]]
    assert [os.path.basename(p) for p in work.removed] == ["gone.wav"]
    assert [os.path.basename(p) for p in work.added] == name[8:]
    assert work.stat(int(work.todo[0])) == file_stat(files[1])


def test_a_first_run_stats_every_file_and_prepares_them_all(corpus):
    files, out, _, _ = corpus
    os.unlink(files[3])  # vanished since it was listed: stat -1, prepared (and reported) all the same
    work = plan(files, out, None)
    assert list(work.todo) == list(range(len(files))) and work.added == files
    assert work.changed == work.removed == [] and work.prepared == 0
    assert work.stat(3) == (-1, -1) and work.stat(5) == file_stat(files[5])
    assert work.sizes.dtype == np.int64 and work.sizes[11] == 11
