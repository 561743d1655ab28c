"""``medscope demo``: synth -> patches -> train -> evaluate -> report, end to end."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from medscope.cli._common import Flags, add_command, add_options, option_values
from medscope.options import DemoOptions

FLAGS: Flags = {
    "--per-class": ("per_class", {}),
    "--force": ("force", {}),
}


def add_parser(subparsers: Any) -> None:
    p = add_command(subparsers, "demo",
                    "synth -> patches -> train -> evaluate -> report, end to end")
    p.add_argument("--out", type=Path, default=Path("runs/demo"))
    p.add_argument("--config", type=Path, default=Path("demo"),
                   help="training recipe: a YAML file or a shipped recipe name (default demo)")
    p.add_argument("--epochs", type=int, default=None, help="override the recipe's epochs")
    p.add_argument("--img-size", type=int, default=None, help="override the recipe's size")
    p.add_argument("--seed", type=int, default=None, help="override the recipe's seed")
    add_options(p, DemoOptions, FLAGS)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from medscope import api

    done = api.demo(args.out, config=args.config, epochs=args.epochs, img_size=args.img_size,
                    seed=args.seed, progress=args.progress, **option_values(args, FLAGS))
    m = done.metrics
    print(f"\ndemo finished in {done.seconds:.0f} s: test accuracy "
          f"{m['accuracy']:.4f}, F1 macro {m['f1_macro']:.4f} on {m['n']} patches")
    print(f"report: {done.run.report}")
