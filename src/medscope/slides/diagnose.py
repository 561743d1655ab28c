"""Diagnose one image or whole-slide image: reader -> tissue/field finder -> tiles at the
training scale -> artifact filter -> the model in batches -> aggregation -> refer rule; plus
the per-tile CSV and a heat map of a class's probability per tile over the thumbnail.

The model is a callable ``classify(batch)`` (``batch``: N x S x S x C uint8) returning N x K
calibrated probabilities, or a pair ``(probabilities, unusual)`` where ``unusual`` (N
booleans) is the out-of-distribution check of ``evaluate.ood`` on the same forward pass; so
this module knows nothing of torch or ONNX. Unusual tiles are recorded, left out of the
aggregation, and refer the image when they are many (``ReferRule.max_unusual``).

Field finding (``tissue``): ``auto`` runs the tissue finder on whole-slide images (an image
with a pyramid, or one past 100 megapixels) and not on micrographs (a tiled single-level TIFF
from a camera included), where, as in ``medscope patches``, the artifact filter alone decides
which tiles are usable; ``on`` and ``off`` force it. An image smaller than one tile in either
direction takes the whole-image path: it is filtered and classified as one tile (squashed to
the model input, as the non-tiled predict does), and the result says so (``whole_image``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from contextlib import closing
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from medscope.data.patches import PatchFilter, background_colour, patch_stats, verdict
from medscope.errors import MedscopeError
from medscope.options import TISSUE_MODES
from medscope.slides.aggregate import ReferRule, check_aggregation, decide
from medscope.slides.readers import SlideReader, open_reader
from medscope.slides.tiling import (
    FAILED,
    TileGrid,
    TileRecord,
    iter_tile_batches,
    plan_grid,
    scaled_tile_size,
    to_model_input,
)
from medscope.slides.tissue import TissueMap, find_tissue, whole_field

Classify = Callable[[np.ndarray], np.ndarray]
DEGENERATE = "degenerate"
SLIDE_PIXELS = 100_000_000  # without a pyramid, an image past this is treated as a slide


@dataclass
class SlideResult:
    """Everything one image's diagnosis produced; ``to_dict`` is its JSON form."""

    path: str
    classes: list[str] | None
    label: int | None  # None: no usable tile, no call
    prediction: str | None
    probability: float | None
    probs: np.ndarray | None  # aggregated, K
    refer: bool
    reason: str | None
    aggregation: str
    agreement: float | None
    whole_image: bool
    tissue_found: bool
    tissue_fraction: float
    width: int
    height: int
    reader: str
    mpp: float | None
    level: int
    downsample: float
    tile_size: int  # level-0 pixels a side
    n_grid: int  # whole tiles in the image
    n_candidates: int  # tiles read (on tissue)
    kept: int  # tiles that passed the artifact filter and were classified
    unusual: int  # of those, flagged out-of-distribution (not aggregated)
    dropped: dict[str, int]
    failed: int
    tiles: list[TileRecord] = field(default_factory=list)
    thumbnail: np.ndarray | None = None

    def to_dict(self, tiles: bool = False) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in (
            "path", "classes", "label", "prediction", "probability", "refer", "reason",
            "aggregation", "agreement", "whole_image", "tissue_found", "tissue_fraction",
            "width", "height", "reader", "mpp", "level", "downsample", "tile_size", "n_grid",
            "n_candidates", "kept", "unusual", "dropped", "failed")}
        out["probs"] = None if self.probs is None else [float(p) for p in self.probs]
        if tiles:
            out["tiles"] = [_tile_dict(t) for t in self.tiles]
        return out


def diagnose(source: SlideReader | Path | str, classify: Classify, tile_size: int,
             input_size: int, *, classes: Sequence[str] | None = None, channels: int = 3,
             stride: int | None = None, aggregation: str = "mean", topk: int | None = None,
             rule: ReferRule | None = None, patch_filter: PatchFilter | None = None,
             tissue: str = "auto", train_mpp: float | None = None,
             slide_mpp: float | None = None, min_coverage: float = 0.05,
             batch_size: int = 32, workers: int = 2, queue_size: int = 4,
             thumbnail_size: int = 1024) -> SlideResult:
    """Diagnose one image (a path, opened and closed here, or an open reader).

    ``tile_size``: the training patch side in source pixels; ``input_size``: the model's
    input side; ``train_mpp``/``slide_mpp``: microns per pixel of the training data and of
    this image (the file's own value when ``slide_mpp`` is None); see the module docstring
    for ``tissue``."""
    check_aggregation(aggregation)
    check_tissue(tissue)
    if isinstance(source, (str, Path)):
        with open_reader(source, mpp=slide_mpp) as reader:
            return diagnose(reader, classify, tile_size, input_size, classes=classes,
                            channels=channels, stride=stride, aggregation=aggregation,
                            topk=topk, rule=rule, patch_filter=patch_filter, tissue=tissue,
                            train_mpp=train_mpp, min_coverage=min_coverage,
                            batch_size=batch_size, workers=workers, queue_size=queue_size,
                            thumbnail_size=thumbnail_size)
    reader, flt, rule = source, patch_filter or PatchFilter(), rule or ReferRule()
    size = scaled_tile_size(tile_size, train_mpp, slide_mpp or reader.mpp)
    thumb = reader.thumbnail(thumbnail_size)
    width, height = reader.level_dimensions[0]
    opts = dict(classes=classes, aggregation=aggregation, topk=topk, rule=rule)
    if width < size or height < size:
        return _whole_image(reader, classify, input_size, channels, flt, thumb, **opts)
    tmap = _tissue_map(reader, thumb, tissue)
    grid = plan_grid(reader, size, input_size, stride=stride, tissue=tmap,
                     min_coverage=min_coverage)
    background = background_colour(thumb, flt.dark_level)
    records: list[TileRecord] = []
    stream = iter_tile_batches(reader, grid, input_size, background=background, flt=flt,
                               channels=channels, batch_size=batch_size, workers=workers,
                               queue_size=queue_size)
    with closing(stream):  # a failing model stops the reader thread at once
        for batch in stream:
            if len(batch.pixels):
                probs, unusual = run_classify(classify, batch.pixels)
                for record, p, u in zip(batch.kept, probs, unusual, strict=True):
                    record.probs, record.unusual = p, bool(u)
            records += batch.records
    return _result(reader, records, grid, tmap, thumb, whole_image=False, **opts)


