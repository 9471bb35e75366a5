"""The audio files a corpus is prepared from: a folder (recursive), one file, or a list file.

A list file names a subset without copying audio: `.txt`, one path per line (blank lines and
lines starting with # ignored), or `.csv` with a `path` column (else the first column, every
row a path). Relative paths are relative to the list file's folder. Files are always taken in
sorted order, so the shards a preparation writes depend on the files alone.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

from ..audio import find_audio_paths

LIST_SUFFIXES = (".txt", ".csv")


def list_sources(source: str | os.PathLike) -> tuple[list[str], list[tuple[str, str]]]:
    """-> (existing files, sorted and without repeats; [(path, reason)] for listed files that are missing).
    Paths are str, not Path: a Path costs three times the memory, which counts with 2 million files."""
    source = Path(source)
    if not (source.is_file() and source.suffix.lower() in LIST_SUFFIXES):
        return find_audio_paths(source), []
    files, missing = [], []
    for name in sorted(set(read_list_file(source))):
        path = Path(name) if Path(name).is_absolute() else source.parent / name
        if path.is_file():
            files.append(str(path))
        else:
            what = "a folder" if path.is_dir() else "not found"
            missing.append((str(path), f"{path}: listed in {source} but {what}"))
    return files, missing


def read_list_file(path: Path) -> list[str]:
    """The paths a .txt or .csv list file names, as written there."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: unreadable list of audio files ({e})") from e
    if path.suffix.lower() == ".txt":
        return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    rows = [row for row in csv.reader(io.StringIO(text, newline="")) if row and any(cell.strip() for cell in row)]
    header = [cell.strip().lower() for cell in rows[0]] if rows else []
    column = header.index("path") if "path" in header else 0
    body = rows[1:] if "path" in header else rows
    return [row[column].strip() for row in body if len(row) > column and row[column].strip()]


def file_stat(path: str | os.PathLike) -> tuple[int, int]:
    """(size, mtime_ns): what tells a changed file from the one a corpus was prepared from."""
    try:
        st = os.stat(path)
    except OSError:
        return -1, -1
    return st.st_size, st.st_mtime_ns
