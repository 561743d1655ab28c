"""``medscope report``: rebuild a run's report.html."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from medscope.cli._common import add_command


def add_parser(subparsers: Any) -> None:
    p = add_command(subparsers, "report", "rebuild report.html of a run")
    p.add_argument("run", type=Path)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from medscope import api

    print(f"wrote {api.report(args.run)}")
