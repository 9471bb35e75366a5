"""Checkpoints that describe themselves (docs/checkpoints.md).

A checkpoint is a directory:

    model.safetensors   weights of the MaskedAutoencoder (encoder.* and decoder parts)
    config.json         model + front-end config, normalisation stats, masking, step, ...
    train_state.pt      optimizer, scheduler position, RNG states (only for resume)

It is written under a temporary name, fsynced and renamed, so a crash never leaves a
half-written checkpoint. A run folder keeps several under `checkpoints/` and a `latest`
pointer file that is replaced atomically after each new one is complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..files import atomic_folder, atomic_write_text

FORMAT = "specmae-checkpoint"
VERSION = 1
WEIGHTS = "model.safetensors"
CONFIG = "config.json"
TRAIN_STATE = "train_state.pt"
LATEST = "latest"


class CheckpointError(ValueError):
    """A path that is not a readable specmae checkpoint; the message names it and why."""


def save_checkpoint(path: str | os.PathLike, state_dict: dict, config: dict,
                    train_state: dict | None = None) -> Path:
    """Write a checkpoint directory atomically (files.atomic_folder); an existing one at `path` is replaced."""
    with atomic_folder(path, replace=True) as tmp:
        tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
        save_file(tensors, str(tmp / WEIGHTS), metadata={"format": FORMAT})
        (tmp / CONFIG).write_text(json.dumps({"format": FORMAT, "version": VERSION, **config}, indent=1))
        if train_state is not None:
            torch.save(train_state, tmp / TRAIN_STATE)
    return Path(path)


def resolve(path: str | os.PathLike) -> Path:
    """A checkpoint directory or a run folder (its latest checkpoint) -> checkpoint directory.
    (`hf://` names are the loader's: loader.resolve.)"""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint")
    for pointer in (path / LATEST, path / "checkpoints" / LATEST):
        if pointer.is_file():
            return pointer.parent / read_latest(pointer)
    if path.is_file() and path.name == CONFIG:
        path = path.parent
    if not (path / CONFIG).is_file() or not (path / WEIGHTS).is_file():
        raise CheckpointError(
            f"{path}: not a specmae checkpoint (expected a folder with {CONFIG} and {WEIGHTS}, "
            f"or a run folder with checkpoints/{LATEST}); official MSM-MAE .pth files need `specmae convert`")
    return path


def read_latest(pointer: Path) -> str:
    """The checkpoint a `latest` pointer holds: a folder beside it or below it (a fine-tuning run's
    `fold-1/checkpoints/best`), never outside the folder that holds the pointer."""
    try:
        name = pointer.read_text().strip()
    except (OSError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{pointer}: unreadable pointer ({e})") from e
    parts = Path(name).parts
    if (not name or Path(name).is_absolute() or any(p.startswith(".") for p in parts)
            or not (pointer.parent / name).is_dir()):
        raise CheckpointError(f"{pointer}: names {name[:80]!r}, which is not a checkpoint folder inside "
                              f"{pointer.parent}")
    return name


def read_config(path: str | os.PathLike) -> dict:
    path = resolve(path)
    try:
        config = json.loads((path / CONFIG).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path / CONFIG}: unreadable checkpoint config ({e})") from e
    return check_config(config, path / CONFIG)


def check_config(config, where: str | os.PathLike) -> dict:
    """A config.json's content, checked to be a specmae checkpoint's of a version this specmae reads."""
    if not isinstance(config, dict):
        raise CheckpointError(f"{where}: not a specmae checkpoint config (a JSON {type(config).__name__}, "
                              "expected an object)")
    if config.get("format") != FORMAT:
        kind = f", model_type={config['model_type']!r}" if "model_type" in config else ""
        raise CheckpointError(f"{where}: not a specmae checkpoint config (format={config.get('format')!r}{kind})")
    version = config.get("version", VERSION)
    if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= VERSION:
        raise CheckpointError(f"{where}: a specmae checkpoint of version {version!r}; this specmae reads versions "
                              f"1 to {VERSION} (a newer specmae wrote it: upgrade)")
    return config


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> tuple[dict, dict]:
    """-> (state_dict, config). Weights come from safetensors only: nothing is unpickled."""
    path = resolve(path)
    config = read_config(path)
    try:
        state = load_file(str(path / WEIGHTS), device=str(map_location))
    except Exception as e:  # safetensors raises several types for truncated or foreign files
        raise CheckpointError(f"{path / WEIGHTS}: unreadable weights ({e})") from e
    return state, config


def load_train_state(path: str | os.PathLike) -> dict:
    """train_state.pt (optimizer state, step, a recipe's extras); tensors and plain containers only."""
    path = resolve(path) / TRAIN_STATE
    if not path.is_file():
        raise CheckpointError(f"{path}: missing training state; this checkpoint cannot resume training")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch, zipfile and pickle raise many types for truncated or foreign files
        detail = ("not a torch file, or one holding Python objects" if isinstance(e, pickle.UnpicklingError)
                  else str(e).split(". ")[0].strip()[:160] or type(e).__name__)
        raise CheckpointError(f"{path}: unreadable training state, truncated or damaged ({detail})") from e
    if not isinstance(state, dict) or isinstance(state.get("step"), bool) or not isinstance(state.get("step"), int):
        raise CheckpointError(f"{path}: not a training state (expected a dict with an integer step)")
    return state


def identity(path: str | os.PathLike) -> dict:
    """What a checkpoint is, by content: its folder, and the SHA-256 of its config.json and weights.

    Outputs made from a checkpoint record this, so that a later run can tell whether it is the
    same model (the folder of a run's `latest` moves on as it trains; a copy elsewhere is the same).
    """
    path = resolve(path)
    return {"path": str(path.resolve()), "config_sha256": sha256_file(path / CONFIG),
            "weights_sha256": sha256_file(path / WEIGHTS)}


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def commit_latest(run_checkpoints: Path, name: str, keep: int = 2) -> None:
    """Point `latest` at checkpoint `name`, then prune all but the newest `keep`."""
    atomic_write_text(run_checkpoints / LATEST, name + "\n")
    steps = sorted(p for p in run_checkpoints.glob("step-*") if p.is_dir() and not p.name.startswith("."))
    for old in steps[:-keep]:
        if old.name != name:
            shutil.rmtree(old, ignore_errors=True)
