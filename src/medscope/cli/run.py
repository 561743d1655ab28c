"""``medscope run``: a recipe's experiments, then their comparison."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from medscope.cli._common import add_command


def add_parser(subparsers: Any) -> None:
    p = add_command(subparsers, "run",
                    "run a recipe (a YAML file, or the name of a shipped one): its experiments, "
                    "then a comparison")
    p.add_argument("recipe", type=Path,
                   help="recipe file, or the name of a shipped one (e.g. six-architectures)")
    p.add_argument("--data", action="append", default=[], metavar="[EXPERIMENT=]PATH",
                   help="data instead of the recipe's default; EXPERIMENT=PATH for one "
                        "experiment (repeatable)")
    p.add_argument("--out", type=Path, default=None,
                   help="folder for OUT/<experiment>/ and OUT/comparison/ "
                        "(default runs/<recipe>, runs/<recipe>-quick with --quick)")
    p.add_argument("--quick", action="store_true",
                   help="smoke test: tiny synthetic data, 32 px, 1 epoch, 2 folds")
    p.add_argument("--only", nargs="+", default=None, metavar="NAME",
                   help="run only these experiments (and those they start from)")
    p.add_argument("--set", action="append", default=[], metavar="[EXPERIMENT:]KEY=VALUE",
                   help="config key for every experiment, or one (repeatable)")
    p.add_argument("--repeats", type=int, default=None,
                   help="timed batch-1 forwards per model in the comparison (default 30; "
                        "the recipe's quick value with --quick)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from medscope import api

    where = api.run_recipe(args.recipe, out=args.out, data=args.data, settings=args.set,
                           quick=args.quick, only=args.only, latency_repeats=args.repeats,
                           progress=args.progress)
    print((where / "comparison.md").read_text())
    print(f"wrote {where / 'recipe.md'} and {where / 'comparison.html'}")
