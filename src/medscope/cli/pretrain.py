"""``medscope pretrain``: self-supervised pretraining of a backbone on images without labels;
writes a run directory whose backbone ``medscope train --pretrained RUN`` fine-tunes."""

from __future__ import annotations

import argparse
import os
from typing import Any

from medscope.cli._common import add_command
from medscope.cli._training import TRAIN_OPTIONS, Options, add_train_args, explicit_overrides
from medscope.cli.train import run_to_resume

# The training flags pretraining shares (same config keys), then its own.
PRETRAIN_OPTIONS: Options = {
    "--data": ("data.paths", {"action": "append", "metavar": "DIR"}),
    **{flag: TRAIN_OPTIONS[flag] for flag in (
        "--out", "--model", "--pretrained", "--epochs", "--img-size", "--in-chans",
        "--batch-size", "--lr", "--optimizer", "--scheduler", "--warmup-epochs", "--augment",
        "--seed", "--precision", "--device", "--compile", "--workers", "--cache-dir",
        "--no-cache", "--strict", "--checkpoint-every", "--nan-policy", "--deterministic",
        "--track")},
    "--objective": ("pretrain.objective", {}),
    "--temperature": ("pretrain.temperature", {}),
    "--proj-dim": ("pretrain.proj_dim", {}),
}


def add_parser(subparsers: Any) -> None:
    from medscope.config import PretrainRunConfig, pretrain_default

    p = add_command(subparsers, "pretrain", "self-supervised pretraining on unlabeled images; "
                    "writes a run dir for train --pretrained")
    add_train_args(p, PRETRAIN_OPTIONS, PretrainRunConfig, pretrain_default)
    p.add_argument("--resume", nargs="?", const=True, default=None, metavar="RUN",
                   help="continue an interrupted pretraining: --resume RUN")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from medscope import api
    from medscope.config import load_pretrain_config

    overrides = explicit_overrides(args, PRETRAIN_OPTIONS)
    if args.resume is not None:
        result = api.resume_pretrain(run_to_resume(args), overrides, progress=args.progress)
    else:
        result = api.pretrain(load_pretrain_config(args.config, overrides),
                              progress=args.progress)
    if os.environ.get("RANK", "0") == "0":  # under torchrun, one line for the whole job
        print(f"pretraining finished: {result.root}  (report: {result.report}; fine-tune "
              f"with: medscope train --pretrained {result.root} ...)")