def check_tissue(mode: str) -> str:
    """The tissue finder's mode, refused with one line naming the option."""
    if mode not in TISSUE_MODES:
        raise MedscopeError(f"--tissue {mode!r}: choose from {', '.join(TISSUE_MODES)}")
    return mode


def run_classify(classify: Classify, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N x K probabilities, N unusual flags) for N tiles, checked: a wrong shape is a bug in
    the caller's wrapper, reported here rather than as a confusing error later."""
    out = classify(pixels)
    probs, unusual = out if isinstance(out, tuple) else (out, None)
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or len(probs) != len(pixels):
        raise ValueError(f"classify returned shape {probs.shape} for {len(pixels)} tiles; "
                         "expected N x K probabilities")
    flags = np.zeros(len(probs), dtype=bool) if unusual is None else \
        np.asarray(unusual, dtype=bool).reshape(-1)
    if len(flags) != len(probs):
        raise ValueError(f"classify returned {len(flags)} unusual flags for {len(probs)} tiles")
    return probs, flags


def _tissue_map(reader: SlideReader, thumb: np.ndarray, mode: str) -> TissueMap:
    width, height = reader.level_dimensions[0]
    slide_like = len(reader.level_dimensions) > 1 or width * height > SLIDE_PIXELS
    if mode == "on" or (mode == "auto" and slide_like):
        return find_tissue(thumb, reader.level_dimensions[0])
    return whole_field(reader.level_dimensions[0])


def _whole_image(reader: SlideReader, classify: Classify, input_size: int, channels: int,
                 flt: PatchFilter, thumb: np.ndarray, **opts) -> SlideResult:
    """An image smaller than one tile: filtered, then classified whole as one tile."""
    width, height = reader.level_dimensions[0]
    record = TileRecord(0, 0, max(width, height), DEGENERATE)
    # below 8 px a side, or a sliver, there is no field to judge (nor a filter statistic)
    if min(width, height) >= 8 and max(width, height) <= 8 * min(width, height):
        image = reader.read_region(0, 0, 0, width, height)
        stats = patch_stats(image, background_colour(image, flt.dark_level), flt)
        record = TileRecord(0, 0, max(width, height), verdict(stats, flt), stats=stats)
        if record.kept:
            probs, unusual = run_classify(classify, to_model_input(image, input_size,
                                                                   channels)[None])
            record.probs, record.unusual = probs[0], bool(unusual[0])
    grid = TileGrid(max(width, height), max(width, height), 0, 1.0, max(width, height),
                    ((0, 0),), 1)
    # one tile is all a whole image can have: "too few usable tiles" does not apply
    opts["rule"] = replace(opts["rule"], min_tiles=1)
    return _result(reader, [record], grid, whole_field((width, height)), thumb,
                   whole_image=True, **opts)


def _result(reader: SlideReader, records: list[TileRecord], grid: TileGrid, tmap: TissueMap,
            thumb: np.ndarray, *, whole_image: bool, classes, aggregation, topk,
            rule) -> SlideResult:
    kept = [r for r in records if r.kept and r.probs is not None]
    usable = [r for r in kept if not r.unusual]
    probs = np.stack([r.probs for r in usable]) if usable else np.zeros((0, 0))
    decision = decide(probs, aggregation, rule, topk, n_unusual=len(kept) - len(usable))
    classes = list(classes) if classes is not None else None
    if classes is not None and decision.probs is not None and \
            len(classes) != len(decision.probs):
        raise ValueError(f"{len(classes)} class names for {len(decision.probs)} probabilities")
    dropped = Counter(r.verdict for r in records if not r.kept and r.verdict != FAILED)
    width, height = reader.level_dimensions[0]
    return SlideResult(
        path=str(reader.path), classes=classes, label=decision.label,
        prediction=_name(classes, decision.label), probability=decision.probability,
        probs=decision.probs, refer=decision.refer, reason=decision.reason,
        aggregation=aggregation, agreement=decision.agreement, whole_image=whole_image,
        tissue_found=tmap.found, tissue_fraction=tmap.fraction, width=width, height=height,
        reader=reader.kind, mpp=reader.mpp, level=grid.level, downsample=grid.downsample,
        tile_size=grid.tile_size, n_grid=grid.n_grid, n_candidates=len(records),
        kept=len(kept), unusual=len(kept) - len(usable), dropped=dict(sorted(dropped.items())),
        failed=sum(r.verdict == FAILED for r in records), tiles=records, thumbnail=thumb)


def _name(classes: list[str] | None, label: int | None) -> str | None:
    if label is None:
        return None
    return classes[label] if classes is not None else str(label)


def _tile_dict(t: TileRecord) -> dict[str, Any]:
    return {"x": t.x, "y": t.y, "size": t.size, "kept": t.kept, "reason": t.verdict,
            "detail": t.detail, "unusual": t.unusual,
            "probs": None if t.probs is None else [float(p) for p in t.probs]}
