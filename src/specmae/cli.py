"""Command line: `specmae <command>`. Thin: parses arguments and calls the library."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from importlib import resources
from pathlib import Path

import yaml

log = logging.getLogger("specmae")


def builtin_configs() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("specmae").joinpath("configs").iterdir()
                  if p.name.endswith(".yaml"))


def read_config_file(name_or_path: str) -> dict:
    """A built-in config name (see `builtin_configs()`) or a YAML/JSON file -> dict."""
    path = Path(name_or_path)
    if not path.is_file():
        builtin = resources.files("specmae").joinpath("configs", f"{name_or_path}.yaml")
        if not builtin.is_file():
            raise SystemExit(f"--config {name_or_path}: no such file, and not a built-in config "
                             f"({', '.join(builtin_configs())})")
        return yaml.safe_load(builtin.read_text()) or {}
    return yaml.safe_load(path.read_text()) or {}


def merge(base: dict, update: dict) -> dict:
    out = dict(base)
    for key, value in update.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def set_path(d: dict, dotted: str, value) -> None:
    *parents, leaf = dotted.split(".")
    for key in parents:
        d = d.setdefault(key, {})
    d[leaf] = value


def pretrain_config(args: argparse.Namespace):
    """Defaults <- --config file <- named flags <- --set key=value."""
    from .presets import model_config
    from .pretrain import RunConfig

    d = RunConfig().to_dict()
    if args.config:
        d = merge(d, read_config_file(args.config))
    if args.preset or args.size or args.decoder:
        enc = d["model"]["encoder"]
        preset = args.preset or f"{enc['n_mels']}x{enc['n_frames']}p{enc['patch_f']}x{enc['patch_t']}"
        d["model"] = model_config(preset, args.size or "base", args.decoder or "msm-mae").to_dict()
    flags = {"train.data": args.data, "train.epochs": args.epochs, "train.batch_size": args.batch_size,
             "train.micro_batch": args.micro_batch, "train.blr": args.blr, "train.seed": args.seed,
             "train.warmup_epochs": args.warmup_epochs, "train.workers": args.workers,
             "train.checkpoint_every": args.checkpoint_every, "masking.strategy": args.masking,
             "masking.ratio": args.mask_ratio, "masking.hint_ratio": args.hint_ratio}
    for key, value in flags.items():
        if value is not None:
            set_path(d, key, value)
    for flag in ("bf16", "compile"):
        if getattr(args, flag):
            set_path(d, f"train.{flag}", True)
    for item in args.set or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set {item!r}: expected key=value, e.g. model.encoder.depth=6")
        set_path(d, key, yaml.safe_load(value))
    try:
        return RunConfig.from_dict(d)
    except (TypeError, ValueError) as e:
        raise SystemExit(f"invalid configuration: {e}") from e


def cmd_pretrain(args: argparse.Namespace) -> None:
    from .pretrain import init_distributed, pretrain

    cfg = pretrain_config(args)
    run_dir = Path(args.out)
    try:
        ckpt = pretrain(cfg, run_dir, resume=args.resume, progress=not args.quiet).checkpoint
    except (ValueError, FileNotFoundError) as e:
        raise SystemExit(f"specmae pretrain: {e}") from e
    if init_distributed().main:
        print(f"checkpoint: {ckpt}")
        if not args.no_report:
            report(run_dir, ckpt, builtin=cfg.train.data is None)


def report(run_dir: Path, ckpt: Path, builtin: bool) -> None:
    """Loss curve, reconstructions and, on the labelled built-in corpus, the probe comparison."""
    import torch

    from . import synth
    from .audio import FrontendConfig, LogMelFrontend
    from .checkpoint import load_model
    from .probe import builtin_comparison
    from .visualize import plot_loss_curve, plot_reconstruction

    print(f"loss curve: {plot_loss_curve(run_dir / 'log.jsonl', run_dir / 'loss.png')}")
    model, config = load_model(ckpt)
    mean, std = config["norm_stats"]
    width = model.cfg.encoder.n_frames
    waves, labels = synth.make_corpus(4, seed=20_000)
    with torch.no_grad():
        lms = LogMelFrontend(FrontendConfig.from_dict(config["frontend"]))(torch.from_numpy(waves))
    x = ((lms[..., :width] - mean) / std)[:, None]
    titles = [synth.CLASSES[i] for i in labels]
    ratio = config["masking"]["ratio"]
    path = plot_reconstruction(model, x, run_dir / "reconstruction.png", ratio,
                               generator=torch.Generator().manual_seed(0), titles=titles)
    print(f"reconstruction: {path}")
    if builtin:
        results = builtin_comparison(ckpt)
        (run_dir / "probe.json").write_text(json.dumps(results, indent=1))
        print("\nlinear probe on a held-out labelled split of the built-in corpus "
              f"({len(synth.CLASSES)} classes):")
        print("| encoder | accuracy |\n|---|---|")
        for name, acc in results.items():
            print(f"| {name} | {100 * acc:.1f} % |")


def cmd_prepare(args: argparse.Namespace) -> None:
    from .audio import FrontendConfig
    from .data import prepare_corpus

    try:
        out = prepare_corpus(args.source, args.out, FrontendConfig(), args.frames, workers=args.workers)
    except (ValueError, FileNotFoundError) as e:
        raise SystemExit(f"specmae prepare: {e}") from e
    print(f"prepared corpus: {out}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="specmae", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("pretrain", help="pre-train a masked autoencoder (under torchrun for many processes)")
    p.add_argument("data", nargs="?", help="audio folder (recursive) or prepared corpus; default: built-in corpus")
    p.add_argument("--out", default="runs/pretrain", help="run folder (checkpoints, logs, figures)")
    p.add_argument("--config", help=f"YAML file or built-in config name")
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
    p.add_argument("--resume", action="store_true", help="continue from the run folder's last checkpoint")
    p.add_argument("--no-report", action="store_true", help="skip the figures and probe after training")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_pretrain)

    p = sub.add_parser("prepare", help="decode an audio folder into a log-mel corpus for pre-training")
    p.add_argument("source")
    p.add_argument("--out", required=True)
    p.add_argument("--frames", type=int, default=208, help="crop width used for the normalisation statistics")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    p.set_defaults(func=cmd_prepare)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    rank = os.environ.get("RANK", "0")
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, stream=sys.stderr,
                        format=f"%(asctime)s [rank {rank}] %(name)s: %(message)s", datefmt="%H:%M:%S")
    if rank != "0" and not args.verbose:
        logging.getLogger().setLevel(logging.WARNING)
    args.func(args)


if __name__ == "__main__":
    main()
