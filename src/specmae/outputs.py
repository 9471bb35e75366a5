"""One way out: how every command that writes claims its output (docs/architecture.md#outputs-and-batch-jobs).

    claim(path, kind, made_by, ...)       before any work: a new output, the command's own output
                                          to continue, or an existing one refused with one wording
    Claim.take()                          before the first write: with --overwrite, what was there
                                          is moved aside (files.move_aside), never deleted
    differences(old, new)                 recorded settings field by field: 'field: X then, Y now'
    check_resume(run, where, old, new)    --resume with the settings the run was started with
    write_errors(path, failed)            errors.tsv of the inputs a job skipped (a stale one removed)

Every refusal reads the same way:

    <path>: already holds <what> (<why>). Choose another output, pass --overwrite to move it aside
    (nothing is deleted)[, or --resume to continue it]

An output is taken when it exists and is not an empty folder. A command's own output (a run,
a prepared corpus, an evaluation folder) is continued when the command resumes (always for
embed, predict, prepare and evaluate; with --resume for training); outputs that record their
settings (embed, predict) are continued only when those are the same, compared by content.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .files import OutputError, check_output, is_empty_folder, move_aside, read_tsv, write_tsv

__all__ = ["Claim", "OutputError", "check_resume", "claim", "differences", "read_errors", "read_settings",
           "refusal", "taken", "write_errors"]

log = logging.getLogger(__name__)


def refusal(path: str | os.PathLike, what: str, why: str, resume: bool = False) -> OutputError:
    """The one wording of an output a command will not write over."""
    return OutputError(f"{path}: already holds {what} ({why}). Choose another output, pass --overwrite to move it "
                       "aside (nothing is deleted)" + (", or --resume to continue it" if resume else ""))


def taken(path: str | os.PathLike) -> bool:
    """Whether `path` holds anything to lose: it exists and is not a folder of empty folders."""
    return os.path.lexists(path) and not is_empty_folder(path)


@dataclass
class Claim:
    """An output path checked before any work. `resumes`: it holds the command's own output, to be
    continued; `aside`: what `take()` moves aside (--overwrite)."""
    path: Path
    resumes: bool = False
    aside: list[Path] = field(default_factory=list)

    def take(self) -> None:
        """Move aside what --overwrite replaces; call it just before the first write."""
        for path in self.aside:
            if os.path.lexists(path):
                log.warning("moved the existing %s aside to %s (--overwrite)", path, move_aside(path))
        self.aside = []


def claim(path: str | os.PathLike, kind: str, made_by: str, *, overwrite: bool = False, resume: bool = False,
          offer_resume: bool = False, ours: Callable[[Path], tuple[str, str] | None] | None = None,
          settings: tuple[Path, dict, str] | None = None, also: tuple[Path, ...] = (),
          upgrade: Callable[[dict], dict] | None = None) -> Claim:
    """Check output `path` ("file", "folder" or "any": files.check_output) before any work -> its Claim.

    missing, or a folder holding no files     a new output
    the command's own output                  continued when `resume`; else refused (naming
                                              --resume when `offer_resume`) or replaced on `overwrite`
    anything else                             refused, or replaced on `overwrite`

    With `offer_resume` (--resume is the user's option), `resume` and `overwrite` together are refused.

    `made_by` names the command ('specmae embed'). Its own output is a folder that `ours(folder)`
    describes as (what, why), e.g. ('a run', 'checkpoints up to step-00000012'); or, with
    `settings` = (JSON file, the settings of this run, what the output holds), one whose recorded
    settings are the same by content (`differences`; `upgrade` brings settings recorded by an older
    version to this one's terms first): continued unless `overwrite`. `also`: files
    beside `path` that belong to it (a table's settings and errors), moved aside with it.
    """
    path = check_output(path, kind, f"output of {made_by}")
    if offer_resume and resume and overwrite:
        raise OutputError(f"{path}: --resume continues the run there and --overwrite moves it aside; "
                          "give one of them")
    aside = [path, *also] if overwrite else []
    if not taken(path):
        return Claim(path, aside=aside[1:])
    mine = None
    if settings is not None:
        recorded = read_settings(settings[0])
        if recorded is not None and upgrade is not None:
            recorded = upgrade(recorded)
        if recorded is None:
            what, why = "files" if path.is_dir() else "a file", f"not made by {made_by}: no readable {settings[0].name}"
        elif differ := differences(recorded, settings[1]):
            what, why = settings[2], "made with other settings: " + "; ".join(differ)
        else:
            return Claim(path, resumes=not overwrite, aside=aside)
    else:
        mine = ours(path) if ours is not None and path.is_dir() else None
        if mine is not None and resume and not overwrite:
            return Claim(path, resumes=True)
        what, why = mine or _foreign(path)
    if overwrite:
        return Claim(path, aside=aside)
    raise refusal(path, what, why, resume=offer_resume and mine is not None)


def _foreign(path: Path) -> tuple[str, str]:
    if not path.is_dir():
        return "a file", f"{os.lstat(path).st_size} bytes"
    names = sorted(p.name for p in path.iterdir())
    return "files", ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")


def read_settings(path: Path) -> dict | None:
    """The settings a job recorded in JSON file `path`, or None when there is no readable one."""
    try:
        recorded = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return recorded if isinstance(recorded, dict) else None


def differences(old: dict, new: dict, may_differ: tuple[str, ...] = ()) -> list[str]:
    """The dotted fields whose values differ between two nested settings dicts, as
    'model.encoder.depth: 2 then, 3 now'; fields in `may_differ`, or in a section it names, are
    left out.

    A checkpoint (a dict with its hashes: checkpoint.identity) is one field, compared by content:
    the same weights copied elsewhere are the same model.
    """
    a, b = _flat(old), _flat(new)
    absent, sections = "(absent)", tuple(f"{m}." for m in may_differ)
    found = []
    for key in sorted(set(a) | set(b)):
        if key in may_differ or key.startswith(sections) \
                or (key in a, _content(a.get(key))) == (key in b, _content(b.get(key))):
            continue
        then, now = _show(a.get(key, absent)), _show(b.get(key, absent))
        found.append(f"{key}: {then} then, {now}{' with other contents' if then == now else ''} now")
    return found


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in d.items():
        if isinstance(value, dict) and "weights_sha256" not in value:
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = list(value) if isinstance(value, tuple) else value
    return out


def _content(value):
    if isinstance(value, dict) and "weights_sha256" in value:
        return {k: v for k, v in value.items() if k != "path"}
    return value


def _show(value) -> str:
    if isinstance(value, dict) and "weights_sha256" in value:
        return f"{value.get('path')} (step {value.get('step')})"
    return value if value == "(absent)" else repr(value)


def check_resume(run_dir: str | os.PathLike, where: str | os.PathLike, old: dict, new: dict,
                 may_differ: tuple[str, ...] = ()) -> None:
    """Refuse to resume `run_dir` with settings `new` other than those it was started with (`old`,
    read from `where`): a ConfigError naming every field that differs, then and now."""
    from .schema import ConfigError

    differ = differences(old, new, may_differ)
    if differ:
        more = f"; and {len(differ) - 8} more" if len(differ) > 8 else ""
        raise ConfigError(f"{run_dir}: --resume with other settings than the run's ({where}): " + "; ".join(differ[:8])
                          + more + ". Resume with the run's own settings (leave out the options that differ), or "
                          "start a new run in another folder")


def write_errors(path: str | os.PathLike, failed: list[tuple[str, str]]) -> None:
    """errors.tsv: one `name<TAB>reason` row per input a job skipped (files.write_tsv); when there
    were none, a table left by an earlier run is removed, since it would be stale."""
    if failed:
        write_tsv(path, failed)
    else:
        Path(path).unlink(missing_ok=True)


def read_errors(path: str | os.PathLike) -> list[tuple[str, str]]:
    """An errors.tsv written by write_errors -> [(input name, reason)]."""
    return [tuple(row) for row in read_tsv(path)]
