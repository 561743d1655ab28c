"""Decode once: every image is decoded and resized a single time into one uint8 array
(N x S x S x C) that all epochs read from; augmentation then runs on tensors.

With a cache directory the array is a memory-mapped ``.npy`` on disk, reused by later runs:

- ``<dataset key>.npy``: the pixels, one row per sample (zeros for a bad file);
- ``<dataset key>.json``: per sample its stamp (file size and mtime_ns), the hash of its bytes
  and, for a bad file, the reason. The dataset key hashes the sample list, target size,
  channels and the decoder version (``medscope.data.io``'s source and Pillow's version), so a
  changed file keeps its dataset and only that row is decoded again, while a changed decoder
  decodes everything anew. A file whose stamp changed but whose bytes did not (a copy without
  ``-p``, a fresh checkout, a re-mounted share) is only hashed, not decoded again.

The JSON is rewritten at every use, so its mtime is the last use: when the cache outgrows
``$MEDSCOPE_CACHE_MAX_GB`` (default 50) the least recently used datasets are removed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from medscope.data import io as image_io
from medscope.data.info import sample_digest
from medscope.data.io import BadImageError, read_array_image, read_image
from medscope.data.sources import Sample, npz_array
from medscope.errors import MedscopeError
from medscope.run import atomic_write_json

log = logging.getLogger(__name__)

CACHE_FORMAT = "medscope-cache/1"


@dataclass
class DecodedImages:
    pixels: np.ndarray  # N x S x S x C uint8, only the good files
    kept: np.ndarray  # indices into the input samples of the rows of ``pixels``
    bad: list[tuple[Path, str]]  # (file, reason)
    cache_file: Path | None = None  # the memmap the pixels came from, if cached


def default_cache_dir() -> Path:
    """``$MEDSCOPE_CACHE``, else ``~/.cache/medscope``."""
    env = os.environ.get("MEDSCOPE_CACHE")
    return Path(env).expanduser() if env else Path("~/.cache/medscope").expanduser()


def decode_images(
    samples: Sequence[Sample],
    size: int,
    in_chans: int,
    *,
    strict: bool = False,
    max_bad_fraction: float = 1.0,
    workers: int = 4,
    progress: bool = True,
    desc: str = "decode",
    cache_dir: Path | str | None = None,
) -> DecodedImages:
    """Decode the samples' images in parallel (PIL releases the GIL) into one array.

    A bad file is skipped and reported unless ``strict``; more than ``max_bad_fraction`` bad
    files stop with an error, since the dataset is then likely not what the user meant.
    With ``cache_dir`` the pixels are read from (and written to) the disk cache.
    """
    if cache_dir is not None and samples:
        pixels, reasons, cache_file = _cached(samples, size, in_chans, Path(cache_dir),
                                              workers, progress, desc)
    else:
        pixels = np.empty((len(samples), size, size, in_chans), dtype=np.uint8)
        reasons = _decode_into(pixels, samples, range(len(samples)), size, in_chans, workers,
                               progress, desc)
        cache_file = None
    bad: list[tuple[Path, str]] = []
    ok = np.ones(len(samples), dtype=bool)
    for i, reason in sorted(reasons.items()):
        where = _where(samples[i])
        if strict:
            raise MedscopeError(f"{where}: {reason}")
        log.warning("skipping %s: %s", where, reason)
        bad.append((Path(where), reason))
        ok[i] = False
    if samples and len(bad) > max_bad_fraction * len(samples):
        raise MedscopeError(
            f"{len(bad)} of {len(samples)} images are unreadable (more than "
            f"{max_bad_fraction:.0%}); first: {bad[0][0]}: {bad[0][1]}"
        )
    kept = np.flatnonzero(ok)
    return DecodedImages(pixels[kept] if bad else pixels, kept, bad, cache_file)


def read_sample(sample: Sample, size: int, in_chans: int) -> np.ndarray:
    """One sample's pixels (a file, or a row of an npz array)."""
    if sample.in_array:
        return read_array_image(npz_array(sample.path, f"{sample.split}_images")[sample.index],
                                size, in_chans)
    return read_image(sample.path, size, in_chans)


