"""``medscope data info``: what a dataset holds."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from medscope.cli._common import Flags, add_command, add_options, option_values, quiet
from medscope.options import DataInfoOptions

FLAGS: Flags = {
    "--format": ("format", {}),
    "--group-pattern": ("group_pattern", {"metavar": "REGEX"}),
}


def add_parser(subparsers: Any) -> None:
    p = add_command(subparsers, "data", "inspect a dataset")
    data_sub = p.add_subparsers(title="data commands", required=True, metavar="DATA_COMMAND")
    q = data_sub.add_parser("info", parents=[quiet()],
                            help="counts per class and split, sizes, modes, duplicates, bad files")
    q.add_argument("path", type=Path, help="image folder, CSV or .npz")
    add_options(q, DataInfoOptions, FLAGS)
    q.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from medscope import api
    from medscope.data.info import format_info

    print(format_info(api.data_info(args.path, progress=args.progress,
                                    **option_values(args, FLAGS))))
