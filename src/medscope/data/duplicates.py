"""Byte-identical images, handled before any split (``data.duplicates``):

- ``group`` (default): every set of byte-identical files becomes one group, merged with the
  groups the data already has (union-find), so no split or fold can put copies on both sides;
- ``drop``: one copy of each set is kept (a train-side copy before a val- or test-side one, so
  the test-side copies of pre-split data go);
- ``keep``: nothing is hashed or changed.

In ``group`` and ``drop`` mode, identical images that carry different labels are listed in a
warning and every copy is dropped: no label of theirs can be trusted. With the data's own
train/test folders, copies that cross into test are counted in one log line, since they make
the test figure optimistic.

Hashing reads the bytes only (no decode); hashes are cached by (path, size, mtime) in a JSON
file next to the decode cache, so a second run (or the next CV fold) re-hashes nothing."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, replace
from pathlib import Path

from medscope.data.info import sample_digest
from medscope.data.sources import DataSource, Sample
from medscope.run import atomic_write_json

log = logging.getLogger("medscope")

HASH_CACHE = "content_hashes.json"
_SPLIT_ORDER = {"train": 0, "val": 1, "test": 2, None: 0}


@dataclass
class DuplicateReport:
    """What ``handle_duplicates`` found and did, for logs and reports."""

    groups: int = 0  # sets of byte-identical images (2+ copies) with one label
    copies: int = 0  # images beyond the first of each such set
    conflicts: list[list[str]] | None = None  # sample ids of each set with different labels
    dropped: int = 0  # images removed (conflicts, and extra copies with ``drop``)
    test_leaks: int = 0  # test images with a copy in train/val (pre-split data)
    # Whether the data's own train/test folders were used: a resume must scan the same way.
    given_splits: bool = True


def handle_duplicates(source: DataSource, mode: str = "group", cache_dir: Path | None = None,
                      *, given_splits: bool = True) -> tuple[DataSource, DuplicateReport]:
    """``source`` with byte-identical images grouped or dropped as ``mode`` says.
    ``given_splits`` False: the data's own train/test folders are not used (a split file, CV),
    so copies across them are not a leak."""
    report = DuplicateReport(conflicts=[], given_splits=given_splits)
    if mode == "keep" or not source.samples:
        return source, report
    hashes = sample_hashes(source.samples, cache_dir)
    sets = _identical_sets(hashes)
    conflicting = [idx for idx in sets if len({_label_key(source.samples[i]) for i in idx}) > 1]
    report.conflicts = [[source.sample_id(source.samples[i]) for i in idx] for idx in conflicting]
    drop = {i for idx in conflicting for i in idx}
    clean = [idx for idx in sets if not drop & set(idx)]
    report.groups = len(clean)
    report.copies = sum(len(idx) - 1 for idx in clean)
    if given_splits:
        report.test_leaks = sum(_test_side_copies(source.samples, idx) for idx in clean)
    if mode == "drop":
        drop |= {i for idx in clean for i in _extra_copies(source.samples, idx, given_splits)}
    samples = merged_groups(source.samples, hashes)
    kept = [s for i, s in enumerate(samples) if i not in drop]
    report.dropped = len(source.samples) - len(kept)
    _log_report(report, mode)
    return replace(source, samples=kept), report


def merged_groups(samples: list[Sample], hashes: list[str | None]) -> list[Sample]:
    """The samples with one shared group per connected set of (existing group, content hash):
    the smallest existing group name of the set, else ``dup:<hash prefix>``. Samples that share
    nothing keep their group (or none)."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def union(a: str, b: str) -> None:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)

    # 'g:' sorts before 'h:', so a set's root is its smallest existing group when it has one.
    nodes = [_nodes(s, h) for s, h in zip(samples, hashes, strict=True)]
    for ns in nodes:
        for other in ns[1:]:
            union(ns[0], other)
    sizes: dict[str, int] = {}
    for ns in nodes:
        if ns:
            sizes[find(ns[0])] = sizes.get(find(ns[0]), 0) + 1
    out = []
    for s, ns in zip(samples, nodes, strict=True):
        root = find(ns[0]) if ns else None
        if root is None or (sizes[root] == 1 and s.group is None):
            out.append(s)
        else:
            out.append(replace(s, group=root[2:] if root.startswith("g:") else f"dup:{root[2:14]}"))
    return out