def _where(sample: Sample) -> str:
    return f"{sample.path}:{sample.split}[{sample.index}]" if sample.in_array else str(sample.path)


def _decode_into(pixels: np.ndarray, samples: Sequence[Sample], todo: Sequence[int], size: int,
                 in_chans: int, workers: int, progress: bool, desc: str) -> dict[int, str]:
    """Fill ``pixels[i]`` for each ``i`` in ``todo``; returns {i: reason} of the bad ones."""

    def load(i: int) -> tuple[int, str | None]:
        try:
            pixels[i] = read_sample(samples[i], size, in_chans)
            return i, None
        except BadImageError as exc:
            pixels[i] = 0
            return i, str(exc)

    reasons: dict[int, str] = {}
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for i, reason in tqdm(pool.map(load, todo), total=len(todo), desc=desc,
                              disable=not progress, leave=False, unit="img"):
            if reason is not None:
                reasons[i] = reason
    return reasons


# ---------------------------------------------------------------- the disk cache


def sample_stamp(sample: Sample) -> list[int]:
    """(size, mtime_ns) of the file; a missing file stamps as (-1, -1)."""
    try:
        st = sample.path.stat()
    except OSError:
        return [-1, -1]
    return [st.st_size, st.st_mtime_ns]


@cache
def decoder_version() -> str:
    """Changes whenever the image decoding code or Pillow changes."""
    import PIL

    source = Path(image_io.__file__).read_bytes()
    return f"{hashlib.sha256(source).hexdigest()[:12]}-pil{PIL.__version__}"


def dataset_key(samples: Sequence[Sample], size: int, in_chans: int) -> str:
    h = hashlib.sha256(f"{CACHE_FORMAT}|{decoder_version()}|{size}|{in_chans}".encode())
    for s in samples:
        # surrogateescape: a file name that is not UTF-8 hashes as its own bytes.
        line = f"\0{Path(s.path).resolve()}|{s.split}|{s.index}"
        h.update(line.encode("utf-8", "surrogateescape"))
    return h.hexdigest()[:32]


def _cached(samples: Sequence[Sample], size: int, in_chans: int, cache_dir: Path,
            workers: int, progress: bool, desc: str
            ) -> tuple[np.ndarray, dict[int, str], Path]:
    key = dataset_key(samples, size, in_chans)
    npy, meta_path = cache_dir / f"{key}.npy", cache_dir / f"{key}.json"
    stamps = [sample_stamp(s) for s in samples]
    shape = (len(samples), size, size, in_chans)
    meta = _read_meta(meta_path, len(samples))
    pixels = _open_existing(npy, shape) if meta is not None else None
    if pixels is None:
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = npy.with_name(f".{npy.name}.{os.getpid()}.tmp")
        pixels = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
        reasons = _decode_into(pixels, samples, range(len(samples)), size, in_chans, workers,
                               progress, f"{desc} (caching)")
        digests = _digests(samples, range(len(samples)), workers)
        pixels.flush()
        del pixels
        os.replace(tmp, npy)
        log.info("cached %d images in %s", len(samples), npy)
        prune_cache(cache_dir, max_cache_bytes(), keep={key})
    else:
        old_stamps, digests, reasons = meta
        restamped = [i for i, (a, b) in enumerate(zip(stamps, old_stamps, strict=True))
                     if a != b]
        fresh = dict(zip(restamped, _digests(samples, restamped, workers), strict=True))
        changed = [i for i in restamped if fresh[i] is None or fresh[i] != digests[i]]
        for i, digest in fresh.items():
            digests[i] = digest
        if len(changed) < len(restamped):
            log.info("cache %s: %d file(s) with a new mtime but the same bytes kept",
                     npy.name, len(restamped) - len(changed))
        if changed:
            pixels = np.load(npy, mmap_mode="r+")
            for i in changed:
                reasons.pop(i, None)
            reasons |= _decode_into(pixels, samples, changed, size, in_chans, workers,
                                    progress, f"{desc} (updating cache)")
            pixels.flush()
            del pixels
            log.info("cache %s: re-decoded %d changed file(s)", npy.name, len(changed))
    atomic_write_json(meta_path, {"format": CACHE_FORMAT, "size": size, "in_chans": in_chans,
                                  "decoder": decoder_version(), "n": len(samples),
                                  "first": _where(samples[0]), "stamps": stamps,
                                  "digests": digests,
                                  "bad": {str(i): r for i, r in sorted(reasons.items())}})
    return np.load(npy, mmap_mode="r"), reasons, npy


