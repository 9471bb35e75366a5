"""`specmae visualize`: reconstructions, patterned masks, mask-ratio sweep, attention maps and
WAV files of a checkpoint on some audio, gathered in one index.html (docs/visualize.md)."""

from __future__ import annotations

import argparse
import logging

log = logging.getLogger("specmae")


def cmd_visualize(args: argparse.Namespace) -> None:
    from ..audio import AudioError
    from ..checkpoint import load
    from ..features.jobs import find_inputs
    from ..outputs import claim
    from ..visualize import VisualizeOptions, visualize
    from ..visualize.segments import parse_segments
    from .models import exit_on_failures

    claimed = claim(args.out, "folder", "specmae visualize", overwrite=args.overwrite)
    files = [path for path, _ in find_inputs(args.audio)]
    options = VisualizeOptions(seed=args.seed, draws=args.draws, strategies=args.strategies,
                               segments=parse_segments(args.segments), refs=args.ref, patterns=not args.no_patterns,
                               sweep=not args.no_sweep, audio=not args.no_audio,
                               griffin_lim_iters=args.griffin_lim_iters, max_seconds=args.max_duration)
    ck = load(args.checkpoint)
    claimed.take()
    out = claimed.path
    summary = visualize(ck, files, out, options)
    if summary.segments == 0:
        first = summary.failed[0][1] if summary.failed else f"{out}: nothing to draw"
        more = f" (and {len(summary.failed) - 1} more failed inputs)" if len(summary.failed) > 1 else ""
        raise AudioError(first + more)
    print(f"drew {summary.segments} segment(s) of {len(files) - len(summary.failed)} file(s), "
          f"{len(summary.files)} files, failed {len(summary.failed)}: open {summary.index}")
    exit_on_failures(summary.failed)


def add_parsers(sub) -> None:
    p = sub.add_parser("visualize", help="reconstructions, masks, attention maps and sounds of a checkpoint on "
                                         "audio files, gathered in DIR/index.html")
    p.add_argument("checkpoint", help="specmae checkpoint or run folder (pre-trained or fine-tuned), or official .pth")
    p.add_argument("audio", nargs="+", help="audio files or folders (searched recursively)")
    p.add_argument("--out", required=True, help="output folder (figures, WAV files, index.html)")
    p.add_argument("--seed", type=int, default=0, help="masks and Griffin-Lim phases (default 0)")
    p.add_argument("--draws", type=int, default=3, help="random mask draws per strategy (default 3)")
    p.add_argument("--strategies", nargs="+", metavar="NAME",
                   help="masking strategies to draw (default: every one of random, dwm, inverse-block, sgim "
                        "that the checkpoint's configuration allows)")
    p.add_argument("--segments", default="loudest",
                   help="which model-width segment(s) of each file: loudest (default: highest mean log-mel), "
                        "first, all, or numbers from 1 such as 1,3")
    p.add_argument("--ref", nargs="+", metavar="REF",
                   help="attention reference(s): cls, loudest (the patch of highest mean log-mel), or t,f (time "
                        "column, frequency row of a patch, from 0); default: cls (when the model has one) and loudest")
    p.add_argument("--griffin-lim-iters", type=int, default=32, help="Griffin-Lim iterations per WAV (default 32)")
    p.add_argument("--no-patterns", action="store_true", help="skip the patterned masks")
    p.add_argument("--no-sweep", action="store_true", help="skip the mask-ratio sweep")
    p.add_argument("--no-audio", action="store_true", help="write no WAV files")
    p.add_argument("--max-duration", type=float, default=3 * 3600, metavar="SECONDS",
                   help="skip (and report) files longer than this; default 3 hours")
    p.add_argument("--overwrite", action="store_true",
                   help="an existing non-empty --out is moved aside to <out>.old-<time>, not deleted")
    p.set_defaults(func=cmd_visualize)
