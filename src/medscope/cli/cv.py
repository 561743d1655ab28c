"""``medscope cv``: k-fold cross-validation, a run per fold."""

from __future__ import annotations

import argparse
from typing import Any

from medscope.cli._common import add_command
from medscope.cli._training import add_train_args, train_config
from medscope.errors import MedscopeError


def add_parser(subparsers: Any) -> None:
    p = add_command(subparsers, "cv", "k-fold cross-validation: a run per fold, out-of-fold "
                    "predictions, mean and std table")
    add_train_args(p)
    p.add_argument("--folds", type=int, default=None,
                   help="number of folds K (default data.folds, else 5)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from medscope import api

    if args.opt_out is None:  # the config's default out is a run's, not a CV directory's
        raise MedscopeError("cv needs --out DIR (fold_1 ... fold_K go there)")
    out = api.cv(train_config(args), args.folds, progress=args.progress)
    print((out / "cv_summary.md").read_text())
    print(f"wrote {out / 'cv_summary.csv'}, {out / 'oof_predictions.csv'} and "
          f"{out / 'cv_report.html'}")
