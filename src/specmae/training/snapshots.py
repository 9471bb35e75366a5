"""Reconstruction snapshots during pre-training: a few fixed crops, reconstructed every N steps.

    run_dir/snapshots/step-00000100.png   input / reconstruction / error of each crop
                                          (visualize.plot_reconstruction), visible patches outlined
    run_dir/tb/                           the same figure as TensorBoard image 'snapshots/reconstruction'

Every `train.snapshot_every` optimizer steps (rank 0 only, model in eval mode, unwrapped from
DDP and torch.compile) the same crops are reconstructed under the same masks, so successive
snapshots show one task being learnt. Which crops:

- built-in corpus: clips synthesised from another seed than the training corpus's
  (train.seed + HELD_OUT_SEED), truly held out;
- a prepared corpus or audio folder: fixed crops of training clips chosen by the seed. There is
  no held-out split to draw from without changing the run's data order, so these are clips the
  model trains on.

Nothing here draws from the global RNGs: the crops come from a seeded numpy Generator, the masks
(random masking at the run's mask ratio, whatever its strategy) from a seeded torch.Generator,
so a run with snapshots trains exactly as one without, and a resumed run stays bit-exact.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..audio import synth
from ..audio.normalize import NormStats
from ..config import RunConfig
from ..model.mae import MaskedAutoencoder
from .corpus import Corpus, corpus_from_waves
from .logs import TrainLogger

log = logging.getLogger(__name__)

SNAPSHOT_CROPS = 3
# Seed offset of the built-in held-out clips: never the training corpus's seed, and apart from
# the seeds of the end-of-run report (20,000) and probe (10,000) for the default seed 0.
HELD_OUT_SEED = 30_000


class Snapshots:
    """on_step_end hook of Trainer.fit: every `every` steps, one figure of `crops` into `folder`
    and TensorBoard. crops: (B, 1, F, T) normalised log-mel on the model's device; read_png(path)
    -> (H, W, 4) floats in [0, 1] (matplotlib's imread), for TensorBoard."""

    def __init__(self, model: MaskedAutoencoder, crops: torch.Tensor, titles: list[str], every: int,
                 mask_ratio: float, seed: int, folder: Path, logger: TrainLogger, read_png: Callable):
        self.model, self.crops, self.titles, self.every = model, crops, titles, every
        self.mask_ratio, self.seed, self.folder, self.logger = mask_ratio, seed, folder, logger
        self.read_png = read_png

    def __call__(self, step: int) -> None:
        if step % self.every:
            return
        from ..visualize import plot_reconstruction

        # The same masks at every snapshot, from a generator of their own.
        generator = torch.Generator(self.crops.device).manual_seed(self.seed)
        path = self.folder / f"step-{step:08d}.png"
        try:
            plot_reconstruction(self.model, self.crops, path, self.mask_ratio, generator=generator,
                                titles=[f"step {step}, {t}" for t in self.titles])
        except OSError as e:  # a full disk costs the picture, not the run
            log.warning("reconstruction snapshot %s not written: %s", path, e)
            return
        finally:
            self.model.train()
        if self.logger.tb:
            rgba = self.read_png(path)  # (H, W, 4) float in [0, 1]
            self.logger.image("snapshots/reconstruction", (rgba[..., :3] * 255).round().astype(np.uint8), step)


def reconstruction_snapshots(cfg: RunConfig, corpus: Corpus, stats: NormStats, model: MaskedAutoencoder,
                             run_dir: Path, logger: TrainLogger) -> Snapshots | None:
    """The snapshot hook of a pre-training run (call on rank 0 only), or None when train.snapshot_every
    is 0 or matplotlib is missing (one warning)."""
    train = cfg.train
    if not train.snapshot_every:
        return None
    try:
        from matplotlib.image import imread
    except ImportError:
        log.warning("train.snapshot_every = %d, but matplotlib is not installed: no reconstruction snapshots "
                    "(pip install 'specmae[plots]')", train.snapshot_every)
        return None
    if logger.tb is None:
        log.warning("tensorboard is not installed: reconstruction snapshots go to %s only",
                    run_dir / "snapshots")
    crops, titles = snapshot_crops(cfg, corpus)
    device = next(model.parameters()).device
    x = stats.apply(torch.from_numpy(crops))[:, None].to(device)  # (B, 1, F, T)
    return Snapshots(model, x, titles, train.snapshot_every, cfg.masking.ratio, train.seed, run_dir / "snapshots",
                     logger, imread)


def snapshot_crops(cfg: RunConfig, corpus: Corpus, n: int = SNAPSHOT_CROPS) -> tuple[np.ndarray, list[str]]:
    """-> (crops (n, F, T) float32 un-normalised log-mel, a title for each), fixed by train.seed."""
    fe, n_frames, seed = cfg.frontend, cfg.model.encoder.n_frames, cfg.train.seed
    rng = np.random.default_rng([seed, HELD_OUT_SEED])
    if cfg.train.data is None:
        waves, labels = synth.make_corpus(n, seed=seed + HELD_OUT_SEED, sample_rate=fe.sample_rate)
        corpus = corpus_from_waves(waves, fe, labels)
        clips = np.arange(n)
    else:
        clips = rng.choice(len(corpus), size=min(n, len(corpus)), replace=False)
    crops, titles = [], []
    for clip in clips:
        start = int(rng.integers(0, max(int(corpus.lengths[clip]) - n_frames, 0) + 1))
        crops.append(corpus.crop(int(clip), start, n_frames, fe.silence))
        seconds = start * fe.hop_length / fe.sample_rate
        titles.append(f"held-out {synth.CLASSES[corpus.labels[clip]]}" if cfg.train.data is None else
                      f"training clip {Path(corpus.names[clip]).name} at {seconds:.1f} s")
    return np.stack(crops), titles
