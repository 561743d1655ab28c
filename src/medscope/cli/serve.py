"""``medscope serve``: runs as a JSON API and a web page."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from medscope.cli._common import Flags, add_command, add_options, option_values
from medscope.options import ServeOptions

FLAGS: Flags = {
    "--host": ("host", {}),
    "--port": ("port", {}),
    "--max-upload-mb": ("max_upload_mb", {}),
    "--token": ("token", {}),
    "--abstain-below": ("abstain_below", {"metavar": "P"}),
    "--cors-origin": ("cors_origins", {"action": "append", "default": [], "metavar": "URL"}),
    "--slides": ("slides", {"metavar": "DIR"}),
}


def add_parser(subparsers: Any) -> None:
    p = add_command(subparsers, "serve",
                    "serve runs as a JSON API and a web page (127.0.0.1 by default)")
    p.add_argument("runs", type=Path, nargs="+", metavar="RUN",
                   help="run directories, or an ensemble's folder (medscope evaluate RUN RUN "
                        "--out DIR): its members averaged")
    add_options(p, ServeOptions, FLAGS)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from medscope.threads import prefer_passive_wait

    prefer_passive_wait()  # before torch loads (medscope.api loads it): see threads.py
    from medscope import api

    options = option_values(args, FLAGS)
    options["token"] = options["token"] or os.environ.get("MEDSCOPE_TOKEN") or None

    def announce(ids: list[str]) -> None:
        print(f"serving {', '.join(ids)} at http://{args.host}:{args.port}/  (Ctrl-C stops)")

    api.serve(args.runs, on_start=announce, **options)
