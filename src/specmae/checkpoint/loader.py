"""One loader for every consumer: a checkpoint -> its typed configuration and its model.

    load(path)          a specmae checkpoint folder, a run folder (its latest checkpoint), or an
                        official MSM-MAE / M2D weights file (converted in memory)
      -> Checkpoint     .config (RunConfig: model, frontend, masking, train), .norm_stats,
                        .step, .epoch, .imported (provenance of official weights), .model,
                        .finetune (FinetuneInfo of a fine-tuned classifier, else None)

A pre-trained checkpoint's model is a MaskedAutoencoder; a fine-tuned one (config.json with a
`finetune` section: labels, task type, fine-tuning config) is a Classifier on the same encoder
config. Both have `.encoder`, which is all that embedding needs.

`specmae.load` (embeddings), the HEAR module, export, evaluation, embedding jobs, the demo's
report and resume all go through here, so a checkpoint's config.json is parsed and checked in
one place. Checkpoints written before the front-end had a `kind` (every MSM-MAE checkpoint of
specmae 0.1) load as MSM-MAE front-end with global statistics: the missing fields take their
defaults, which are exactly what those checkpoints used.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from ..audio.normalize import NormStats
from ..config import FinetuneInfo, RunConfig
from ..schema import ConfigError
from . import official
from . import store
from .hub import fetch, is_hub_name
from .store import CONFIG, CheckpointError, load_checkpoint, read_config

# Entries of config.json besides the run config's sections.
META_KEYS = ("format", "version", "norm_stats", "step", "epoch", "imported", "finetune")


@dataclass
class Checkpoint:
    """A loaded checkpoint: where it came from, its typed configuration and its model."""
    path: Path                      # checkpoint folder, or the official weights file
    config: RunConfig
    norm_stats: NormStats
    step: int = 0
    epoch: float | None = None
    imported: dict | None = None    # official weights: file, sha256, format, notes
    model: torch.nn.Module | None = None   # MaskedAutoencoder, or Classifier when fine-tuned; eval mode
    finetune: FinetuneInfo | None = None   # fine-tuned checkpoints: labels, task type, recipe

    def to_json(self) -> dict:
        """config.json as written by save_checkpoint (without format and version)."""
        out = dict(self.config.to_dict(), norm_stats=self.norm_stats.to_json(), step=self.step, epoch=self.epoch)
        if self.imported is not None:
            out["imported"] = self.imported
        if self.finetune is not None:
            out["finetune"] = self.finetune.to_dict()
        return out

    def build_model(self) -> torch.nn.Module:
        """The untrained model this config describes: a Classifier when fine-tuned, else a MaskedAutoencoder."""
        if self.finetune is not None:
            from ..model.classifier import Classifier
            return Classifier(self.config.model.encoder, len(self.finetune.labels), self.finetune.config.model)
        from ..model.mae import MaskedAutoencoder
        return MaskedAutoencoder(self.config.model)


def parse_config(raw: dict, where: str | os.PathLike) -> Checkpoint:
    """A checkpoint's config.json content -> Checkpoint without a model; CheckpointError naming `where`."""
    try:
        sections = {k: v for k, v in raw.items() if k not in META_KEYS}
        config = RunConfig.from_dict(sections).validate()
        if "norm_stats" not in raw:
            raise ConfigError("norm_stats: missing")
        stats = NormStats.parse(raw["norm_stats"]).check_bins(config.frontend.n_mels)
        step, epoch = raw.get("step", 0), raw.get("epoch")
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ConfigError(f"step: expected an integer >= 0, got {step!r}")
        if epoch is not None and (isinstance(epoch, bool) or not isinstance(epoch, (int, float))):
            raise ConfigError(f"epoch: expected a number, got {epoch!r}")
        finetune = None
        if raw.get("finetune") is not None:
            finetune = FinetuneInfo.from_dict(raw["finetune"]).validate()
            finetune.config.model.check_encoder(config.model.encoder)
    except ValueError as e:  # ConfigError and the model configs' own checks
        raise CheckpointError(f"{where}: invalid checkpoint config: {e}") from e
    return Checkpoint(Path(where), config, stats, step, epoch, raw.get("imported"), finetune=finetune)


def resolve(path: str | os.PathLike) -> Path:
    """A checkpoint directory, a run folder (its latest checkpoint), or a `hf://ORG/NAME[@REVISION]`
    name (downloaded into huggingface_hub's cache, its config checked before any weight: hub.py)
    -> checkpoint directory."""
    return fetch(str(path), parse_config) if is_hub_name(path) else store.resolve(path)


def read(path: str | os.PathLike) -> Checkpoint:
    """The typed configuration of a specmae checkpoint or run folder, without loading weights."""
    folder = resolve(path)
    ck = parse_config(read_config(folder), folder / CONFIG)
    ck.path = folder
    return ck


def load(path: str | os.PathLike, device: str | torch.device = "cpu", **official_options) -> Checkpoint:
    """A specmae checkpoint, run folder or official weights file -> Checkpoint with its model
    (eval mode, on `device`). `official_options` (preset, heads, norm_stats, ...) apply to
    official files only; see official.load_official."""
    if official.is_foreign_weights(path):
        model, raw = official.load_official(path, **official_options)
        ck = parse_config(raw, path)
        ck.model = model.to(device).eval()
        return ck
    if official_options:
        raise TypeError(f"options {sorted(official_options)} apply to official weights files only, "
                        f"not to the specmae checkpoint {path}")
    folder = resolve(path)
    state, raw = load_checkpoint(folder, map_location=device)
    ck = parse_config(raw, folder / CONFIG)
    ck.path = folder
    if not any(k.startswith("encoder.") for k in state):
        raise CheckpointError(f"{folder}: {len(state)} tensors but no encoder weights (encoder.*) in its "
                              f"weights file: not a specmae model checkpoint")
    model = ck.build_model()
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{folder}: weights do not match the stored config ({e})") from e
    ck.model = model.to(device).eval()
    return ck

