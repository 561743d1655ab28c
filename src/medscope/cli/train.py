"""``medscope train``: train a classifier into a run directory, or --resume one."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from medscope.cli._common import add_command
from medscope.cli._training import add_train_args, explicit_overrides, train_config
from medscope.errors import MedscopeError


def add_parser(subparsers: Any) -> None:
    p = add_command(subparsers, "train", "train a classifier; writes a run dir")
    add_train_args(p)
    p.add_argument("--resume", nargs="?", const=True, default=None, metavar="RUN",
                   help="continue an interrupted run: --resume RUN, or --out RUN --resume")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from medscope import api

    if args.resume is not None:
        result = api.resume(run_to_resume(args), explicit_overrides(args),
                            progress=args.progress)
    else:
        result = api.train(train_config(args), progress=args.progress)
    if os.environ.get("RANK", "0") == "0":  # under torchrun, one line for the whole job
        print(f"run finished: {result.root}  (report: {result.report})")


def run_to_resume(args: argparse.Namespace) -> Path:
    """The run --resume continues: --resume RUN, or --out RUN --resume, not two different."""
    if args.resume is not True:  # --resume RUN
        if args.opt_out is not None and Path(args.opt_out) != Path(args.resume):
            raise MedscopeError(f"--resume {args.resume} and --out {args.opt_out}: two "
                                "different runs; give the run to continue once")
        args.opt_out = Path(args.resume)
    if args.opt_out is None:
        raise MedscopeError("--resume needs the run to continue: --resume RUN_DIR "
                            "(or --out RUN_DIR --resume)")
    if args.config is not None:
        raise MedscopeError("--resume continues with the run's saved config; pass single "
                            "options (e.g. --epochs 30) instead of --config")
    return Path(args.opt_out)