def _read_meta(path: Path, n: int
               ) -> tuple[list[list[int]], list[str | None], dict[int, str]] | None:
    """(stamps, byte hashes, bad-file reasons) of a cache entry; a cache written before the
    hashes were kept gives None for each, so a re-stamped file there is decoded again."""
    try:
        meta = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if meta.get("format") != CACHE_FORMAT or len(meta.get("stamps", [])) != n:
        return None
    digests = meta.get("digests")
    if not isinstance(digests, list) or len(digests) != n:
        digests = [None] * n
    return meta["stamps"], digests, {int(k): v for k, v in meta.get("bad", {}).items()}


def _digests(samples: Sequence[Sample], todo: Sequence[int], workers: int) -> list[str | None]:
    """``sample_digest`` of each sample in ``todo`` (hashlib releases the GIL)."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda i: sample_digest(samples[i]), todo))


def _open_existing(npy: Path, shape: tuple[int, ...]) -> np.ndarray | None:
    try:
        arr = np.load(npy, mmap_mode="r")
    except (OSError, ValueError):
        return None
    return arr if arr.shape == shape and arr.dtype == np.uint8 else None


# ---------------------------------------------------------------- size and clean-up


@dataclass(frozen=True)
class CacheEntry:
    key: str
    bytes: int
    last_used: float  # POSIX time
    n: int | None
    size: int | None
    first: str  # the first image, to say which dataset this is


def max_cache_bytes() -> int:
    return int(float(os.environ.get("MEDSCOPE_CACHE_MAX_GB", "50")) * 2**30)


def cache_entries(cache_dir: Path | str) -> list[CacheEntry]:
    """The cached datasets in ``cache_dir``, most recently used first."""
    cache_dir = Path(cache_dir)
    if not cache_dir.is_dir():
        return []
    entries = []
    for npy in cache_dir.glob("*.npy"):
        meta_path = npy.with_suffix(".json")
        try:
            meta = json.loads(meta_path.read_text())
            last_used = meta_path.stat().st_mtime
        except (OSError, json.JSONDecodeError):
            meta, last_used = {}, npy.stat().st_mtime
        size_bytes = npy.stat().st_size + (meta_path.stat().st_size if meta_path.is_file() else 0)
        entries.append(CacheEntry(npy.stem, size_bytes, last_used, meta.get("n"),
                                  meta.get("size"), meta.get("first", "?")))
    return sorted(entries, key=lambda e: -e.last_used)


def remove_entry(cache_dir: Path | str, key: str) -> None:
    for suffix in (".npy", ".json"):
        (Path(cache_dir) / f"{key}{suffix}").unlink(missing_ok=True)


def prune_cache(cache_dir: Path | str, max_bytes: int, keep: set[str] = frozenset()
                ) -> list[CacheEntry]:
    """Remove least recently used datasets until the cache fits ``max_bytes``."""
    entries = cache_entries(cache_dir)
    total = sum(e.bytes for e in entries)
    removed = []
    for entry in reversed(entries):
        if total <= max_bytes:
            break
        if entry.key in keep:
            continue
        remove_entry(cache_dir, entry.key)
        total -= entry.bytes
        removed.append(entry)
    if removed:
        log.info("cache %s: removed %d least recently used dataset(s) to stay under %.1f GB",
                 cache_dir, len(removed), max_bytes / 2**30)
    return removed


def clear_cache(cache_dir: Path | str) -> list[CacheEntry]:
    """Remove every cached dataset (and stray temporary files of interrupted decodes)."""
    entries = cache_entries(cache_dir)
    for entry in entries:
        remove_entry(cache_dir, entry.key)
    for tmp in Path(cache_dir).glob(".*.tmp") if Path(cache_dir).is_dir() else ():
        tmp.unlink(missing_ok=True)
    # data.duplicates' content hashes live beside the pixels and go with them.
    (Path(cache_dir) / "content_hashes.json").unlink(missing_ok=True)
    return entries
