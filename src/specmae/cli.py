"""Command line: `specmae <command>`. Thin: parses arguments and calls the library."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from .allocator import retain_freed_memory

log = logging.getLogger("specmae")


def pretrain_config(args: argparse.Namespace):
    """Defaults <- --config file <- named flags <- --set key=value, validated as a whole. A resumed
    run starts from its own config.json, so only the options given are checked against it."""
    from .config import compose, parse_set, read_config_file, set_path
    from .model.presets import DECODER_SIZES, ENCODER_SIZES, parse_preset
    from .schema import ConfigError

    layers = [read_config_file(args.config)] if args.config else []
    if args.resume:
        layers.insert(0, run_config(Path(args.out)))
    # --preset, --size and --decoder set only the fields they name, over the config file's.
    flags: dict = {}
    if args.preset:
        n_mels, n_frames, patch_f, patch_t = parse_preset(args.preset)
        flags.update({"model.encoder.n_mels": n_mels, "model.encoder.n_frames": n_frames,
                      "model.encoder.patch_f": patch_f, "model.encoder.patch_t": patch_t})
    for flag, sizes, section in (("size", ENCODER_SIZES, "encoder"), ("decoder", DECODER_SIZES, "decoder")):
        name = getattr(args, flag)
        if name is not None:
            if name not in sizes:
                raise ConfigError(f"--{flag} {name}: allowed {', '.join(sizes)}")
            for key, value in zip(("dim", "depth", "heads"), sizes[name]):
                flags[f"model.{section}.{key}"] = value
    flags.update({"train.data": args.data, "train.epochs": args.epochs, "train.batch_size": args.batch_size,
                  "train.micro_batch": args.micro_batch, "train.blr": args.blr, "train.seed": args.seed,
                  "train.warmup_epochs": args.warmup_epochs, "train.workers": args.workers,
                  "train.checkpoint_every": args.checkpoint_every, "masking.strategy": args.masking,
                  "masking.ratio": args.mask_ratio, "masking.hint_ratio": args.hint_ratio,
                  "train.bf16": True if args.bf16 else None, "train.compile": True if args.compile else None})
    named: dict = {}
    for key, value in flags.items():
        if value is not None:
            set_path(named, key, value)
    overrides: dict = {}
    for item in args.set or []:
        set_path(overrides, *parse_set(item))
    return compose(layers + [named, overrides]).validate()


def run_config(run_dir: Path) -> dict:
    """The config of the run in `run_dir` (its config.json, else its latest checkpoint's), or {}.
    Whatever is unreadable here, pretrain() reports once it has checked the whole run."""
    from .checkpoint import CheckpointError, read

    try:
        stored = json.loads((run_dir / "config.json").read_text())
        if isinstance(stored, dict):
            return stored
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        pass
    try:
        return read(run_dir).config.to_dict()
    except (CheckpointError, OSError):
        return {}


def cmd_pretrain(args: argparse.Namespace) -> None:
    from .training.engine import init_distributed
    from .training.pretrain import pretrain

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

    from .audio import build_frontend, synth
    from .checkpoint import load
    from .evaluation.evaluate import builtin_comparison
    from .visualize import plot_loss_curve, plot_reconstruction

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
    if builtin:
        results = builtin_comparison(ckpt, out=run_dir / "probe")
        (run_dir / "probe.json").write_text(json.dumps(results, indent=1))
        print("\nfrozen-encoder probe (HEAR-style, reduced 'fast' grid: linear and 1-hidden-layer heads) "
              f"on a held-out labelled split of the built-in corpus ({len(synth.CLASSES)} classes):")
        print("| features | test accuracy |\n|---|---|")
        for name, acc in results.items():
            print(f"| {name} | {100 * acc:.1f} % |")


def cmd_prepare(args: argparse.Namespace) -> None:
    from .config import compose, parse_set, read_config_file, set_path
    from .files import OutputError, check_output, is_empty_folder
    from .training.data import prepare_corpus

    overrides: dict = {}
    for item in args.set or []:
        set_path(overrides, *parse_set(item))
    cfg = compose(([read_config_file(args.config)] if args.config else []) + [overrides]).validate()
    out = check_output(args.out, "folder", "prepared corpus")
    if out.is_dir() and not is_empty_folder(out) and not (out / "index.json").is_file():
        raise OutputError(f"{out}: not empty and not a prepared corpus (no index.json); choose a new or empty folder")
    frames = args.frames or cfg.model.encoder.n_frames
    out = prepare_corpus(args.source, args.out, cfg.frontend, frames, workers=args.workers,
                         max_seconds=args.max_duration, rebuild=args.rebuild)
    print(f"prepared corpus: {out} ({cfg.frontend.kind} front-end, {cfg.frontend.sample_rate} Hz, "
          f"{cfg.frontend.n_mels} mel bins)")


def cmd_embed(args: argparse.Namespace) -> None:
    from .features.embed import check_target, embed_files, find_audio
    from .features import load

    check_target(args.out, args.table)
    files = find_audio(args.inputs)
    embedder = load(args.checkpoint, args.device, chunks_per_call=args.chunks_per_call, compile=args.compile)
    summary = embed_files(embedder, args.inputs, args.out, args.table, checkpoint=args.checkpoint, files=files,
                          batch_seconds=args.batch_seconds, workers=args.workers, overwrite=args.overwrite,
                          progress=not args.quiet, layers=args.layers, layer_mode=args.layer_mode,
                          precision=args.precision)
    print(f"embedded {summary.embedded} files ({summary.seconds_of_audio:.1f} s of audio), "
          f"skipped {summary.skipped} already done, failed {len(summary.failed)}")
    for name, reason in summary.failed:
        print(f"  failed: {reason}" if name in reason else f"  failed: {name}: {reason}")
    if summary.failed:
        raise SystemExit(1)


def cmd_convert(args: argparse.Namespace) -> None:
    from .checkpoint.official import convert_official

    out, report = convert_official(args.source, args.out, overwrite=args.overwrite, preset=args.preset, heads=args.heads,
                                   decoder_heads=args.decoder_heads, norm_stats=args.norm_stats,
                                   norm_pix_loss=args.norm_pix_loss,
                                   official_no_cls_quirk=args.official_no_cls_quirk)
    print(report)
    print(f"checkpoint: {out}")


def cmd_export(args: argparse.Namespace) -> None:
    from .features.export import export
    from .files import OutputError, check_output, move_aside

    out = check_output(args.out or Path(args.checkpoint).resolve().name + {
        "torchscript": ".pt", "exported": ".pt2", "onnx": ".onnx"}[args.format], "file", "exported encoder")
    if not os.path.lexists(out):
        path = export(args.checkpoint, out, args.format)
    elif not args.overwrite:
        raise OutputError(f"{out}: already exists; choose another --out, or pass --overwrite to move it aside "
                          "(nothing is deleted)")
    else:  # the old file is moved aside only once the new one is complete
        staged = out.with_name(f".{out.stem}.new{out.suffix}")
        try:
            export(args.checkpoint, staged, args.format)
        except BaseException:
            staged.unlink(missing_ok=True)
            raise
        log.warning("moved the existing %s aside to %s (--overwrite)", out, move_aside(out))
        os.replace(staged, out)
        path = out
    print(f"exported encoder ({args.format}, input: un-normalised log-mel chunks): {path}")


def cmd_evaluate(args: argparse.Namespace) -> None:
    from .evaluation.evaluate import run_evaluate_command
    from .files import OutputError, check_output, is_empty_folder

    # A re-run into an evaluation folder reuses its embedding cache and replaces its report; a
    # folder holding anything else is not written into.
    for tokens in args.task:
        if not os.path.lexists(tokens[0]):
            raise FileNotFoundError(f"--task {tokens[0]}: no such file or folder")
    out = check_output(args.out, "folder", "evaluation report")
    if out.is_dir() and not is_empty_folder(out) and not any((out / n).exists() for n in ("report.json", "cache")):
        raise OutputError(f"{out}: not empty and not the output of specmae evaluate (no report.json or cache/); "
                          "choose a new or empty folder")
    run_evaluate_command(args)


def finetune_config(args: argparse.Namespace):
    """Fine-tuning defaults <- --config file <- named flags <- --set key=value, validated as a whole."""
    from .config import FinetuneConfig, compose, parse_set, read_config_file, set_path

    layers = [read_config_file(args.config)] if args.config else []
    flags = {"train.epochs": args.epochs, "train.batch_size": args.batch_size, "train.micro_batch": args.micro_batch,
             "train.blr": args.blr, "train.seed": args.seed, "train.workers": args.workers,
             "train.checkpoint_every": args.checkpoint_every, "model.n_frames": args.frames,
             "model.pool": args.pool, "model.patchout": args.patchout, "augment.mixup": args.mixup,
             "probe": args.probe, "train.bf16": True if args.bf16 else None,
             "train.compile": True if args.compile else None}
    named: dict = {}
    for key, value in flags.items():
        if value is not None:
            set_path(named, key, value)
    overrides: dict = {}
    for item in args.set or []:
        set_path(overrides, *parse_set(item))
    return compose(layers + [named, overrides], FinetuneConfig).validate()


def cmd_finetune(args: argparse.Namespace) -> None:
    from .checkpoint import CheckpointError, read
    from .checkpoint.official import is_foreign_weights
    from .evaluation.evaluate import parse_task_spec
    from .evaluation.tasks import load_task
    from .training.finetune_run import finetune, markdown

    cfg = finetune_config(args)
    try:
        rate = read(args.checkpoint).config.frontend.sample_rate
    except CheckpointError:
        if not is_foreign_weights(args.checkpoint):
            raise
        rate = 16000  # official weights: MSM-MAE's rate, as `specmae evaluate` assumes
    path, options = parse_task_spec(args.task)
    task = load_task(path, prefer_rate=rate, **options)
    report = finetune(cfg, args.checkpoint, task, args.out, resume=args.resume, progress=not args.quiet)
    if report is not None:
        md = markdown(report)
        print(md[:md.index("## Recipe")].rstrip())
        print(f"\nreport: {Path(args.out) / 'report.md'} (+ report.json, curves.png); "
              f"`specmae predict {args.out}` uses {Path(args.out) / report['kept']}")


def cmd_predict(args: argparse.Namespace) -> None:
    from .features import load
    from .features.predict import Predictor, predict_files

    model = load(args.run, args.device)
    if not isinstance(model, Predictor):
        raise ValueError(f"{args.run}: a pre-trained checkpoint, without a classifier head; "
                         "fine-tune it first (specmae finetune CKPT TASK --out RUN)")
    summary = predict_files(model, args.inputs, args.out, checkpoint=args.run, top_k=args.top_k,
                            batch_seconds=args.batch_seconds, workers=args.workers, precision=args.precision,
                            overwrite=args.overwrite, progress=not args.quiet)
    print(f"predicted {summary.predicted} files ({summary.seconds_of_audio:.1f} s of audio), "
          f"skipped {summary.skipped} already done, failed {len(summary.failed)}: {args.out}")
    for name, reason in summary.failed:
        print(f"  failed: {reason}" if name in reason else f"  failed: {name}: {reason}")
    if summary.failed:
        raise SystemExit(1)


def add_finetune_parsers(sub) -> None:
    """The `finetune` and `predict` commands."""
    p = sub.add_parser("finetune", help="fine-tune a checkpoint's encoder with a classifier head on a labelled "
                                        "task, one model per fold (under torchrun for many processes)")
    p.add_argument("checkpoint", help="specmae checkpoint or run folder (pre-trained or fine-tuned), or official .pth")
    p.add_argument("task", nargs="+", metavar="TASK [KEY=VALUE]",
                   help="CSV manifest or HEAR task folder, then task options as for `specmae evaluate --task` "
                        "(name, label, group, type, metric, sep, positive, sample_rate)")
    p.add_argument("--out", required=True, help="run folder (one sub-folder per fold, report, curves)")
    p.add_argument("--config", help="YAML file of fine-tuning settings (sections model, augment, train, ...)")
    p.add_argument("--frames", type=int, help="input width in log-mel frames (default: the checkpoint's)")
    p.add_argument("--pool", choices=["mean", "cls"], help="mean of the patch tokens (default) or [CLS]")
    p.add_argument("--patchout", type=int, help="patch tokens dropped at random in training (default 0)")
    p.add_argument("--mixup", choices=["none", "waveform", "spectrogram", "both"])
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int, help="global batch per optimizer step")
    p.add_argument("--micro-batch", type=int, help="per-process batch per forward (gradient accumulation)")
    p.add_argument("--blr", type=float, help="base lr; lr = blr * batch_size / 256")
    p.add_argument("--probe", help="frozen-probe grid for the comparison: full, hear, linear, fast, none")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--seed", type=int)
    p.add_argument("--workers", type=int, help="data-loading processes per rank")
    p.add_argument("--checkpoint-every", type=int, help="optimizer steps between checkpoints")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="any fine-tuning field, e.g. layer_decay=0.65 or augment.mixup_alpha=0.2")
    p.add_argument("--resume", action="store_true", help="continue: finished folds are kept, the others resume")
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
    p.add_argument("--overwrite", action="store_true", help="predict again files already in the table")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_predict)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="specmae", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error instead of one line")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("pretrain", help="pre-train a masked autoencoder (under torchrun for many processes)")
    p.add_argument("data", nargs="?", help="audio folder (recursive) or prepared corpus; default: built-in corpus")
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

    p = sub.add_parser("prepare", help="decode an audio folder into a log-mel corpus for pre-training")
    p.add_argument("source")
    p.add_argument("--out", required=True)
    p.add_argument("--config", help="the run's YAML file or built-in config (demo, msm-mae, maskspec, ...): "
                                    "its front-end and crop width are used")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="any config field, e.g. frontend.n_mels=64")
    p.add_argument("--frames", type=int, help="crop width for the normalisation statistics (default: the config's)")
    p.add_argument("--max-duration", type=float, default=3 * 3600, metavar="SECONDS",
                   help="skip (and report) files longer than this; default 3 hours")
    p.add_argument("--rebuild", action="store_true",
                   help="prepare again over a corpus of this folder made from other files or settings")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("embed", help="frame and clip embeddings of audio files (one .npz each, or one table)")
    p.add_argument("checkpoint", help="specmae checkpoint, run folder, or official .pth")
    p.add_argument("inputs", nargs="+", help="audio files or folders (searched recursively)")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--out", help="folder for one <relative path>.npz per file (frames, timestamps, clip)")
    where.add_argument("--table", help="one .npz or .csv table of clip embeddings")
    p.add_argument("--layers", type=int, nargs="+", help="encoder layers (default: last; negative from the end)")
    p.add_argument("--layer-mode", choices=["mean", "concat"], help="combine several layers (default mean)")
    p.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-seconds", type=float, default=160.0, help="audio per batch, across files")
    p.add_argument("--chunks-per-call", type=int, help="encoder batch in model-width chunks")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the encoder (about 20 s once; faster on long jobs, bf16 most)")
    p.add_argument("--workers", type=int, default=4, help="decoding threads")
    p.add_argument("--overwrite", action="store_true",
                   help="embed everything again: an existing output is moved aside to <name>.old-<time>, not deleted")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_embed)

    p = sub.add_parser("convert", help="official MSM-MAE or M2D .pth weights -> specmae checkpoint")
    p.add_argument("source", help="checkpoint-<epoch>.pth, ideally inside its run folder <F>x<T>p<pf>x<pt>_<tag>")
    p.add_argument("out", help="specmae checkpoint folder to write")
    p.add_argument("--preset", help="input and patch size, e.g. 80x512p16x16 (default: from the run-folder name)")
    p.add_argument("--heads", type=int, help="encoder heads (default: from the width)")
    p.add_argument("--decoder-heads", type=int, help="decoder heads (default: from the width)")
    p.add_argument("--norm-stats", type=float, nargs=2, metavar=("MEAN", "STD"),
                   help="log-mel statistics of the pre-training corpus (default: the file's, else AudioSet -7.1 4.2)")
    p.add_argument("--norm-pix-loss", action="store_true", help="the model was trained with per-patch targets")
    p.add_argument("--official-no-cls-quirk", action="store_true",
                   help="reproduce the official decoder's dropped token (no-CLS models, reconstructions)")
    p.add_argument("--overwrite", action="store_true",
                   help="an existing OUT is moved aside to <out>.old-<time>, not deleted")
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("export", help="export the encoder (log-mel chunks -> frame features, no front-end)")
    p.add_argument("checkpoint")
    p.add_argument("--out", help="output file (default: <checkpoint name>.pt / .pt2 / .onnx)")
    p.add_argument("--format", choices=["exported", "torchscript", "onnx"], default="exported",
                   help="exported: torch.export .pt2 (default); torchscript: .pt; onnx: needs onnx + onnxscript")
    p.add_argument("--overwrite", action="store_true",
                   help="an existing output file is moved aside to <name>.old-<time>, not deleted")
    p.set_defaults(func=cmd_export)

    from .evaluation.evaluate import add_evaluate_arguments
    p = sub.add_parser("evaluate", help="score checkpoints on labelled tasks with HEAR-style frozen-encoder probes")
    add_evaluate_arguments(p)
    p.set_defaults(func=cmd_evaluate)
    add_finetune_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    rank = os.environ.get("RANK", "0")
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, stream=sys.stderr,
                        format=f"%(asctime)s [rank {rank}] %(name)s: %(message)s", datefmt="%H:%M:%S")
    if rank != "0" and not args.verbose:
        logging.getLogger().setLevel(logging.WARNING)
    retain_freed_memory()
    try:
        args.func(args)
    except EXPECTED_ERRORS as e:
        if args.debug:
            raise
        message = f"specmae {args.command}: {' '.join(str(e).split()) or type(e).__name__}"
        print(message, file=sys.stderr)
        raise UserError(message) from e
    except SystemExit as e:
        # A command that stops with a message (SystemExit("specmae evaluate: ...")) reports a user
        # error too: the same one line and status as the errors above.
        if isinstance(e, UserError) or not isinstance(e.code, str):
            raise
        message = " ".join(e.code.split())
        print(message, file=sys.stderr)
        raise UserError(message) from e


class UserError(SystemExit):
    """A user's mistake, reported as one line (exit status 2); `--debug` shows the traceback instead."""

    def __init__(self, message: str):
        super().__init__(2)
        self.message = message

    def __str__(self) -> str:
        return self.message


def _expected_errors() -> tuple[type[BaseException], ...]:
    from .audio import AudioError
    from .checkpoint import CheckpointError
    from .schema import ConfigError
    # FloatingPointError: a loss that became NaN, with its advice (learning rate, clipping).
    return (ConfigError, AudioError, CheckpointError, ValueError, OSError, FloatingPointError)


EXPECTED_ERRORS = _expected_errors()


if __name__ == "__main__":
    main()
