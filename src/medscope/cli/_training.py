"""The training options of ``medscope train`` and ``medscope cv``: flags derived from the run
config's schema, and the config the user's flags, --set items and --config give."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

# flag -> (config key, argparse extras)
Options = dict[str, tuple[str, dict[str, Any]]]

# Each training option once: flag -> (config key, argparse extras). Help text, choices and type
# come from the config schema (``describe_field``); defaults stay None so that only flags the
# user gives override the recipe (and, with --resume, the saved config).
TRAIN_OPTIONS: Options = {
    "--data": ("data.path", {}),
    "--format": ("data.format", {}),
    "--out": ("out", {}),
    "--model": ("model.name", {}),
    "--pretrained": ("model.pretrained", {}),
    "--freeze": ("train.freeze", {}),
    "--head-lr-mult": ("train.head_lr_mult", {}),
    "--unfreeze-at": ("train.unfreeze_at", {"metavar": "EPOCH"}),
    "--epochs": ("train.epochs", {}),
    "--img-size": ("data.img_size", {}),
    "--in-chans": ("data.in_chans", {}),
    "--batch-size": ("train.batch_size", {}),
    "--lr": ("train.lr", {}),
    "--optimizer": ("train.optimizer", {}),
    "--clip-grad": ("train.clip_grad", {"metavar": "NORM"}),
    "--scheduler": ("train.scheduler", {}),
    "--warmup-epochs": ("train.warmup_epochs", {"metavar": "EPOCHS"}),
    "--label-smoothing": ("train.label_smoothing", {"metavar": "EPS"}),
    "--ema": ("train.ema", {"metavar": "DECAY"}),
    "--progressive-from": ("train.progressive_from", {"metavar": "SIDE"}),
    "--augment": ("data.augment", {}),
    "--stain-norm": ("data.stain_norm", {}),
    "--balance": ("data.balance", {}),
    "--early-stopping": ("train.early_stopping", {"metavar": "PATIENCE"}),
    "--seed": ("train.seed", {}),
    "--split-seed": ("data.split_seed", {}),
    "--precision": ("train.precision", {}),
    "--device": ("train.device", {}),
    "--compile": ("train.compile", {"action": "store_const", "const": True}),
    "--workers": ("data.num_workers", {}),
    "--split-file": ("data.split_file", {}),
    "--resplit": ("data.resplit", {"action": "store_const", "const": True}),
    "--cache-dir": ("data.cache_dir", {}),
    "--no-cache": ("data.cache", {"action": "store_const", "const": False}),
    "--strict": ("data.strict", {"action": "store_const", "const": True}),
    "--exclude": ("data.exclude", {"metavar": "FILE"}),
    "--duplicates": ("data.duplicates", {}),
    "--group-pattern": ("data.group_pattern", {"metavar": "REGEX"}),
    "--mpp": ("data.mpp", {"metavar": "MICRONS"}),
    "--target-accuracy": ("train.target_accuracy", {}),
    "--checkpoint-every": ("train.checkpoint_every", {"metavar": "MINUTES"}),
    "--nan-policy": ("train.nan_policy", {}),
    "--deterministic": ("train.deterministic", {"action": "store_const", "const": True}),
    "--track": ("track", {"metavar": "SPEC"}),
}


def add_train_args(p: argparse.ArgumentParser, options: Options | None = None,
                   schema: type | None = None, default_of: Callable[[str], Any] | None = None
                   ) -> None:
    """The flags of ``options`` (default: ``medscope train``'s) from ``schema`` (default: the
    run config), ``--config`` and ``--set``; ``default_of(key)`` is the default the help shows
    (default: the schema's)."""
    from medscope.config import describe_field

    p.add_argument("--config", type=Path,
                   help="YAML recipe: a file or the name of a shipped one (e.g. demo)")
    for flag, (key, extra) in (options or TRAIN_OPTIONS).items():
        doc = describe_field(key, schema)
        kwargs: dict[str, Any] = {"dest": dest(key), "default": None}
        if extra.get("action", "append") == "append":
            kwargs["type"] = doc.type
            if doc.choices:
                kwargs["choices"] = doc.choices
        shown = default_of(key) if default_of else doc.default
        default = ("" if shown is None or "action" in extra or not isinstance(
            shown, (int, float, str, Path)) else f" (default {shown})")
        p.add_argument(flag, help=f"{doc.help}{default} [{key}]", **kwargs, **extra)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any config key, e.g. --set train.weight_decay=0.01 (repeatable)")


def dest(key: str) -> str:
    return "opt_" + key.replace(".", "_")


def explicit_overrides(args: argparse.Namespace, options: Options | None = None
                       ) -> dict[str, Any]:
    """The config keys the user set on the command line: training flags and --set items."""
    from medscope.config import parse_override

    overrides = {key: getattr(args, dest(key)) for key, _ in (options or TRAIN_OPTIONS).values()
                 if getattr(args, dest(key), None) is not None}
    overrides = {k: [str(x) for x in v] if isinstance(v, list) else
                 str(v) if isinstance(v, Path) else v for k, v in overrides.items()}
    overrides.update(parse_override(item) for item in args.set)
    return overrides


def train_config(args: argparse.Namespace) -> Any:
    """The run config: defaults, then --config, then the flags and --set items given."""
    from medscope.config import load_config

    return load_config(args.config, explicit_overrides(args))
