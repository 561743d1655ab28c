"""Cut large micrographs into fixed-size patches and drop artifact patches: the preprocessing of
the fungi study (500x500 patches, removal of dark borders, empty areas and noise).

Each patch is measured three ways:
- ``dark_fraction``: share of pixels darker than ``dark_level`` (field stop, slide edge);
- ``tissue_fraction``: share of pixels that differ from the slide's background colour by more
  than ``tissue_delta`` (the background is estimated once per micrograph, from its bright
  pixels, so a stained organism counts whatever the stain);
- ``neighbour_corr``: correlation of horizontally adjacent pixels. Real structure is smooth at
  pixel scale (close to 1); sensor noise or a corrupted region is not (close to 0).
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from medscope.data.io import BadImageError, is_image_file, open_image
from medscope.data.sources import PATCH_MANIFEST
from medscope.errors import MedscopeError
from medscope.parallel import process_map
from medscope.run import atomic_write_csv

log = logging.getLogger("medscope")

MANIFEST_COLUMNS = ["patch", "source", "class", "x", "y", "size", "kept", "reason",
                    "dark_fraction", "tissue_fraction", "neighbour_corr"]


_MEAN3 = np.full(3, 1 / 3, dtype=np.float32)
_ONES3 = np.ones(3, dtype=np.float32)


@dataclass(frozen=True)
class PatchFilter:
    """Thresholds for artifact removal; every one can be set from the CLI."""

    dark_level: int = 40  # luminance (0-255) below which a pixel is border, not specimen
    max_dark: float = 0.4  # drop when a larger share of the patch is dark
    tissue_delta: float = 30.0  # colour distance from background that counts as specimen
    min_tissue: float = 0.015  # drop when a smaller share of the patch is specimen
    noise_corr: float = 0.35  # neighbour correlation below which a patch is noise...
    noise_std: float = 25.0  # ...if it also varies this much (a flat patch is merely empty)


@dataclass(frozen=True)
class PatchStats:
    dark_fraction: float
    tissue_fraction: float
    neighbour_corr: float
    std: float


def background_colour(img: np.ndarray, dark_level: int) -> np.ndarray:
    """The slide's empty-field colour: the median of its brightest half of non-dark pixels."""
    step = max(1, int(np.sqrt(img.shape[0] * img.shape[1] / 250_000)))  # subsample big ones
    sub = img[::step, ::step].reshape(-1, 3).astype(np.float32)
    sub_lum = sub @ _MEAN3
    valid = sub_lum > dark_level
    if not valid.any():
        return np.full(3, 255.0)
    bright = sub[valid][sub_lum[valid] >= np.median(sub_lum[valid])]
    return np.median(bright, axis=0).astype(np.float64)


def patch_stats(patch: np.ndarray, background: np.ndarray, f: PatchFilter) -> PatchStats:
    # Channel sums as matrix products: numpy reduces over a last axis of 3 slowly, and this
    # runs on every patch of every slide.
    p = patch.astype(np.float32)
    lum = p @ _MEAN3
    dark = lum < f.dark_level
    diff = p - background.astype(np.float32)
    tissue = ((diff * diff) @ _ONES3 > f.tissue_delta ** 2) & ~dark
    a = lum[:, :-1] - lum[:, :-1].mean()
    b = lum[:, 1:] - lum[:, 1:].mean()
    var_a, var_b = float((a * a).mean()), float((b * b).mean())
    corr = float((a * b).mean()) / np.sqrt(var_a * var_b) if var_a * var_b > 1e-12 else 1.0
    return PatchStats(float(dark.mean()), float(tissue.mean()), float(corr), float(lum.std()))


def verdict(stats: PatchStats, f: PatchFilter) -> str:
    """'ok', or why the patch is an artifact."""
    if stats.dark_fraction > f.max_dark:
        return "dark_border"
    if stats.neighbour_corr < f.noise_corr and stats.std > f.noise_std:
        return "noise"
    if stats.tissue_fraction < f.min_tissue:
        return "empty"
    return "ok"


def tile_origins(width: int, height: int, size: int, stride: int) -> Iterator[tuple[int, int]]:
    """Top-left corners of every whole patch (partial tiles at the edges are left out)."""
    for y in range(0, height - size + 1, stride):
        for x in range(0, width - size + 1, stride):
            yield x, y


