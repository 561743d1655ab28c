"""``medscope patches``: cut micrographs into patches, dropping artifact patches."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from medscope.cli._common import add_command

# The artifact thresholds are fields of medscope.data.patches.PatchFilter, whose defaults
# apply when a flag is not given (hence default None here).
THRESHOLDS = {
    "--dark-level": ("dark_level", int, "luminance (0-255) below which a pixel is dark"),
    "--max-dark": ("max_dark", float, "max share of dark pixels"),
    "--tissue-delta": ("tissue_delta", float,
                       "colour distance from background that counts as specimen"),
    "--min-tissue": ("min_tissue", float, "min share of specimen"),
    "--noise-corr": ("noise_corr", float,
                     "neighbour correlation below which a varied patch is noise"),
}


def add_parser(subparsers: Any) -> None:
    p = add_command(subparsers, "patches",
                    "cut micrographs into patches, dropping artifact patches")
    p.add_argument("src", type=Path, help="folder with one sub-folder of micrographs per class")
    p.add_argument("dst", type=Path, help="folder for the patches and patches.csv")
    p.add_argument("--size", type=int, default=500, help="patch side in pixels (default 500)")
    p.add_argument("--stride", type=int, default=None, help="step between patches (default size)")
    for flag, (dest, kind, text) in THRESHOLDS.items():
        p.add_argument(flag, dest=dest, type=kind, default=None,
                       help=f"{text} (default: medscope.data.patches.PatchFilter's)")
    p.add_argument("--save-dropped", action="store_true",
                   help="also write dropped patches to DST/_dropped/<reason>/")
    p.add_argument("--overwrite", action="store_true", help="replace an existing patches.csv")
    p.add_argument("--workers", type=int, default=None, help="processes (default: CPU count)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from medscope import api
    from medscope.workflows.demo import dropped_summary

    given = {dest: getattr(args, dest) for dest, _, _ in THRESHOLDS.values()}
    counts = api.patches(args.src, args.dst, args.size, args.stride,
                         save_dropped=args.save_dropped, overwrite=args.overwrite,
                         workers=args.workers, progress=args.progress,
                         **{k: v for k, v in given.items() if v is not None})
    print(f"kept {counts.get('ok', 0)} patches in {args.dst} (dropped: "
          f"{dropped_summary(counts)}); manifest {args.dst / 'patches.csv'}")
