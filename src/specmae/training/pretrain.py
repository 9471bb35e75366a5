"""Masked-autoencoder pre-training: the recipe that the training engine (engine.py) runs.

The recipe's own parts: the corpus of log-mel clips (prepared once from an audio folder, or
the built-in synthetic one), random crops in a data order fixed by (seed, epoch), the masks of
each micro-batch drawn from (seed, rank, step, micro-step) so that a resumed run draws the same
ones, and the hint-ratio schedule of the informed masking strategies, logged at each epoch.
Process set-up, accumulation, precision, logging and checkpoints are the engine's.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from ..audio import synth
from ..checkpoint import resolve
from ..config import RunConfig
from ..masking import HINTED, Masker, hint_ratio
from ..model.mae import MaskedAutoencoder
from .data import CropBatches, corpus_from_waves, load_corpus, prepare_corpus
from .engine import Dist, Trainer, init_distributed, param_groups, setup, split_batch

# init_distributed is the engine's; cli.py imports it from here with pretrain().
__all__ = ["Trained", "init_distributed", "open_corpus", "pretrain"]

log = logging.getLogger(__name__)


def open_corpus(cfg: RunConfig, run_dir: Path, env: Dist):
    """-> (corpus, (mean, std)). Folders are prepared once (by rank 0) into run_dir/corpus."""
    train, n_frames = cfg.train, cfg.model.encoder.n_frames
    if train.data is None:
        waves, labels = synth.make_corpus(train.builtin_clips, seed=train.seed)
        corpus = corpus_from_waves(waves, cfg.frontend, labels)
        return corpus, corpus.stats(n_frames, seed=train.seed)
    source = Path(train.data)
    if (source / "index.json").is_file():
        return load_corpus(source)
    if env.main:
        prepare_corpus(source, run_dir / "corpus", cfg.frontend, n_frames, workers=train.workers)
    env.barrier()
    return load_corpus(run_dir / "corpus")


@dataclass
class Trained:
    checkpoint: Path            # the run's latest checkpoint directory
    model: MaskedAutoencoder    # this rank's model (identical on every rank)
    step: int


def pretrain(cfg: RunConfig, run_dir: str | os.PathLike, resume: bool = False,
             progress: bool = True, max_steps: int | None = None) -> Trained:
    """Pre-train an MAE into `run_dir`; returns the final checkpoint and model.

    `max_steps` stops early (after committing a checkpoint) without changing the schedule,
    which is how tests interrupt and resume a run.
    """
    env = setup(cfg.train)
    run_dir = Path(run_dir)
    train, enc, m = cfg.train, cfg.model.encoder, cfg.masking
    micro, accum = split_batch(train, env.world)
    m.validate(enc.grid)
    if env.main and m.strategy in HINTED and m.hint_ratio is None and m.hint_start_epoch >= train.epochs:
        log.warning("masking %s: the hint schedule starts at epoch %d of a %d-epoch run, so every mask "
                    "is random (hint ratio 1); set masking.hint_start_epoch or masking.hint_ratio",
                    m.strategy, m.hint_start_epoch, train.epochs)
    if env.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=1))

    corpus, (mean, std) = open_corpus(cfg, run_dir, env)

    def epoch_data(epoch: int) -> CropBatches:
        return CropBatches(corpus, enc.n_frames, micro, train.seed, epoch, env.rank, env.world)

    steps_per_epoch = len(epoch_data(0)) // accum
    if steps_per_epoch < 1:
        raise ValueError(f"corpus of {len(corpus)} clips gives no full step of {train.batch_size} samples")
    model = MaskedAutoencoder(cfg.model).to(env.device)
    meta = dict(model=cfg.model.to_dict(), frontend=cfg.frontend.to_dict(), norm_stats=[mean, std],
                masking=m.to_dict(), train=asdict(train))
    trainer = Trainer(model, param_groups(model, train.weight_decay), train, env, steps_per_epoch, run_dir,
                      meta, resume=resume, progress=progress)
    masker = Masker(m, enc.grid, encoder=model.encoder)
    norm = torch.tensor([mean, std], device=env.device)
    generator = torch.Generator(env.device)

    def loss(net: torch.nn.Module, x: torch.Tensor, step: int, micro_step: int) -> torch.Tensor:
        """x: (B, 1, F, T) log-mel crops -> mean reconstruction loss on the masked patches."""
        x = (x.to(env.device, non_blocking=True) - norm[0]) / norm[1]
        # Masks depend only on (seed, rank, step, micro-step): resumable without RNG state. They
        # are drawn in full precision, outside the step's bf16 autocast, as an encoder-guided
        # strategy (sgim) scores patches with the model's own fp32 weights.
        generator.manual_seed(int(np.random.SeedSequence(
            [train.seed, env.rank, step, micro_step]).generate_state(1, np.uint64)[0] >> 1))
        with torch.autocast(env.device.type, enabled=False):
            ids_shuffle = masker(x, generator, step // steps_per_epoch, train.epochs)
        return net(x, m.ratio, ids_shuffle=ids_shuffle)[0]

    trainer.fit(epoch_data, loss, max_steps,
                on_epoch_start=lambda epoch: dict(hint_ratio=hint_ratio(m, epoch, train.epochs)))
    return Trained(resolve(trainer.checkpoints), model, trainer.step)
