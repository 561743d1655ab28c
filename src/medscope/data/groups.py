"""Groups named by the file names (``data.group_pattern``).

Patches cut from one micrograph, or images of one patient, must not sit on both sides of a
split: the model would be tested on views of what it trained on. Many sets say where an image
comes from only in its name (DeFungi's ``H1_100a_3.jpg`` is patch 3 of micrograph ``H1_100a``),
so a regular expression over the path turns that into the ``group`` splits and folds respect.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from dataclasses import replace

from medscope.config import check_group_pattern
from medscope.data.sources import DataSource, Sample
from medscope.errors import MedscopeError

log = logging.getLogger("medscope")


def pattern_groups(source: DataSource, pattern: str) -> DataSource:
    """``source`` with each sample's group set to what ``pattern`` matches in its sample id (the
    first capture group when the pattern has one). Samples it does not match keep no group."""
    try:  # the same rule as data.group_pattern and the API's group_pattern options
        rx = re.compile(check_group_pattern(pattern))
    except ValueError as exc:
        raise MedscopeError(f"--group-pattern {pattern!r}: {exc}") from None
    if any(s.group is not None for s in source.samples):
        raise MedscopeError(f"{source.root}: data.group_pattern given, but the data already "
                            "names groups (a group column or patches.csv); use one or the other")
    ids = [source.sample_id(s) for s in source.samples]
    keys = [_key(rx, i) for i in ids]
    unmatched = [i for i, k in zip(ids, keys, strict=True) if k is None]
    if ids and len(unmatched) == len(ids):
        raise MedscopeError(f"{source.root}: data.group_pattern {pattern!r} matches none of the "
                            f"{len(ids)} image paths (e.g. {ids[0]!r})")
    if unmatched:
        log.warning("data.group_pattern %r does not match %d of %d image paths (e.g. %r): those "
                    "images are each their own group", pattern, len(unmatched), len(ids),
                    unmatched[0])
    sizes = Counter(k for k in keys if k is not None)
    if sizes and max(sizes.values()) == 1:
        log.warning("data.group_pattern %r gives every image a group of its own: nothing is "
                    "grouped (does the pattern cut off the image's own number?)", pattern)
    elif sizes:
        log.info("data.group_pattern: %d image(s) in %d group(s), largest %d",
                 sum(sizes.values()), len(sizes), max(sizes.values()))
    return replace(source, samples=[s if k is None else replace(s, group=k)
                                    for s, k in zip(source.samples, keys, strict=True)])


def matches_any(source: DataSource, pattern: str) -> bool:
    """Whether ``pattern`` (a valid one) matches any of ``source``'s image paths."""
    rx = re.compile(pattern)
    return any(rx.search(source.sample_id(s)) for s in source.samples)


def _key(rx: re.Pattern[str], sample_id: str) -> str | None:
    m = rx.search(sample_id)
    if m is None:
        return None
    return m.group(1) if rx.groups else m.group(0)


def groups_across_splits(samples: list[Sample]) -> dict[str, set[str]]:
    """Groups whose members lie in more than one of the data's own splits -> those splits."""
    seen: dict[str, set[str]] = {}
    for s in samples:
        if s.group is not None and s.split is not None:
            seen.setdefault(s.group, set()).add(s.split)
    return {g: splits for g, splits in seen.items() if len(splits) > 1}


def warn_groups_across_given_splits(samples: list[Sample]) -> None:
    """One warning when groups span the data's own splits (patches of one micrograph in both
    the given train and test folders)."""
    crossing = groups_across_splits(samples)
    if not crossing:
        return
    in_test = sum(1 for s in samples if s.group in crossing and s.split == "test")
    log.warning("%d group(s) of data.group_pattern span the data's own splits (%d test "
                "image(s) share a group with training or validation images): the test figure "
                "is optimistic; --resplit or `medscope cv` split by group", len(crossing),
                in_test)
