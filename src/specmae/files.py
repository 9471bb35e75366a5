"""Writing outputs safely: atomic files, PNG figures, and never destroying what a user has.

Every file specmae writes (checkpoints, pointers, logs rewritten on resume, embeddings,
reports, figures) goes through here: it is written under a temporary name in the same folder,
fsynced and renamed, so a reader or a crash sees either the old file or the whole new one.

How a command claims its output, refuses an existing one (an `OutputError`, before any work) and
moves it aside on `--overwrite` (`move_aside`, never deleting) is outputs.py's, built on these.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import tempfile
import threading
import time
from pathlib import Path


class OutputError(ValueError):
    """An output path that would overwrite or destroy what is there; the message says how to proceed."""


def fsync_dir(path: str | os.PathLike) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def umask_mode(mode: int = 0o666) -> int:
    """`mode` as the process's umask lets a newly created file (0o666) or folder (0o777) have it.

    Temporary files and folders are created private (0o600 / 0o700); outputs are chmodded to
    this before they are renamed into place, so they are shared like any file the user creates.
    """
    with _UMASK_LOCK:  # reading the umask means setting it
        mask = os.umask(0o022)
        os.umask(mask)
    return mode & ~mask


_UMASK_LOCK = threading.Lock()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` so that readers see the old file or the whole new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, umask_mode())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError) and e.filename is None:  # "No space left on device" says where
            e.filename = str(path)
        raise
    fsync_dir(path.parent)
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike, replace: bool = False):
    """Build a folder under a temporary name beside `path` (yielded), then rename it into place, so
    that readers and a crash see what was there or the whole new folder (checkpoints, `push`).

    Its files are made shareable (umask) and fsynced first. An existing `path` is replaced when
    `replace` (a checkpoint written again); otherwise only an empty folder may be there, and
    anything else makes the rename fail: nothing is written over. On any error the temporary
    folder is removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        tmp.chmod(umask_mode(0o777))  # mkdtemp makes it private; an output is shared like any other
        yield tmp
        for f in tmp.iterdir():
            f.chmod(umask_mode())
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        fsync_dir(tmp)
        if replace and path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            if is_empty_folder(path):
                shutil.rmtree(path)
            os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# Tables of file names (errors.tsv, a prepared corpus's sources tables): one row per line, fields
# separated by tabs, with backslash, tab, newline and carriage return written as \\, \t, \n and \r,
# so that any file name survives.
_TSV_UNESCAPES = {"\\": "\\", "t": "\t", "n": "\n", "r": "\r"}
_TSV_ESCAPED = re.compile(r"\\(.)")


def tsv_line(fields) -> str:
    """One row of a TSV table, its fields escaped, ending in a newline."""
    return "\t".join(_tsv_escape(str(f)) for f in fields) + "\n"


def _tsv_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


def write_tsv(path: str | os.PathLike, rows) -> Path:
    """Write a TSV table of rows (sequences of fields) atomically."""
    return atomic_write_text(path, "".join(map(tsv_line, rows)))


def read_tsv(path: str | os.PathLike) -> list[list[str]]:
    """A TSV table written by write_tsv / tsv_line -> its rows of unescaped fields."""
    def field(text: str) -> str:
        return _TSV_ESCAPED.sub(lambda m: _TSV_UNESCAPES.get(m.group(1), m.group(0)), text) if "\\" in text else text
    return [[field(f) for f in line.split("\t")] for line in Path(path).read_text(encoding="utf-8").splitlines()]


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """A JSON-lines file (a run's log.jsonl) -> its records, the JSON objects of its lines; a line
    that is not one (cut short by a killed process) is left out."""
    records = []
    for line in Path(path).read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend (no display needed); an ImportError naming
    the extra that installs it."""
    try:
        import matplotlib
    except ImportError as e:
        raise ImportError("plots need matplotlib: pip install 'specmae[plots]'") from e
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def save_png(fig, path: str | os.PathLike, tight: bool = True) -> Path:
    """Write a matplotlib figure as PNG (atomically) and close it."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight" if tight else None)
    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())


def move_aside(path: str | os.PathLike) -> Path:
    """Rename `path` (a file or a folder) to `<name>.old-<YYYYmmdd-HHMMSS>` beside it -> the new path.

    Nothing is deleted: `--overwrite` keeps the old output under that name. A name already
    taken gets a counter (`.old-20250101-120000-2`).
    """
    path = Path(path).absolute()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    n = 1
    while True:
        target = path.with_name(f"{path.name}.old-{stamp}" + (f"-{n}" if n > 1 else ""))
        if not os.path.lexists(target):
            break
        n += 1
    os.rename(path, target)
    fsync_dir(path.parent)
    return target


def is_empty_folder(path: str | os.PathLike) -> bool:
    """A folder holding no files at all (empty sub-folders only): nothing there to lose."""
    return Path(path).is_dir() and not any(not p.is_dir() or p.is_symlink() for p in Path(path).rglob("*"))


def check_output(path: str | os.PathLike, kind: str, what: str = "output") -> Path:
    """Refuse, before any work, an output `path` of the wrong kind ("file", "folder" or "any").

    A folder named where a file is expected (or the reverse), or a parent that is a file, is an
    OutputError naming the path. Whether an existing output may be reused is the caller's rule.
    """
    path = Path(path)
    if kind == "folder" and path.exists() and not path.is_dir():
        raise OutputError(f"{path}: is a file, expected a folder for the {what}")
    if kind == "file" and path.is_dir():
        raise OutputError(f"{path}: is a folder, expected a file name for the {what}")
    for parent in path.absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise OutputError(f"{path}: {parent} is a file, not a folder")
            break
    return path
