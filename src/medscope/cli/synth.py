"""``medscope synth``: the built-in micrograph dataset."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from medscope.cli._common import Flags, add_command, add_options, option_values
from medscope.options import SynthOptions

FLAGS: Flags = {
    "--per-class": ("per_class", {}),
    "--seed": ("seed", {}),
    "--size": ("size", {}),
}


def add_parser(subparsers: Any) -> None:
    p = add_command(subparsers, "synth", "generate the built-in micrograph dataset")
    p.add_argument("--out", type=Path, required=True, help="folder to create")
    add_options(p, SynthOptions, FLAGS)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from medscope import api

    out = api.synth(args.out, progress=args.progress, **option_values(args, FLAGS))
    print(f"wrote {args.per_class * 5} slides to {out}")  # 5 classes
