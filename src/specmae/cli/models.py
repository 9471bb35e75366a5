"""`specmae embed`, `convert` and `export`: what a checkpoint is turned into."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

log = logging.getLogger("specmae")


def cmd_embed(args: argparse.Namespace) -> None:
    from ..features import load
    from ..features.embed import check_target, embed_files
    from ..features.jobs import find_inputs

    check_target(args.out, args.table)
    files = find_inputs(args.inputs)
    embedder = load(args.checkpoint, args.device, chunks_per_call=args.chunks_per_call, compile=args.compile)
    summary = embed_files(embedder, args.inputs, args.out, args.table, checkpoint=args.checkpoint, files=files,
                          batch_seconds=args.batch_seconds, workers=args.workers, overwrite=args.overwrite,
                          progress=not args.quiet, layers=args.layers, layer_mode=args.layer_mode,
                          precision=args.precision)
    print(f"embedded {summary.embedded} files ({summary.seconds_of_audio:.1f} s of audio), "
          f"skipped {summary.skipped} already done, failed {len(summary.failed)}")
    exit_on_failures(summary.failed)


def exit_on_failures(failed: list[tuple[str, str]]) -> None:
    """List the files a batch job skipped and end with status 1 when there were any."""
    for name, reason in failed:
        print(f"  failed: {reason}" if name in reason else f"  failed: {name}: {reason}")
    if failed:
        raise SystemExit(1)


def cmd_convert(args: argparse.Namespace) -> None:
    from ..checkpoint.official import convert_official

    out, report = convert_official(args.source, args.out, overwrite=args.overwrite, preset=args.preset, heads=args.heads,
                                   decoder_heads=args.decoder_heads, norm_stats=args.norm_stats,
                                   norm_pix_loss=args.norm_pix_loss,
                                   official_no_cls_quirk=args.official_no_cls_quirk)
    print(report)
    print(f"checkpoint: {out}")


def cmd_export(args: argparse.Namespace) -> None:
    from ..features.export import export
    from ..outputs import claim

    claimed = claim(args.out or Path(args.checkpoint).resolve().name + {
        "torchscript": ".pt", "exported": ".pt2", "onnx": ".onnx"}[args.format], "file", "specmae export",
        overwrite=args.overwrite)
    out = claimed.path
    # Written beside under another name: an old file is moved aside only once the new one is complete.
    staged = out.with_name(f".{out.stem}.new{out.suffix}")
    try:
        export(args.checkpoint, staged, args.format)
        claimed.take()
        os.replace(staged, out)
    finally:
        staged.unlink(missing_ok=True)
    path = out
    print(f"exported encoder ({args.format}, input: un-normalised log-mel chunks): {path}")


def add_parsers(sub) -> None:
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
