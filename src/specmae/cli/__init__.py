"""Command line: `specmae <command>`. Thin: parses arguments and calls the library.

    pretrain.py  specmae pretrain, prepare
    models.py    specmae embed, convert, export
    tasks.py     specmae evaluate, finetune, predict
    visualize.py specmae visualize
    hub.py       specmae push

`main` maps every expected error (config, audio, checkpoint, task, I/O, a lost distributed peer)
to one line on stderr and exit status 2; `--debug` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from ..allocator import retain_freed_memory
from . import hub, models, pretrain, tasks, visualize
from .pretrain import pretrain_config

__all__ = ["EXPECTED_ERRORS", "UserError", "build_parser", "main", "pretrain_config"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="specmae", description=__doc__.split("\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error instead of one line")
    sub = parser.add_subparsers(dest="command", required=True)
    for module in (pretrain, models, tasks, visualize, hub):
        module.add_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    rank = os.environ.get("RANK", "0")
    # specmae's own progress at INFO; other libraries' (matplotlib's font search, ...) only from WARNING
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format=f"%(asctime)s [rank {rank}] %(name)s: %(message)s", datefmt="%H:%M:%S")
    level = logging.DEBUG if args.verbose else logging.INFO if rank == "0" else logging.WARNING
    logging.getLogger("specmae").setLevel(level)
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
    from ..audio import AudioError
    from ..checkpoint import CheckpointError
    from ..schema import ConfigError
    from ..training.distributed import PeerLost
    # FloatingPointError: a loss that became NaN, with its advice (learning rate, clipping).
    # PeerLost: another process of a torchrun job is gone or timed out, with the advice to resume.
    return (ConfigError, AudioError, CheckpointError, ValueError, OSError, FloatingPointError, PeerLost)


EXPECTED_ERRORS = _expected_errors()
