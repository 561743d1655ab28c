"""The scale of a model's training images, recorded once in the checkpoint metadata so that
every consumer (predict, explain, serve, the slide path) cuts a large image into tiles that look
like what the model was trained on.

- Data made by ``medscope patches``: ``patches.csv`` says each patch's size in source pixels and
  its position; the stride is the smallest step between two patches of one micrograph.
- Other data: the typical (median) side of the training images, read from their headers.
- Microns per pixel when the user states it (``data.mpp``, or an ``mpp`` column of a CSV).

The tiling rule that reads it lives in ``medscope.slides`` (docs/diagnosis.md).
"""

from __future__ import annotations

import csv
import statistics
from collections.abc import Sequence
from pathlib import Path

from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from medscope.data.sources import PATCH_MANIFEST, Sample
from medscope.run import open_run_csv

HEADER_SAMPLE = 200  # image headers read for the typical size: enough for a median


class TrainingScale(BaseModel):
    """What one model input covers in the source image, in source pixels (and microns)."""

    model_config = ConfigDict(extra="allow")

    tile_px: int = Field(gt=0)  # side of the region one model input was cut from
    stride_px: int | None = Field(None, gt=0)  # step between patches (patches.csv only)
    source_px: int | None = Field(None, gt=0)  # typical side of a whole source image
    mpp: float | None = Field(None, gt=0)  # microns per pixel of the source, when stated
    origin: str  # "patches.csv" or "image sizes"


def training_scale(root: Path | None, samples: Sequence[Sample],
                   mpp: float | None = None) -> TrainingScale | None:
    """The scale of ``samples`` (the training split): from ``root/patches.csv`` when the data
    was cut by ``medscope patches``, else the median side of their images; None for array data
    (MedMNIST npz) whose samples have no files."""
    manifest = Path(root) / PATCH_MANIFEST if root is not None else None
    if manifest is not None and manifest.is_file():
        scale = _manifest_scale(manifest)
        if scale is not None:
            return scale.model_copy(update={"mpp": mpp})
    side = _median_side(samples)
    if side is None:
        return None
    return TrainingScale(tile_px=side, source_px=side, mpp=mpp, origin="image sizes")


def _manifest_scale(manifest: Path) -> TrainingScale | None:
    with open_run_csv(manifest) as fh:
        rows = [r for r in csv.DictReader(fh) if (r.get("x") or "").isdigit()]
    sizes = [int(r["size"]) for r in rows if r.get("kept") == "1" and r["size"].isdigit()]
    if not sizes:
        return None
    tile = statistics.mode(sizes)
    return TrainingScale(tile_px=tile, stride_px=_stride(rows, tile), origin="patches.csv",
                         source_px=_source_side(rows, tile))


def _stride(rows: list[dict[str, str]], tile: int) -> int:
    """The smallest positive step between patch origins of one source (all patches, kept or
    not, share the grid); the tile size when each source gave one patch per row/column."""
    xs: dict[str, set[int]] = {}
    for r in rows:
        if (r.get("x") or "").isdigit():
            xs.setdefault(r.get("source", ""), set()).add(int(r["x"]))
    steps = [b - a for v in xs.values() for a, b in zip(sorted(v), sorted(v)[1:], strict=False)]
    return min(steps) if steps else tile


def _source_side(rows: list[dict[str, str]], tile: int) -> int:
    """The median over sources of the smaller extent the patches cover (a lower bound of the
    source's side: partial edge tiles are never cut)."""
    extent: dict[str, list[int]] = {}
    for r in rows:
        if (r.get("x") or "").isdigit() and (r.get("y") or "").isdigit():
            e = extent.setdefault(r.get("source", ""), [0, 0])
            e[0], e[1] = max(e[0], int(r["x"]) + tile), max(e[1], int(r["y"]) + tile)
    return int(statistics.median(min(e) for e in extent.values())) if extent else tile


def _median_side(samples: Sequence[Sample]) -> int | None:
    step = max(1, len(samples) // HEADER_SAMPLE)
    sides = []
    for s in list(samples)[::step]:
        if s.in_array or not Path(s.path).is_file():
            continue
        try:
            with Image.open(s.path) as img:  # reads the header only
                sides.append(min(img.size))
        except (OSError, ValueError):
            continue  # unreadable files are reported by decoding, not here
    return int(statistics.median(sides)) if sides else None
