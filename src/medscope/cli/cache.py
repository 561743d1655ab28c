"""``medscope cache info|clear``: the decoded-image cache."""

from __future__ import annotations

import argparse
from datetime import datetime
from pathlib import Path
from typing import Any

from medscope.cli._common import add_command, quiet


def add_parser(subparsers: Any) -> None:
    p = add_command(subparsers, "cache", "the decoded-image cache: size, clear")
    cache_sub = p.add_subparsers(title="cache commands", required=True, metavar="CACHE_COMMAND")
    for name, helptext, func in (("info", "list the cached datasets, largest use first", info),
                                 ("clear", "delete every cached dataset", clear)):
        q = cache_sub.add_parser(name, parents=[quiet()], help=helptext)
        q.add_argument("--cache-dir", type=Path, default=None,
                       help="default $MEDSCOPE_CACHE or ~/.cache/medscope")
        q.set_defaults(func=func)


def info(args: argparse.Namespace) -> None:
    from medscope import api

    where, entries = api.cache_info(args.cache_dir)
    print(f"{where}: {len(entries)} dataset(s), {sum(e.bytes for e in entries) / 2**20:.1f} MB")
    for e in entries:
        used = datetime.fromtimestamp(e.last_used).strftime("%Y-%m-%d %H:%M")
        print(f"  {e.key[:12]}  {e.bytes / 2**20:9.1f} MB  {e.n or '?':>6} images  "
              f"{e.size or '?'}px  last used {used}  {e.first}")


def clear(args: argparse.Namespace) -> None:
    from medscope import api

    where, removed = api.cache_clear(args.cache_dir)
    print(f"removed {len(removed)} cached dataset(s), "
          f"{sum(e.bytes for e in removed) / 2**20:.1f} MB, from {where}")
