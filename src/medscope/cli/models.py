"""``medscope models``: the architectures with parameters and GMACs."""

from __future__ import annotations

import argparse
from typing import Any

from medscope.cli._common import Flags, add_command, add_options, option_values
from medscope.options import ModelsOptions

FLAGS: Flags = {
    "--img-size": ("img_size", {}),
    "--filter": ("pattern", {}),
    "--in-chans": ("in_chans", {}),
}


def add_parser(subparsers: Any) -> None:
    p = add_command(subparsers, "models", "list architectures with parameters and GMACs")
    add_options(p, ModelsOptions, FLAGS)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from medscope import api

    rows = api.list_models(**option_values(args, FLAGS))
    print(f"{'name':<26}{'source':<10}{'params':>14}{'GMACs@' + str(args.img_size):>12}"
          f"{'default':>9}{'min':>6}  note")
    for r in rows:
        params = f"{r['params']:,}" if r["params"] is not None else "-"
        macs = f"{r['gmacs']:.3f}" if r["gmacs"] is not None else "-"
        print(f"{r['name']:<26}{r['source']:<10}{params:>14}{macs:>12}"
              f"{r['default_size'] or '-':>9}{r['min_size'] or '-':>6}  {r['note']}")
