"""Masked-autoencoder pre-training: the recipe that the training engine (engine.py) runs.

The recipe's own parts: the corpus of log-mel clips (prepared once from an audio folder, or
the built-in synthetic one), random crops in a data order fixed by (seed, epoch), the masks of
each micro-batch drawn from (seed, rank, step, micro-step) so that a resumed run draws the same
ones, and the hint-ratio schedule of the informed masking strategies, logged at each epoch.
Process set-up, accumulation, precision, logging and checkpoints are the engine's.

Nothing is written before the run folder and, on resume, the configuration and checkpoint have
been checked (runs.open_run, check_resume): a run is never trained over by accident, and a
resumed run continues with the same model, front-end, masking, data order and schedule.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch

from ..audio import FrontendConfig, synth
from ..audio.normalize import NormStats
from ..checkpoint import CONFIG, resolve
from ..checkpoint.loader import META_KEYS, parse_config
from ..config import RESUME_MAY_DIFFER as TRAIN_MAY_DIFFER, RunConfig
from ..files import atomic_write_text
from ..schema import ConfigError
from ..masking import HINTED, Masker, hint_ratio
from ..model.mae import MaskedAutoencoder
from .corpus import Corpus, CropBatches, corpus_from_waves, is_prepared, load_corpus
from .prepare import prepare_corpus
from .engine import Dist, LossFn, Trainer, micro_seed, param_groups, setup, split_batch
from .. import outputs
from .runs import Resumable, open_run
from .snapshots import reconstruction_snapshots

RESUME_MAY_DIFFER = tuple(f"train.{k}" for k in TRAIN_MAY_DIFFER)  # what a resumed run may change (config.py)

log = logging.getLogger(__name__)


def open_corpus(cfg: RunConfig, run_dir: Path, env: Dist) -> tuple[Corpus, NormStats]:
    """-> (corpus, its statistics). The built-in corpus is synthesised at the front-end's rate;
    audio folders and lists are prepared once (by rank 0) into run_dir/corpus, which a resumed run
    reuses only if its audio did not change; a prepared corpus must have been made with the run's
    front-end."""
    train, n_frames = cfg.train, cfg.model.encoder.n_frames
    if train.data is None:
        waves, labels = synth.make_corpus(train.builtin_clips, seed=train.seed, sample_rate=cfg.frontend.sample_rate)
        corpus = corpus_from_waves(waves, cfg.frontend, labels)
        return corpus, corpus.stats(n_frames, seed=train.seed)
    source = Path(train.data)
    if is_prepared(source):
        corpus, stats = load_corpus(source)
        check_corpus_frontend(corpus.frontend, cfg.frontend, source)
        if stats.per_bin != (cfg.frontend.stats == "per-bin"):  # same log-mel, other kind of statistics
            corpus.frontend = cfg.frontend
            stats = corpus.stats(n_frames, seed=train.seed)
        return corpus, stats
    if env.main:
        prepare_corpus(source, run_dir / "corpus", cfg.frontend, n_frames, workers=train.workers, incremental=False)
    env.barrier()
    return load_corpus(run_dir / "corpus")


def check_corpus_frontend(corpus: FrontendConfig, run: FrontendConfig, where: Path) -> None:
    """A prepared corpus holds log-mel of one front-end: refuse it for a run with another."""
    mine, theirs = run.to_dict(), corpus.to_dict()
    differ = [k for k in mine if k != "stats" and mine[k] != theirs[k]]
    if differ:
        raise ConfigError(f"{where}: prepared with another front-end than this run's: "
                          + ", ".join(f"frontend.{k} = {theirs[k]!r} in the corpus, {mine[k]!r} in the run"
                                      for k in differ)
                          + "; prepare the audio again with this run's config (specmae prepare SRC --out NEW "
                            "--config ...), or train on the audio folder itself")


def check_resume(cfg: RunConfig, run_dir: Path, start: Resumable | None) -> None:
    """Refuse to resume `run_dir` with a configuration that would not continue the same run.

    `cfg` is compared with the run's config.json and with the config of the checkpoint it resumes
    from; the ConfigError lists every field that differs (but RESUME_MAY_DIFFER).
    """
    references = []
    stored = run_dir / "config.json"
    if stored.is_file():
        try:
            references.append((stored, RunConfig.from_dict(json.loads(stored.read_text())).to_dict()))
        except (OSError, UnicodeDecodeError, ValueError) as e:
            if start is None:
                raise ConfigError(f"{stored}: unreadable run config ({' '.join(str(e).split())}), and the run has "
                                  "no checkpoint to check the new configuration against; repair the file, or "
                                  "pass --overwrite to move the run aside") from e
            log.warning("%s: unreadable (%s); checking the configuration against %s only", stored, e,
                        start.path / CONFIG)
    if start is not None:
        raw = {k: v for k, v in start.config.items() if k not in META_KEYS}
        references.append((start.path / CONFIG, RunConfig.from_dict(raw).to_dict()))
    new = cfg.to_dict()
    for where, old in references:
        if _same_path(new["train"]["data"], old["train"]["data"]):
            old["train"]["data"] = new["train"]["data"]
        outputs.check_resume(run_dir, where, old, new, RESUME_MAY_DIFFER)


def _same_path(a: str | None, b: str | None) -> bool:
    try:
        return a is not None and b is not None and os.path.samefile(a, b)
    except OSError:
        return False


# masks(x, step, micro_step) -> ids_shuffle (B, L) for the micro-batch x: (B, 1, F, T), normalised
MaskFn = Callable[[torch.Tensor, int, int], torch.Tensor]


def seeded_masks(masker: Masker, seed: int, rank: int, steps_per_epoch: int, epochs: int,
                 device: torch.device) -> MaskFn:
    """The run's masks, drawn by `masker` from (seed, rank, step, micro-step) alone: a resumed run
    draws the same ones without RNG state. They are drawn in full precision, outside the step's
    bf16 autocast, as an encoder-guided strategy (sgim) scores patches with the model's own fp32
    weights."""
    generator = torch.Generator(device)

    def masks(x: torch.Tensor, step: int, micro_step: int) -> torch.Tensor:
        generator.manual_seed(micro_seed(seed, rank, step, micro_step))
        with torch.autocast(device.type, enabled=False):
            return masker(x, generator, step // steps_per_epoch, epochs)
    return masks


def reconstruction_loss(masks: MaskFn, ratio: float, mean: torch.Tensor, std: torch.Tensor) -> LossFn:
    """The engine's loss of a pre-training micro-batch: (B, 1, F, T) log-mel crops, normalised with
    `mean` and `std` (() global or (F, 1) per mel bin, on the model's device) and masked by
    `masks` -> the mean reconstruction loss on the masked patches.

    `masks` is the one source of masking noise: `seeded_masks` in a run; the golden test gives
    the noise the official run drew (tests/test_golden_train.py).
    """
    def loss(net: torch.nn.Module, x: torch.Tensor, step: int, micro_step: int) -> torch.Tensor:
        x = (x.to(mean.device, non_blocking=True) - mean) / std
        return net(x, ratio, ids_shuffle=masks(x, step, micro_step))[0]
    return loss


@dataclass
class Trained:
    checkpoint: Path            # the run's latest checkpoint directory
    model: MaskedAutoencoder    # this rank's model (identical on every rank)
    step: int


def pretrain(cfg: RunConfig, run_dir: str | os.PathLike, resume: bool = False,
             progress: bool = True, max_steps: int | None = None, overwrite: bool = False) -> Trained:
    """Pre-train an MAE into `run_dir`; returns the final checkpoint and model.

    A `run_dir` that already holds a run is refused unless `resume` (continue it from its newest
    good checkpoint, with the same configuration) or `overwrite` (move it aside, never delete);
    any other non-empty folder is refused too. `max_steps` stops early (after committing a
    checkpoint) without changing the schedule, which is how tests interrupt and resume a run.
    """
    env = setup(cfg.train)
    run_dir = Path(run_dir)
    train, enc, m = cfg.train, cfg.model.encoder, cfg.masking
    cfg.validate()
    micro, accum = split_batch(train, env.world)
    if train.data is not None and not Path(train.data).exists():
        raise FileNotFoundError(f"{train.data}: no such audio folder or prepared corpus")
    start = open_run(run_dir, resume, overwrite, main=env.main, check_config=parse_config)
    if resume:
        check_resume(cfg, run_dir, start)
    env.barrier()  # every process has checked before any writes
    if env.main and m.strategy in HINTED and m.hint_ratio is None and m.hint_start_epoch >= train.epochs:
        log.warning("masking %s: the hint schedule starts at epoch %d of a %d-epoch run, so every mask "
                    "is random (hint ratio 1); set masking.hint_start_epoch or masking.hint_ratio",
                    m.strategy, m.hint_start_epoch, train.epochs)
    corpus, stats = open_corpus(cfg, run_dir, env)
    if env.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        text = json.dumps(cfg.to_dict(), indent=1)
        if not (run_dir / "config.json").is_file() or (run_dir / "config.json").read_bytes() != text.encode():
            atomic_write_text(run_dir / "config.json", text)

    def epoch_data(epoch: int) -> CropBatches:
        return CropBatches(corpus, enc.n_frames, micro, train.seed, epoch, env.rank, env.world)

    steps_per_epoch = len(epoch_data(0)) // accum
    if steps_per_epoch < 1:
        raise ValueError(f"corpus of {len(corpus)} clips gives no full step of {train.batch_size} samples")
    model = MaskedAutoencoder(cfg.model).to(env.device)
    meta = dict(model=cfg.model.to_dict(), frontend=cfg.frontend.to_dict(), norm_stats=stats.to_json(),
                masking=m.to_dict(), train=asdict(train))
    trainer = Trainer(model, param_groups(model, train), train, env, steps_per_epoch, run_dir,
                      meta, resume=start or resume, progress=progress)
    masks = seeded_masks(Masker(m, enc.grid, encoder=model.encoder), train.seed, env.rank, steps_per_epoch,
                         train.epochs, env.device)
    loss = reconstruction_loss(masks, m.ratio, *stats.tensors(env.device))
    snapshots = reconstruction_snapshots(cfg, corpus, stats, model, run_dir, trainer.logger) if env.main else None
    trainer.fit(epoch_data, loss, max_steps,
                on_epoch_start=lambda epoch: dict(hint_ratio=hint_ratio(m, epoch, train.epochs)),
                on_step_end=snapshots)
    return Trained(resolve(trainer.checkpoints), model, trainer.step)
