"""``medscope audit``: duplicates, leaks, label errors and outliers of a dataset."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from medscope.cli._common import Flags, add_command, add_options, option_values
from medscope.options import AuditOptions

FLAGS: Flags = {
    "--phash-distance": ("phash_distance", {}),
    "--write-exclude": ("write_exclude", {"metavar": "FILE"}),
    "--group-pattern": ("group_pattern", {"metavar": "REGEX"}),
    "--workers": ("workers", {}),
}


def add_parser(subparsers: Any) -> None:
    p = add_command(subparsers, "audit",
                    "duplicates, leaks, label errors and outliers of a dataset")
    p.add_argument("data", type=Path, help="image folder, CSV or .npz")
    p.add_argument("--run", type=Path, default=None,
                   help="a `medscope cv` directory (label errors from out-of-fold "
                        "probabilities) or a run directory (its splits and test predictions)")
    p.add_argument("--out", type=Path, default=Path("audit"),
                   help="folder for audit.html and the audit_*.csv files (default ./audit)")
    add_options(p, AuditOptions, FLAGS)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from medscope import api

    done = api.audit(args.data, run=args.run, out=args.out, progress=args.progress,
                     **option_values(args, FLAGS))
    s = done.summary
    print(f"{s['images']} images: {s['exact_groups']} exact and {s['near_groups']} near-duplicate "
          f"group(s), {s['leak_groups']} leak(s), {s['conflict_groups']} conflicting label(s), "
          f"{s['label_issues']} suspected label error(s), {s['outliers']} outlier(s); "
          f"{s['unreadable']} unreadable -> {done.page}")
    if s["source_groups"]:
        print(f"source groups: {s['source_leak_groups']} of {s['source_groups']} span splits "
              f"({s['source_leak_test_images']} test image(s)), "
              f"{s['source_conflict_groups']} with conflicting labels")
    if done.excluded is not None:
        print(f"wrote {done.excluded} suspect(s) to {args.write_exclude}: review and edit "
              "before use")
