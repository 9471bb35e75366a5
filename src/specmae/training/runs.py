"""A run folder: whether a training run may write into it, and the checkpoint it resumes from.

    open_run(run_dir, resume, overwrite)   before anything is written: refuse to train over what
                                           is there, move it aside on --overwrite, find the
                                           checkpoint to resume from
    find_resumable(checkpoints)            the newest checkpoint that loads completely; a damaged
                                           one is skipped with a warning naming it

A folder that already holds a run (config.json, log.jsonl, checkpoints/, a prepared corpus) is
never trained over by accident: without `resume` it is refused, and `overwrite` renames it to
`<name>.old-<YYYYmmdd-HHMMSS>` instead of deleting anything (outputs.claim). Any other non-empty
folder or a file is refused the same way. Every recipe (pre-training, fine-tuning) opens its run
through here; outputs.check_resume compares the settings a run is resumed with to its own.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from ..checkpoint import CONFIG, LATEST, CheckpointError, load_checkpoint, load_train_state, read_config
from ..checkpoint.store import read_latest
from ..outputs import claim

log = logging.getLogger(__name__)

# What a run writes into its folder; any of them marks the folder as a run.
RUN_MARKERS = ("config.json", "log.jsonl", "checkpoints", "corpus/index.json", "corpus/manifest.json")


@dataclass
class Resumable:
    """A checkpoint that loaded completely: its folder, config.json, weights and training state."""
    path: Path
    config: dict
    state: dict
    train_state: dict


def open_run(run_dir: str | os.PathLike, resume: bool = False, overwrite: bool = False, main: bool = True,
             check_config: Callable[[dict, Path], None] | None = None) -> Resumable | None:
    """Check `run_dir` before a run writes anything into it -> the checkpoint to resume from, if any.

    missing, or a folder holding no files   a new run (also with `resume`: nothing to resume)
    a run (see RUN_MARKERS)                 `resume`: its newest good checkpoint (None when it has
                                            none yet); otherwise refused, or moved aside on `overwrite`
    a file, another non-empty folder        refused, or moved aside on `overwrite`

    The claim and its wording are outputs.claim's. Only the main process (`main`) moves a folder
    aside; the others just check. `check_config` (config.json content, its path) raises for a
    checkpoint config the recipe cannot use, which is then skipped like an unreadable one.
    """
    out = claim(run_dir, "any", "specmae pretrain", overwrite=overwrite, resume=resume, offer_resume=True, ours=describe_run)
    if out.resumes:
        return find_resumable(out.path / "checkpoints", check_config=check_config, report=main)
    if resume and main:
        log.info("%s holds no run yet: starting a new one", out.path)
    if main:
        out.take()
    return None


def describe_run(run_dir: Path) -> tuple[str, str] | None:
    """('a run', 'checkpoints up to step-00000012' or what else marks it), or None when `run_dir`
    holds no run (see RUN_MARKERS)."""
    markers = [m for m in RUN_MARKERS if os.path.lexists(run_dir / m)]
    if not markers:
        return None
    steps = sorted(p.name for p in (run_dir / "checkpoints").glob("step-*") if p.is_dir())
    return "a run", f"checkpoints up to {steps[-1]}" if steps else "no checkpoint yet, but " + ", ".join(markers)


def find_resumable(checkpoints: str | os.PathLike, map_location: str | torch.device = "cpu",
                   check_config: Callable[[dict, Path], None] | None = None,
                   report: bool = True) -> Resumable | None:
    """The newest checkpoint under a run's `checkpoints/` that loads completely, or None if it has none.

    The one `latest` names comes first, then every `step-*` folder, newest first. A checkpoint
    whose config.json, weights or train_state.pt cannot be read (or that `check_config`
    rejects) is skipped with a warning naming it and why; CheckpointError when none loads.
    """
    checkpoints = Path(checkpoints)
    names, skipped = [], []
    pointer = checkpoints / LATEST
    if pointer.is_file():
        try:
            names.append(read_latest(pointer))
        except CheckpointError as e:
            skipped.append(str(e))
    names += sorted((p.name for p in checkpoints.glob("step-*") if p.is_dir()), reverse=True)
    for name in dict.fromkeys(names):
        folder = checkpoints / name
        try:
            config = read_config(folder)
            if check_config is not None:
                check_config(config, folder / CONFIG)
            state, _ = load_checkpoint(folder, map_location=map_location)
            train_state = load_train_state(folder)
            if not isinstance(train_state.get("optimizer"), dict):
                raise CheckpointError(f"{folder}: its training state has no optimizer state")
            if train_state["step"] != config.get("step"):
                raise CheckpointError(f"{folder}: training state at step {train_state['step']} but "
                                      f"config.json at step {config.get('step')}")
        except CheckpointError as e:
            skipped.append(str(e))
            if report:
                log.warning("skipping checkpoint %s, which cannot be resumed from: %s", folder, e)
            continue
        if skipped and report:
            log.warning("resuming from %s, the newest checkpoint that loads", folder)
        return Resumable(folder, config, state, train_state)
    if skipped:
        raise CheckpointError(f"{checkpoints}: no checkpoint can be resumed from ({'; '.join(skipped)}); "
                              "pass --overwrite to move the run aside and start afresh")
    return None
