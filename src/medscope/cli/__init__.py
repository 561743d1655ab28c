"""The ``medscope`` command: one module per command, each adding its parser and calling one
function of ``medscope.api``; here only the parser's assembly and the error handling.

A user mistake (``MedscopeError``) prints one line and exits 2; anything else is a bug and
shows its traceback. Command modules import nothing heavy at module level: the parser is built
on every start, and ``medscope serve`` must set threading variables before torch loads.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from medscope.cli import (
    audit,
    cache,
    compare,
    cv,
    data_info,
    demo,
    evaluate,
    explain,
    export,
    models,
    patches,
    predict,
    pretrain,
    report,
    run,
    serve,
    synth,
    train,
)
from medscope.cli._common import setup_logging, version
from medscope.errors import MedscopeError

__all__ = ["build_parser", "main"]

# In the order `medscope --help` lists them.
COMMANDS = (synth, patches, pretrain, train, cv, run, evaluate, predict, models, data_info, cache,
            report, demo, compare, explain, export, serve, audit)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.quiet)
    # Progress bars only on a terminal; logs and CI get one line per epoch instead.
    args.progress = not args.quiet and sys.stderr.isatty()
    try:
        return args.func(args) or 0
    except MedscopeError as exc:
        if not _shared_by_ranks(exc):  # under torchrun, rank 0 alone reports those
            print(f"medscope: error: {_message(exc, args)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        from medscope.train.resumable import TrainingInterrupted

        if isinstance(exc, TrainingInterrupted):
            print(f"medscope: {exc}", file=sys.stderr)
            return exc.exit_code
        print("medscope: interrupted (a training run continues with --resume)", file=sys.stderr)
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="medscope", description="Train, evaluate and use CNN classifiers for medical images.")
    parser.add_argument("--version", action="version", version=version())
    sub = parser.add_subparsers(title="commands", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


def _shared_by_ranks(exc: MedscopeError) -> bool:
    """Whether every torchrun rank raised ``exc`` and this one is not rank 0: an error the
    ranks agreed on (``exc.quiet``), or a bad option value, which every rank's checks refuse
    alike before any process group forms."""
    from medscope.options import OptionError

    other_rank = os.environ.get("RANK", "0") != "0"
    return exc.quiet or (other_rank and isinstance(exc, OptionError))


def _message(exc: MedscopeError, args: argparse.Namespace) -> str:
    """The error's one line; a bad option value names the flag the user typed, where the
    library (``medscope.options.OptionError``) names the Python parameter."""
    from medscope.options import OptionError

    flag = getattr(args, "flags", {}).get(exc.name) if isinstance(exc, OptionError) else None
    return exc.message(flag) if flag else str(exc)
