"""``medscope compare``: one table across runs, CV directories and ensembles."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from medscope.cli._common import Flags, add_command, add_options, option_values
from medscope.options import CompareOptions

FLAGS: Flags = {
    "--repeats": ("latency_repeats", {}),
    "--threads": ("threads", {}),
}


def add_parser(subparsers: Any) -> None:
    p = add_command(subparsers, "compare",
                    "one table across runs: size, CPU speed, accuracy (CSV, MD, HTML)")
    p.add_argument("runs", type=Path, nargs="+", metavar="RUN_CV_OR_ENSEMBLE_DIR",
                   help="finished runs, CV directories, and ensembles' evaluation folders "
                        "(medscope evaluate RUN RUN --out DIR)")
    p.add_argument("--out", type=Path, default=Path("comparison"),
                   help="folder for comparison.csv/.md/.html (default ./comparison)")
    add_options(p, CompareOptions, FLAGS)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from medscope import api

    done = api.compare(args.runs, args.out, **option_values(args, FLAGS))
    print(done.markdown)
    print(f"\nwrote {', '.join(map(str, done.paths))}")