def sample_hashes(samples: list[Sample], cache_dir: Path | None = None) -> list[str | None]:
    """Content hash of each sample's bytes (None when unreadable: decoding reports it later)."""
    cache_path = Path(cache_dir) / HASH_CACHE if cache_dir is not None else None
    cache = _read_cache(cache_path)
    hashes, changed = [], False
    for s in samples:
        key, stamp = _cache_key(s)
        hit = cache.get(key)
        if hit is not None and stamp is not None and hit[:2] == stamp:
            hashes.append(hit[2])
            continue
        digest = sample_digest(s)
        hashes.append(digest)
        if digest is not None and stamp is not None:
            cache[key] = [*stamp, digest]
            changed = True
    if changed and cache_path is not None:
        try:
            cache_path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_json(cache_path, cache)
        except OSError as exc:  # a read-only cache only costs time
            log.debug("could not write %s: %s", cache_path, exc)
    return hashes


def _cache_key(sample: Sample) -> tuple[str, list[int] | None]:
    path = os.path.abspath(sample.path)
    if sample.in_array:  # array rows hash fast; caching each would bloat the file
        return path, None
    try:
        st = os.stat(path)
    except OSError:
        return path, None
    return path, [st.st_size, st.st_mtime_ns]


def _read_cache(path: Path | None) -> dict[str, list]:
    if path is None:
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def _identical_sets(hashes: list[str | None]) -> list[list[int]]:
    by_hash: dict[str, list[int]] = {}
    for i, h in enumerate(hashes):
        if h is not None:
            by_hash.setdefault(h, []).append(i)
    return [idx for idx in by_hash.values() if len(idx) > 1]


def _nodes(sample: Sample, digest: str | None) -> list[str]:
    nodes = [f"g:{sample.group}"] if sample.group is not None else []
    return nodes + ([f"h:{digest}"] if digest is not None else [])


def _label_key(sample: Sample) -> object:
    return sample.labels if sample.labels is not None else sample.label


def _test_side_copies(samples: list[Sample], idx: list[int]) -> int:
    splits = [samples[i].split for i in idx]
    if "test" not in splits or not {"train", "val"} & set(splits):
        return 0
    return splits.count("test")


def _extra_copies(samples: list[Sample], idx: list[int], given_splits: bool) -> list[int]:
    """All but one copy: the one kept is the first train-side copy (then val, then test)."""
    keep = min(idx, key=lambda i: (_SPLIT_ORDER.get(samples[i].split, 0) if given_splits else 0,
                                   i))
    return [i for i in idx if i != keep]


def _log_report(report: DuplicateReport, mode: str) -> None:
    if report.conflicts:
        shown = "; ".join(" = ".join(ids) for ids in report.conflicts[:3])
        more = f" (and {len(report.conflicts) - 3} more)" if len(report.conflicts) > 3 else ""
        log.warning("%d set(s) of byte-identical images carry different labels; every copy is "
                    "dropped: %s%s", len(report.conflicts), shown, more)
    if report.copies and mode == "group":
        log.info("%d byte-identical cop(ies) in %d set(s): each set is one group in every split",
                 report.copies, report.groups)
    if report.test_leaks and mode == "group":
        log.warning("%d test image(s) have a byte-identical copy in the given train/val split: "
                    "the test figure is optimistic (--set data.duplicates=drop removes them)",
                    report.test_leaks)
    elif report.dropped and mode == "drop":
        log.info("duplicates=drop: %d image(s) removed (%d test-side cop(ies) of train/val "
                 "images)", report.dropped, report.test_leaks)
