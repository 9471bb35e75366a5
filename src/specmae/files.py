"""Writing outputs safely: atomic files and PNG figures.

Every file specmae writes (checkpoints, pointers, logs rewritten on resume, embeddings,
reports, figures) goes through here: it is written under a temporary name in the same folder,
fsynced and renamed, so a reader or a crash sees either the old file or the whole new one.
"""

from __future__ import annotations

import io
import os
import tempfile
import threading
from pathlib import Path


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
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def save_png(fig, path: str | os.PathLike, tight: bool = True) -> Path:
    """Write a matplotlib figure as PNG (atomically) and close it."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight" if tight else None)
    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())
