"""`specmae push`: a run's newest checkpoint, with a model card, to the Hugging Face Hub (docs/hub.md)."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path


def cmd_push(args: argparse.Namespace) -> None:
    from ..checkpoint.card import stage
    from ..checkpoint.hub import PREFIX, parse_name, upload
    from ..outputs import claim

    repo, revision = parse_name(PREFIX + args.repo)
    if revision is not None or "/" not in repo:
        raise ValueError(f"{args.repo}: expected ORG/NAME (a revision goes to --revision)")
    options = dict(revision=args.revision, license=args.license, base_model=args.base_model, reports=args.report,
                   train_state=args.with_train_state)
    if args.to_folder:
        claimed = claim(args.to_folder, "folder", "specmae push", overwrite=args.overwrite)
        out = claimed.path
        claimed.take()
        stage(args.run, out, repo, **options)
        files = sorted(p for p in out.iterdir())
        size = sum(p.stat().st_size for p in files) / 1e6
        print(f"{out}: {', '.join(p.name for p in files)} ({size:.1f} MB), what `specmae push` would upload to "
              f"{repo}; nothing was uploaded")
        return
    with tempfile.TemporaryDirectory(prefix="specmae-push-") as tmp:
        folder = stage(args.run, Path(tmp) / "upload", repo, **options)
        url = upload(folder, repo, private=args.private, revision=args.revision)
    print(f"pushed {args.run} to {url}; load it with specmae.load(\"{PREFIX}{repo}"
          f"{'@' + args.revision if args.revision else ''}\")")


def add_parsers(sub) -> None:
    p = sub.add_parser("push", help="upload a run's newest checkpoint with a model card to the Hugging Face Hub")
    p.add_argument("run", help="run folder (its newest checkpoint; a fine-tuning run's kept one) or checkpoint folder")
    p.add_argument("repo", help="model repository ORG/NAME (created if missing)")
    p.add_argument("--private", action="store_true", help="create the repository private")
    p.add_argument("--revision", help="branch to upload to (created if missing; default main)")
    p.add_argument("--to-folder", metavar="DIR", help="write what would be uploaded into DIR, and upload nothing")
    p.add_argument("--overwrite", action="store_true",
                   help="with --to-folder: move an existing DIR aside to <dir>.old-<time> (nothing is deleted)")
    p.add_argument("--license", default="other", help="license id for the card's metadata (default: other)")
    p.add_argument("--base-model", metavar="ORG/NAME",
                   help="the Hub model a fine-tuned one started from (default: the fine-tuning run's hf:// source)")
    p.add_argument("--report", action="append", default=[], metavar="PATH",
                   help="a `specmae evaluate` report.json (or its folder) whose scores the card shows (repeatable)")
    p.add_argument("--with-train-state", action="store_true",
                   help="also upload train_state.pt (optimizer state, for resuming; not needed to use the model)")
    p.set_defaults(func=cmd_push)
