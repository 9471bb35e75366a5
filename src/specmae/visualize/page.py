"""index.html: one page gathering every figure (with its caption) and every WAV file of a run.

The page is static HTML with relative links, so the output folder can be moved, copied or
served as it is. It references only files that exist when it is written: an item whose file is
missing is left out (and logged), so a page never shows a broken image or a silent player.
"""

from __future__ import annotations

import html
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from ..files import atomic_write_text

log = logging.getLogger(__name__)

STYLE = """body{font-family:sans-serif;max-width:1500px;margin:1em auto;padding:0 1em;color:#222}
figure{margin:1.2em 0}figure img{max-width:100%;border:1px solid #ddd}
figcaption{font-size:0.9em;color:#444;max-width:1100px}
table.audio td{padding:0.2em 0.8em 0.2em 0;font-size:0.9em}
.note{background:#fff4d6;border-left:4px solid #e0a800;padding:0.5em 0.8em}
.failed{background:#fde2e2;border-left:4px solid #c00;padding:0.5em 0.8em}
code{background:#f2f2f2;padding:0 0.2em}"""


@dataclass
class Item:
    """A figure (.png) or a sound (.wav) in the output folder, with what it shows."""
    path: Path
    caption: str


@dataclass
class Section:
    title: str
    figures: list[Item] = field(default_factory=list)
    sounds: list[Item] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _link(path: Path, root: Path) -> str:
    return quote(Path(os.path.relpath(path, root)).as_posix())


def _existing(items: list[Item]) -> list[Item]:
    kept = [i for i in items if i.path.is_file()]
    for i in items:
        if i not in kept:
            log.warning("%s: not written, left out of the page", i.path)
    return kept


def write_index(out: Path, title: str, intro: list[str], sections: list[Section], notes: list[str],
                failed: list[tuple[str, str]]) -> Path:
    """Write out/index.html atomically -> its path. `intro`: lines about the checkpoint and
    options; `notes`: page-wide remarks (e.g. no decoder); `failed`: (input, reason) skipped."""
    e = html.escape
    parts = [f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'><title>{e(title)}</title>",
             f"<style>{STYLE}</style></head><body>", f"<h1>{e(title)}</h1>"]
    parts += [f"<p>{e(line)}</p>" for line in intro]
    parts += [f"<p class='note'>{e(n)}</p>" for n in notes]
    if failed:
        rows = "".join(f"<li>{e(reason)}</li>" if reason.startswith(name) else
                       f"<li><code>{e(name)}</code>: {e(reason)}</li>" for name, reason in failed)
        parts.append(f"<div class='failed'>Skipped inputs:<ul>{rows}</ul></div>")
    for section in sections:
        parts.append(f"<h2>{e(section.title)}</h2>")
        parts += [f"<p class='note'>{e(n)}</p>" for n in section.notes]
        sounds = _existing(section.sounds)
        if sounds:
            rows = "".join(f"<tr><td>{e(s.caption)}</td><td><audio controls preload='metadata' "
                           f"src='{_link(s.path, out)}'></audio></td></tr>" for s in sounds)
            parts.append(f"<table class='audio'>{rows}</table>")
        for fig in _existing(section.figures):
            parts.append(f"<figure><img src='{_link(fig.path, out)}' alt='{e(fig.caption)}'>"
                         f"<figcaption>{e(fig.caption)}</figcaption></figure>")
    parts.append("</body></html>\n")
    return atomic_write_text(out / "index.html", "\n".join(parts))