def extract_patches(
    src: Path | str,
    dst: Path | str,
    size: int = 500,
    stride: int | None = None,
    flt: PatchFilter | None = None,
    *,
    save_dropped: bool = False,
    quality: int = 95,
    workers: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, int]:
    """Patch every image of ``src/<class>/...`` into ``dst/<class>/``; write ``patches.csv``.

    Dropped patches are only measured, unless ``save_dropped`` writes them to
    ``dst/_dropped/<reason>/`` for inspection. Returns the count per reason.
    """
    src, dst = Path(src), Path(dst)
    flt = flt or PatchFilter()
    stride = stride or size
    if size < 8 or stride < 1:
        raise MedscopeError(f"patch size must be >= 8 and stride >= 1 (got {size}, {stride})")
    jobs = _source_images(src)
    if (dst / PATCH_MANIFEST).exists() and not overwrite:
        raise MedscopeError(f"{dst}: already holds patches ({PATCH_MANIFEST}); choose another "
                            "destination or pass --overwrite")
    earlier = _manifest_patches(dst)
    dst.mkdir(parents=True, exist_ok=True)
    args = [(src, dst, rel, cls, size, stride, flt, save_dropped, quality) for rel, cls in jobs]
    rows: list[list] = []
    for result in tqdm(process_map(_patch_one, args, workers), total=len(args),
                       desc="patches", disable=not progress, unit="image"):
        rows += result
    atomic_write_csv(dst / PATCH_MANIFEST, MANIFEST_COLUMNS, rows)
    # Patches of the earlier run that the new manifest does not list would have no group, so
    # patches of one slide could land in train and test: remove them (only files we made).
    stale = earlier - {row[0] for row in rows if row[0]}
    for rel in stale:
        (dst / rel).unlink(missing_ok=True)
    if stale:
        log.info("removed %d patches of the earlier run that the new manifest does not list",
                 len(stale))
    counts: dict[str, int] = {}
    for row in rows:
        counts[row[7]] = counts.get(row[7], 0) + 1
    return counts


def _manifest_patches(dst: Path) -> set[str]:
    """Every file (kept or saved-dropped) an existing manifest in ``dst`` lists."""
    manifest = dst / PATCH_MANIFEST
    if not manifest.is_file():
        return set()
    with manifest.open(newline="") as fh:
        return {row["patch"] for row in csv.DictReader(fh) if row.get("patch")}


def _source_images(src: Path) -> list[tuple[str, str]]:
    if not src.is_dir():
        raise MedscopeError(f"{src}: source directory not found")
    classes = sorted(p.name for p in src.iterdir()
                     if p.is_dir() and not p.name.startswith((".", "_")))
    if not classes:
        raise MedscopeError(f"{src}: no class folders (expected {src}/<class>/<image>)")
    jobs = [(p.relative_to(src).as_posix(), cls) for cls in classes
            for p in sorted((src / cls).rglob("*")) if p.is_file() and is_image_file(p)]
    if not jobs:
        raise MedscopeError(f"{src}: no images found in its class folders")
    return jobs


def _patch_one(args) -> list[list]:
    src, dst, rel, cls, size, stride, flt, save_dropped, quality = args
    try:
        img = np.asarray(open_image(src / rel).convert("RGB"))
    except BadImageError as exc:
        return [["", rel, cls, "", "", size, 0, f"unreadable: {exc}", "", "", ""]]
    height, width = img.shape[:2]
    if width < size or height < size:
        return [["", rel, cls, "", "", size, 0, f"smaller than {size}px ({width}x{height})",
                 "", "", ""]]
    background = background_colour(img, flt.dark_level)
    stem = Path(rel).with_suffix("").as_posix().replace("/", "__")
    rows = []
    for x, y in tile_origins(width, height, size, stride):
        patch = img[y:y + size, x:x + size]
        stats = patch_stats(patch, background, flt)
        reason = verdict(stats, flt)
        name = f"{stem}_x{x}_y{y}.jpg"
        out = None
        if reason == "ok":
            out = Path(cls) / name
        elif save_dropped:
            out = Path("_dropped") / reason / cls / name
        if out is not None:
            (dst / out).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(patch).save(dst / out, quality=quality)
        s = asdict(stats)
        rows.append([out.as_posix() if out else "", rel, cls, x, y, size, int(reason == "ok"),
                     reason, f"{s['dark_fraction']:.4f}", f"{s['tissue_fraction']:.4f}",
                     f"{s['neighbour_corr']:.4f}"])
    return rows
