"""`specmae evaluate`, `finetune` and `predict`: checkpoints on labelled tasks."""

from __future__ import annotations

import argparse
import os
from pathlib import Path


def cmd_evaluate(args: argparse.Namespace) -> None:
    from ..evaluation.evaluate import run_evaluate_command
    from ..outputs import claim

    # A re-run into an evaluation folder reuses its embedding cache and replaces its report; a
    # folder holding anything else is not written into.
    for tokens in args.task:
        if not os.path.lexists(tokens[0]):
            raise FileNotFoundError(f"--task {tokens[0]}: no such file or folder")
    claim(args.out, "folder", "specmae evaluate", overwrite=args.overwrite, resume=True, ours=_evaluation).take()
    run_evaluate_command(args)


def _evaluation(out: Path) -> tuple[str, str] | None:
    held = [n for n in ("report.json", "cache") if (out / n).exists()]
    return ("an evaluation", f"{' and '.join(held)}: re-run to reuse its cache") if held else None


def finetune_config(args: argparse.Namespace):
    """Fine-tuning defaults <- --config file <- named flags <- --set key=value, validated as a whole. A
    resumed run starts from the config it was started with, so only the options given are checked."""
    from ..config import FinetuneConfig, compose_cli, read_config_file
    from ..training.finetune_run import asked_config

    layers = [read_config_file(args.config)] if args.config else []
    if args.resume:
        layers.insert(0, asked_config(args.out))
    flags = {"train.epochs": args.epochs, "train.batch_size": args.batch_size, "train.micro_batch": args.micro_batch,
             "train.blr": args.blr, "train.seed": args.seed, "train.workers": args.workers,
             "train.checkpoint_every": args.checkpoint_every, "model.n_frames": args.frames,
             "model.pool": args.pool, "model.patchout": args.patchout, "augment.mixup": args.mixup,
             "probe": args.probe, "prefer": args.prefer, "train.bf16": True if args.bf16 else None,
             "train.compile": True if args.compile else None}
    return compose_cli(layers, flags, args.set, FinetuneConfig)


def cmd_finetune(args: argparse.Namespace) -> None:
    from ..checkpoint import CheckpointError, read
    from ..checkpoint.official import is_foreign_weights
    from ..evaluation.evaluate import parse_task_spec
    from ..evaluation.report import headline
    from ..evaluation.tasks import load_task
    from ..training.finetune_run import finetune, markdown

    cfg = finetune_config(args)
    try:
        rate = read(args.checkpoint).config.frontend.sample_rate
    except CheckpointError:
        if not is_foreign_weights(args.checkpoint):
            raise
        rate = 16000  # official weights: MSM-MAE's rate, as `specmae evaluate` assumes
    path, options = parse_task_spec(args.task)
    task = load_task(path, prefer_rate=rate, **options)
    report = finetune(cfg, args.checkpoint, task, args.out, resume=args.resume, overwrite=args.overwrite,
                      progress=not args.quiet)
    if report is not None:
        print(headline(markdown(report)))
        print(f"\nreport: {Path(args.out) / 'report.md'} (+ report.json, curves.png); "
              f"`specmae predict {args.out}` uses {Path(args.out) / report['kept']}")


def cmd_predict(args: argparse.Namespace) -> None:
    from ..features import load
    from ..features.predict import Predictor, predict_files
    from .models import exit_on_failures

    model = load(args.run, args.device)
    if not isinstance(model, Predictor):
        raise ValueError(f"{args.run}: a pre-trained checkpoint, without a classifier head; "
                         "fine-tune it first (specmae finetune CKPT TASK --out RUN)")
    summary = predict_files(model, args.inputs, args.out, checkpoint=args.run, top_k=args.top_k,
                            batch_seconds=args.batch_seconds, workers=args.workers, precision=args.precision,
                            overwrite=args.overwrite, progress=not args.quiet)
    print(f"predicted {summary.predicted} files ({summary.seconds_of_audio:.1f} s of audio), "
          f"skipped {summary.skipped} already done, failed {len(summary.failed)}: {args.out}")
    exit_on_failures(summary.failed)


def add_parsers(sub) -> None:
    from ..evaluation.evaluate import add_evaluate_arguments

    p = sub.add_parser("evaluate", help="score checkpoints on labelled tasks with HEAR-style frozen-encoder probes")
    add_evaluate_arguments(p)
    p.add_argument("--overwrite", action="store_true",
                   help="start afresh: an existing --out is moved aside to <out>.old-<time>, not deleted")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("finetune", help="fine-tune a checkpoint's encoder with a classifier head on a labelled "
                                        "task, one model per fold (under torchrun for many processes)")
    p.add_argument("checkpoint", help="specmae checkpoint or run folder (pre-trained or fine-tuned), or official .pth")
    p.add_argument("task", nargs="+", metavar="TASK [KEY=VALUE]",
                   help="CSV manifest or HEAR task folder, then task options as for `specmae evaluate --task` "
                        "(name, label, group, type, metric, sep, positive, sample_rate)")
    p.add_argument("--out", required=True, help="run folder (one sub-folder per fold, report, curves)")
    p.add_argument("--config", help="YAML file of fine-tuning settings (sections model, augment, train, ...)")
    p.add_argument("--frames", type=int, help="input width in log-mel frames (default: the checkpoint's)")
    p.add_argument("--pool", choices=["mean", "cls", "freq"],
                   help="mean of the patch tokens, [CLS], or freq: per frequency row, concatenated")
    p.add_argument("--patchout", type=int, help="patch tokens dropped at random in training (default 0)")
    p.add_argument("--mixup", choices=["none", "waveform", "spectrogram", "both"])
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int, help="global batch per optimizer step")
    p.add_argument("--micro-batch", type=int, help="per-process batch per forward (gradient accumulation)")
    p.add_argument("--blr", type=float, help="base lr; lr = blr * batch_size / 256")
    p.add_argument("--probe", help="frozen-probe grid for the comparison: full, hear, linear, fast, none")
    p.add_argument("--prefer", choices=["best", "finetuned", "probe"],
                   help="what the run's latest (predict, specmae.load) uses: best (default): the fine-tuned model "
                        "unless the probe classifier (the probe grid's winning head on the frozen encoder) is better "
                        "on validation beyond chance; or one of them")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--seed", type=int)
    p.add_argument("--workers", type=int, help="data-loading processes per rank")
    p.add_argument("--checkpoint-every", type=int, help="optimizer steps between checkpoints")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="any fine-tuning field, e.g. layer_decay=0.65 or augment.mixup_alpha=0.2")
    p.add_argument("--resume", action="store_true", help="continue: finished folds are kept, the others resume")
    p.add_argument("--overwrite", action="store_true",
                   help="start afresh in --out: an existing run there is moved aside to <out>.old-<time>, not deleted")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_finetune)

    p = sub.add_parser("predict", help="top-k labels of audio files from a fine-tuned run (resumable CSV)")
    p.add_argument("run", help="fine-tuned run folder or checkpoint")
    p.add_argument("inputs", nargs="+", help="audio files or folders (searched recursively)")
    p.add_argument("--out", required=True, help="CSV table: path, label_1, score_1, ... (resumed if present)")
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32")
    p.add_argument("--batch-seconds", type=float, default=160.0, help="audio per batch, across files")
    p.add_argument("--workers", type=int, default=4, help="decoding threads")
    p.add_argument("--overwrite", action="store_true",
                   help="predict every file again: an existing table is moved aside to <name>.old-<time>, not deleted")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_predict)
