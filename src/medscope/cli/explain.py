"""``medscope explain``: heat-map overlays of what the model looks at."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from medscope.cli._common import Flags, add_command, add_options, option_values
from medscope.options import ExplainOptions

FLAGS: Flags = {"--explain-tiles": ("explain_tiles", {"metavar": "N"})}


def add_parser(subparsers: Any) -> None:
    p = add_command(subparsers, "explain", "heat-map overlays (PNG) of what the model looks at")
    p.add_argument("run", type=Path, help="run directory or checkpoint")
    p.add_argument("inputs", type=Path, nargs="+", help="image files and/or folders")
    p.add_argument("--out", type=Path, required=True, help="folder for the overlays and CSV")
    # No choices here: the library names its methods when given another (explain.METHODS).
    p.add_argument("--method", default="gradcam",
                   help="gradcam (default), gradcam++ or occlusion")
    p.add_argument("--target", default=None, metavar="CLASS",
                   help="class to explain (default: the predicted one)")
    p.add_argument("--layer", default=None, metavar="NAME",
                   help="module name of the target layer (default: chosen per architecture)")
    add_options(p, ExplainOptions, FLAGS)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from medscope import api

    rows = api.explain(args.run, args.inputs, args.out, method=args.method,
                       target=args.target, layer=args.layer, progress=args.progress,
                       **option_values(args, FLAGS))
    bad = sum(1 for r in rows if r["error"])
    print(f"wrote {len(rows) - bad} {args.method} overlays to {args.out} "
          f"({bad} unreadable; see {args.out / 'explanations.csv'})")
