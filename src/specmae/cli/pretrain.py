"""`specmae pretrain` and `specmae prepare`: the run config from files and flags, the run, its report."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path


def pretrain_config(args: argparse.Namespace):
    """Defaults <- --config file <- named flags <- --set key=value, validated as a whole. A resumed
    run starts from its own config.json, so only the options given are checked against it."""
    from ..config import compose_cli, read_config_file
    from ..model.presets import parse_preset, size_fields
    from ..schema import ConfigError

    layers = [read_config_file(args.config)] if args.config else []
    if args.resume:
        layers.insert(0, run_config(Path(args.out)))
    # --preset, --size and --decoder set only the fields they name, over the config file's.
    flags: dict = {}
    if args.preset:
        n_mels, n_frames, patch_f, patch_t = parse_preset(args.preset)
        flags.update({"model.encoder.n_mels": n_mels, "model.encoder.n_frames": n_frames,
                      "model.encoder.patch_f": patch_f, "model.encoder.patch_t": patch_t})
    for flag, part in (("size", "encoder"), ("decoder", "decoder")):
        name = getattr(args, flag)
        if name is not None:
            try:
                fields = size_fields(part, name)
            except ConfigError as e:
                raise ConfigError(f"--{flag} {name}: {e}") from e
            flags.update({f"model.{part}.{key}": value for key, value in fields.items()})
    flags.update({"train.data": args.data, "train.epochs": args.epochs, "train.batch_size": args.batch_size,
                  "train.micro_batch": args.micro_batch, "train.blr": args.blr, "train.seed": args.seed,
                  "train.warmup_epochs": args.warmup_epochs, "train.workers": args.workers,
                  "train.checkpoint_every": args.checkpoint_every, "masking.strategy": args.masking,
                  "masking.ratio": args.mask_ratio, "masking.hint_ratio": args.hint_ratio,
                  "train.bf16": True if args.bf16 else None, "train.compile": True if args.compile else None})
    return compose_cli(layers, flags, args.set)


def run_config(run_dir: Path) -> dict:
    """The config of the run in `run_dir` (its config.json, else its latest checkpoint's), or {}.
    Fields the run's file lacks take the values that runs written before them had (as
    `RunConfig.from_dict` reads them), not today's defaults. Whatever is unreadable here,
    pretrain() reports once it has checked the whole run."""
    from ..checkpoint import CheckpointError, read
    from ..config import RunConfig

    try:
        stored = json.loads((run_dir / "config.json").read_text())
        if isinstance(stored, dict):
            return RunConfig.from_dict(stored).to_dict()
    except (OSError, UnicodeDecodeError, ValueError):
        pass
    try:
        return read(run_dir).config.to_dict()
    except (CheckpointError, OSError):
        return {}


def cmd_pretrain(args: argparse.Namespace) -> None:
    from ..training.engine import init_distributed
    from ..training.pretrain import pretrain

    cfg = pretrain_config(args)
    run_dir = Path(args.out)
    ckpt = pretrain(cfg, run_dir, resume=args.resume, overwrite=args.overwrite, progress=not args.quiet).checkpoint
    if init_distributed().main:
        print(f"checkpoint: {ckpt}")
        if not args.no_report:
            report(run_dir, ckpt, builtin=cfg.train.data is None)


def report(run_dir: Path, ckpt: Path, builtin: bool) -> None:
    """Loss curve, reconstructions and, on the labelled built-in corpus, the probe comparison."""
    import torch

    from ..audio import build_frontend, synth
    from ..checkpoint import load
    from ..evaluation.evaluate import builtin_comparison
    from ..masking import PATTERNS
    from ..visualize import VisualizeOptions, plot_loss_curve, plot_reconstruction, visualize_clips

    print(f"loss curve: {plot_loss_curve(run_dir / 'log.jsonl', run_dir / 'loss.png')}")
    ck = load(ckpt)
    model, frontend = ck.model, ck.config.frontend
    width = model.cfg.encoder.n_frames
    waves, labels = synth.make_corpus(4, seed=20_000, sample_rate=frontend.sample_rate)
    with torch.no_grad():
        lms = build_frontend(frontend)(torch.from_numpy(waves))
    x = ck.norm_stats.apply(lms[..., :width])[:, None]
    titles = [synth.CLASSES[i] for i in labels]
    ratio = ck.config.masking.ratio
    path = plot_reconstruction(model, x, run_dir / "reconstruction.png", ratio,
                               generator=torch.Generator().manual_seed(0), titles=titles)
    print(f"reconstruction: {path}")
    # The full analysis page on two of these clips, kept short (one draw of the run's own masking, a
    # few sweep steps): `specmae visualize` draws every strategy and the whole sweep.
    own = ck.config.masking.strategy
    short = VisualizeOptions(draws=1, strategies=[own] if own not in PATTERNS else [], sweep_ratios=(0.5, 0.75, 0.9),
                             sweep_visible=(5, 1), griffin_lim_iters=16)
    page = visualize_clips(ck, list(zip(titles, waves))[:2], run_dir / "visualize", short).index
    print(f"visual analysis (figures and sounds): {page}")
    if builtin:
        results = builtin_comparison(ckpt, out=run_dir / "probe")
        (run_dir / "probe.json").write_text(json.dumps(results, indent=1))
        print("\nfrozen-encoder probe (HEAR-style, reduced 'fast' grid: linear and 1-hidden-layer heads) "
              f"on a held-out labelled split of the built-in corpus ({len(synth.CLASSES)} classes):")
        print("| features | test accuracy |\n|---|---|")
        for name, acc in results.items():
            print(f"| {name} | {100 * acc:.1f} % |")


def cmd_prepare(args: argparse.Namespace) -> None:
    from ..config import compose_cli, read_config_file
    from ..files import OutputError
    from ..outputs import claim
    from ..training.corpus import is_prepared
    from ..training.prepare import prepare_corpus

    cfg = compose_cli([read_config_file(args.config)] if args.config else [], {}, args.set)
    if (args.out is None) == (args.out_folder is None):
        raise OutputError("name the corpus folder once: specmae prepare SRC OUT (or SRC --out OUT)")
    claimed = claim(args.out or args.out_folder, "folder", "specmae prepare", overwrite=args.overwrite, resume=True,
                    ours=lambda p: ("a prepared corpus", "continued") if is_prepared(p) else None)
    claimed.take()
    out = claimed.path
    frames = args.frames or cfg.model.encoder.n_frames
    out = prepare_corpus(args.source, out, cfg.frontend, frames, workers=args.workers,
                         max_seconds=args.max_duration, rebuild=args.rebuild, shard_bytes=args.shard_size,
                         progress=not args.quiet)
    print(f"prepared corpus: {out} ({cfg.frontend.kind} front-end, {cfg.frontend.sample_rate} Hz, "
          f"{cfg.frontend.n_mels} mel bins)")


def byte_size(text: str) -> int:
    """'256MB', '1GB', '64KiB', '4096' -> bytes (powers of 1024)."""
    import re

    match = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*([KMG]?)(?:I?B)?\s*", text.upper())
    if not match or float(match[1]) * 1024 ** " KMG".index(match[2] or " ") < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a size such as 256MB, 1GB or 4096 (bytes)")
    return int(float(match[1]) * 1024 ** " KMG".index(match[2] or " "))


def add_parsers(sub) -> None:
    p = sub.add_parser("pretrain", help="pre-train a masked autoencoder (under torchrun for many processes)")
    p.add_argument("data", nargs="?", help="audio folder (recursive), .txt/.csv list of audio files, or prepared "
                                         "corpus; default: built-in corpus")
    p.add_argument("--out", default="runs/pretrain", help="run folder (checkpoints, logs, figures)")
    p.add_argument("--config", help="YAML file or built-in config name (demo, msm-mae, maskspec, maskspec-demo)")
    p.add_argument("--preset", help="input/patch preset, e.g. 80x208p16x16")
    p.add_argument("--size", help="encoder size: tiny, small, base, large")
    p.add_argument("--decoder", help="decoder size: msm-mae, maskspec")
    p.add_argument("--epochs", type=int)
    p.add_argument("--warmup-epochs", type=float)
    p.add_argument("--batch-size", type=int, help="global batch per optimizer step")
    p.add_argument("--micro-batch", type=int, help="per-process batch per forward (gradient accumulation)")
    p.add_argument("--blr", type=float, help="base lr; lr = blr * batch_size / 256")
    p.add_argument("--masking", help="masking strategy")
    p.add_argument("--mask-ratio", type=float)
    p.add_argument("--hint-ratio", type=float, help="fixed hint ratio (default: schedule)")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--seed", type=int)
    p.add_argument("--workers", type=int, help="data-loading processes per rank")
    p.add_argument("--checkpoint-every", type=int, help="optimizer steps between checkpoints")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="any config field, e.g. model.encoder.depth=6")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its newest good checkpoint, with its configuration")
    p.add_argument("--overwrite", action="store_true",
                   help="start afresh in --out: an existing run there is moved aside to <out>.old-<time>, not deleted")
    p.add_argument("--no-report", action="store_true", help="skip the figures and probe after training")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_pretrain)

    p = sub.add_parser("prepare", help="decode audio into a sharded log-mel corpus for pre-training (resumable)")
    p.add_argument("source", help="audio folder (recursive), audio file, or list of paths (.txt, or .csv with a "
                                  "'path' column)")
    p.add_argument("out_folder", nargs="?", metavar="OUT", help="corpus folder (or --out)")
    p.add_argument("--out", help="corpus folder")
    p.add_argument("--config", help="the run's YAML file or built-in config (demo, msm-mae, maskspec, ...): "
                                    "its front-end and crop width are used")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="any config field, e.g. frontend.n_mels=64")
    p.add_argument("--frames", type=int, help="crop width for the normalisation statistics (default: the config's)")
    p.add_argument("--max-duration", type=float, default=3 * 3600, metavar="SECONDS",
                   help="skip (and report) files longer than this; default 3 hours")
    p.add_argument("--rebuild", action="store_true",
                   help="prepare this corpus folder again from scratch (another front-end, an older format)")
    p.add_argument("--overwrite", action="store_true",
                   help="start afresh: an existing OUT is moved aside to <out>.old-<time>, not deleted")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                   help="decoding processes (default: one per CPU); 0 decodes in this process")
    p.add_argument("--shard-size", type=byte_size, metavar="SIZE", help="bytes of frames per shard of a new "
                   "corpus, e.g. 256MB or 2GB (default 1GB)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_prepare)
