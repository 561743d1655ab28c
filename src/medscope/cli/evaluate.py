"""``medscope evaluate``: metrics of a run, or of several averaged (an ensemble)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from medscope.cli._common import Flags, add_command, add_options, option_values
from medscope.options import EvaluateOptions

FLAGS: Flags = {
    "--precision": ("precision", {}),
    "--device": ("device", {}),
    "--target-accuracy": ("target_accuracy", {"metavar": "P"}),
    "--tta": ("tta", {}),
}


def add_parser(subparsers: Any) -> None:
    p = add_command(subparsers, "evaluate", "metrics of a run (or of several averaged) on its "
                    "test split or on another folder")
    p.add_argument("runs", type=Path, nargs="+", metavar="RUN",
                   help="run directory; several: evaluate the average of their calibrated "
                        "probabilities (an ensemble; they must share the test split, or give "
                        "--data) into --out")
    p.add_argument("--data", type=Path, default=None, help="folder with the same classes")
    p.add_argument("--out", type=Path, default=None,
                   help="where metrics.json goes (required for an ensemble)")
    add_options(p, EvaluateOptions, FLAGS)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from medscope import api

    options = option_values(args, FLAGS)
    tta = " (TTA)" if args.tta else ""
    if len(args.runs) == 1:
        m = api.evaluate(args.runs[0], args.data, args.out, progress=args.progress, **options)
        print(f"accuracy {m['accuracy']:.4f}  F1 macro {m['f1_macro']:.4f}  "
              f"F1 micro {m['f1_micro']:.4f}  on {m['n']} images{tta}")
        return
    m = api.evaluate_ensemble(args.runs, args.out, data_dir=args.data, progress=args.progress,
                              **options)
    ci = m["ci"].get("accuracy") or {}
    interval = f" (95% CI {ci['low']:.4f}-{ci['high']:.4f})" if "low" in ci else ""
    print(f"ensemble of {len(args.runs)}: accuracy {m['accuracy']:.4f}{interval}  F1 macro "
          f"{m['f1_macro']:.4f}  on {m['n']} images{tta}")
    for member in m["ensemble"]["members"]:
        print(f"  {member['run']}: accuracy {member['accuracy']:.4f}  F1 macro "
              f"{member['f1_macro']:.4f}")
    print(f"wrote {Path(args.out) / 'metrics.json'}")
