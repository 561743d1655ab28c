"""``medscope predict``: classify images with a run (or several averaged); a CSV."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from medscope.cli._common import Flags, add_command, add_options, option_values
from medscope.options import PredictOptions

FLAGS: Flags = {
    "--precision": ("precision", {}),
    "--device": ("device", {}),
    "--tta": ("tta", {}),
    "--top-k": ("top_k", {"metavar": "K"}),
    "--abstain-below": ("abstain_below", {"metavar": "P"}),
    "--batch-size": ("batch_size", {}),
    "--backend": ("backend", {}),
    "--ensemble": ("ensemble", {}),
    "--tiles": ("tiles", {}),
    "--tile-size": ("tile_size", {"metavar": "PX"}),
    "--aggregation": ("aggregation", {}),
    "--tissue": ("tissue", {}),
    "--tiles-dir": ("tiles_dir", {"metavar": "DIR"}),
    "--explain-tiles": ("explain_tiles", {"metavar": "N"}),
}


def add_parser(subparsers: Any) -> None:
    p = add_command(subparsers, "predict", "classify images; writes a CSV")
    p.add_argument("run", type=Path, help="run directory or checkpoint")
    p.add_argument("inputs", type=Path, nargs="+", help="image files and/or folders")
    p.add_argument("--out", type=Path, default=None, help="CSV file (default: print)")
    add_options(p, PredictOptions, FLAGS)
    p.add_argument("--with", dest="with_runs", type=Path, action="append", default=[],
                   metavar="RUN", help="another run to average with RUN (repeatable); the "
                   "runs must share classes, and may differ in architecture and image size")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from medscope import api

    rows = api.predict([args.run, *args.with_runs], args.inputs, args.out,
                       progress=args.progress, **option_values(args, FLAGS))
    if os.environ.get("RANK", "0") != "0":  # under torchrun, rank 0 reports for the job
        return
    if args.out:
        print(f"wrote {len(rows)} predictions to {args.out}")
        return
    for r in rows:
        print(f"{r['file']}\t{r['error'] or r['prediction']}\t"
              f"{r['probability'] if r['error'] else format(r['probability'], '.4f')}"
              + ("\trefer to expert" if r["refer_to_expert"] == "yes" else ""))
