"""``medscope data info``: what a dataset holds before anyone trains on it: counts per class
and split, image sizes and modes, byte-identical duplicates and unreadable files."""

from __future__ import annotations

import hashlib
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from medscope.data.groups import groups_across_splits, pattern_groups
from medscope.data.io import BadImageError, is_dicom, read_image
from medscope.data.sources import DataSource, Sample, load_source, npz_array


@dataclass
class DataInfo:
    source: DataSource
    counts: dict[str, dict[str, int]]  # split ('all' when unsplit) -> class -> images
    sizes: Counter = field(default_factory=Counter)  # (width, height) -> images
    modes: Counter = field(default_factory=Counter)
    duplicates: list[list[str]] = field(default_factory=list)  # groups of identical content
    bad: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)

    @property
    def n(self) -> int:
        return len(self.source.samples)


def data_info(path: Path | str, format: str = "auto", *, workers: int = 4,
              progress: bool = False, group_pattern: str | None = None) -> DataInfo:
    """Reads every image once (JPEGs at reduced scale: enough to find a truncated file).
    ``group_pattern``: groups from the file names, as ``data.group_pattern``."""
    source = load_source(path, format)
    if group_pattern is not None:
        source = pattern_groups(source, group_pattern)
    info = DataInfo(source, split_counts(source))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(tqdm(pool.map(_inspect, source.samples), total=len(source.samples),
                            disable=not progress, desc="inspect", unit="img", leave=False))
    by_hash: dict[str, list[str]] = {}
    for sample, (digest, size, mode, reason) in zip(source.samples, results, strict=True):
        name = source.sample_id(sample)
        if reason is not None:
            info.bad.append((name, reason))
            continue
        info.sizes[size] += 1
        info.modes[mode] += 1
        by_hash.setdefault(digest, []).append(name)
    info.duplicates = sorted((names for names in by_hash.values() if len(names) > 1),
                             key=lambda g: g[0])
    return info


def split_counts(source: DataSource) -> dict[str, dict[str, int]]:
    splits = source.given_splits()
    keys = ["all"] if splits is None else [s for s in ("train", "val", "test") if s in splits]
    targets = source.targets()
    out = {}
    for key in keys:
        rows = targets if splits is None else targets[splits == key]
        per = (rows.sum(0) if source.multilabel
               else np.bincount(rows, minlength=len(source.classes)))
        out[key] = {c: int(n) for c, n in zip(source.classes, per, strict=True)}
    return out


def _inspect(sample: Sample) -> tuple[str, tuple[int, int], str, str | None]:
    """(content hash, (w, h), mode, bad reason or None)."""
    if sample.in_array:
        arr = np.asarray(npz_array(sample.path, f"{sample.split}_images")[sample.index])
        mode = "L" if arr.ndim == 2 or arr.shape[-1] == 1 else "RGB"
        return content_hash(arr.tobytes()), (arr.shape[1], arr.shape[0]), mode, None
    try:
        data = sample.path.read_bytes()
    except OSError:
        return "", (0, 0), "", "file not found"
    try:
        read_image(sample.path, 32, 3)  # full decode (reduced scale for JPEG)
        if is_dicom(sample.path):
            size, mode = dicom_size(sample.path)
        else:
            with Image.open(sample.path) as img:
                size, mode = img.size, img.mode
    except BadImageError as exc:
        return "", (0, 0), "", str(exc)
    return content_hash(data), size, mode, None


def content_hash(data: bytes) -> str:
    """Equal hashes = byte-identical content (what ``data info`` and ``audit`` call exact
    duplicates)."""
    return hashlib.sha1(data).hexdigest()


def sample_digest(sample: Sample) -> str | None:
    """``content_hash`` of a sample's bytes (its file, or its row of an npz array); None when
    the file cannot be read."""
    if sample.in_array:
        row = npz_array(sample.path, f"{sample.split}_images")[sample.index]
        return content_hash(row.tobytes())
    try:
        return content_hash(Path(sample.path).read_bytes())
    except OSError:
        return None


def dicom_size(path: Path) -> tuple[tuple[int, int], str]:
    import pydicom

    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return (int(ds.Columns), int(ds.Rows)), f"DICOM {ds.get('PhotometricInterpretation', '')}"


def format_info(info: DataInfo, max_list: int = 5) -> str:
    """The report as text, one section per line group."""
    src = info.source
    lines = [f"{src.root if src.kind != 'npz' else src.samples[0].path}: {src.kind}"
             f"{', multi-label' if src.multilabel else ''}, {info.n} images, "
             f"{len(src.classes)} classes"]
    splits = list(info.counts)
    lines.append("class".ljust(24) + "".join(s.rjust(9) for s in splits)
                 + ("total".rjust(9) if len(splits) > 1 else ""))
    for c in src.classes:
        row = [info.counts[s][c] for s in splits]
        lines.append(c[:23].ljust(24) + "".join(str(n).rjust(9) for n in row)
                     + (str(sum(row)).rjust(9) if len(splits) > 1 else ""))
    groups = {s.group for s in src.samples if s.group is not None}
    if groups:
        lines.append(f"groups: {len(groups)} (kept whole in every split)")
        crossing = groups_across_splits(src.samples)
        if crossing:
            lines.append(f"  {len(crossing)} group(s) span the given splits (a leak)")
    lines.append("sizes: " + ", ".join(f"{w}x{h} {n}" for (w, h), n in
                                       info.sizes.most_common(max_list))
                 + (f" (+{len(info.sizes) - max_list} more)" if len(info.sizes) > max_list
                    else ""))
    lines.append("modes: " + ", ".join(f"{m} {n}" for m, n in info.modes.most_common()))
    extra = sum(len(g) - 1 for g in info.duplicates)
    lines.append(f"duplicates: {len(info.duplicates)} group(s) of identical content "
                 f"({extra} redundant image(s))")
    for g in info.duplicates[:max_list]:
        lines.append("  " + " = ".join(g))
    if splits != ["all"]:
        cross = sum(1 for g in info.duplicates if len({_split_of(src, x) for x in g}) > 1)
        if cross:
            lines.append(f"  {cross} duplicate group(s) cross the given splits (a leak)")
    lines.append(f"bad files: {len(info.bad)}")
    lines += [f"  {f}: {r}" for f, r in info.bad[:max_list]]
    return "\n".join(lines)


def _split_of(src: DataSource, name: str) -> str:
    if src.kind == "npz":
        return name.split("[")[0]
    return name.split("/")[0] if src.kind == "presplit" else ""
