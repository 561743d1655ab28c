"""Samples the user chose to leave out (duplicates, leaks, wrong labels found by ``medscope
audit``): a text file of sample ids, one per line, as written in a run's ``splits.csv``."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

from medscope.data.sources import DataSource
from medscope.errors import MedscopeError

log = logging.getLogger("medscope")


def read_exclude(path: Path | str) -> set[str]:
    """Sample ids in ``path``: one per line; blank lines, ``#`` lines and `` # …`` tails ignored."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise MedscopeError(f"{path}: exclude file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise MedscopeError(f"{path}: cannot read the exclude file ({exc})") from None
    ids = set()
    for line in text.splitlines():
        # ' #' and not '#' so that a file name containing '#' still works.
        entry = line.split(" #", 1)[0].strip()
        if entry and not entry.startswith("#"):
            ids.add(entry)
    return ids


def drop_excluded(source: DataSource, ids: set[str]) -> tuple[DataSource, int]:
    """``source`` without the samples named in ``ids``, and how many were dropped.

    An id that matches no sample is logged as a warning (a typo, or a file already removed).
    """
    kept, seen = [], set()
    for sample in source.samples:
        name = source.sample_id(sample)
        if name in ids:
            seen.add(name)
        else:
            kept.append(sample)
    unknown = sorted(ids - seen)
    if unknown:
        log.warning("exclude: %d id(s) match no sample, e.g. %s", len(unknown),
                    ", ".join(unknown[:3]))
    return replace(source, samples=kept), len(source.samples) - len(kept)
