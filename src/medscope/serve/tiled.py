"""Whole micrographs and slides on the served page: the tiling decision for an upload, the
diagnosis through ``medscope.slides`` (the same tiles, filter, aggregation and refer rule as
``medscope predict``), and its JSON form: the image-level call, the tile counts, every tile,
the heat-map overlay and the most decisive tiles.

Nothing here knows of HTTP: ``medscope.serve.app`` maps the errors to statuses.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from medscope.diagnosis import TilePlan, diagnose_path, tiled_row
from medscope.evaluate.decisions import Rules
from medscope.predictor import Classifier
from medscope.slides.aggregate import ReferRule
from medscope.slides.diagnose import SlideResult
from medscope.slides.outputs import mean_heat
from medscope.slides.readers import SlideReader, TileReadError

DECISIVE = 4  # tiles shown beside the heat map
CROP_PX = 192  # their side in the response (enough for the page's column, small in JSON)
THUMBNAIL_PX = 1024  # the image the heat map is drawn over when the page has no better one
BATCH_SIZE = 64
DROPPED_RGBA = (128, 128, 128, 255)  # tiles read and dropped (or failed): grey, as predict's PNG
UNUSUAL_RGBA = (214, 39, 40, 255)  # classified but unlike the training images: not aggregated


def diagnose_reader(models: Sequence[Classifier], reader: SlideReader, plan: TilePlan, *,
                    aggregation: str = "mean") -> SlideResult:
    """``medscope.diagnosis.diagnose_path`` on an open reader (an upload held in memory, a
    slide opened here): the same classify, out-of-distribution flags and aggregation as
    ``medscope predict``, so the page and the CSV give one call. (``diagnose`` takes a reader
    as well as a path; ``diagnose_path`` passes it on unchanged.)"""
    return diagnose_path(list(models), reader, plan,  # type: ignore[arg-type]
                         batch_size=BATCH_SIZE, aggregation=aggregation)


def tiled_json(result: SlideResult, rules: Rules, name: str) -> dict[str, Any]:
    """The API's answer for a tiled image (without the decisive tiles' pixels)."""
    classes = list(rules.classes)
    row = tiled_row(result, rules, top_k=len(classes))
    probs = None if result.probs is None else \
        {c: float(p) for c, p in zip(classes, result.probs, strict=True)}
    return {
        "tiled": True,
        "label": row["prediction"] or None,
        "confidence": result.probability,
        "probabilities": probs,
        "refer_to_expert": row["refer_to_expert"] == "yes",
        "refer_reason": row["refer_reason"] or None,
        "refer_below": rules.refer.threshold,
        "image": {"name": name, "width": result.width, "height": result.height,
                  "reader": result.reader, "mpp": result.mpp},
        "tiling": tiling_summary(result),
        "tiles": [tile_json(t) for t in result.tiles],
        "overlay_class": result.prediction,
        "overlay_png_base64": _b64(overlay_png(result)),
        "thumbnail_jpeg_base64": _b64(_encode(result.thumbnail, "JPEG")),
    }


def tiling_summary(result: SlideResult) -> dict[str, Any]:
    """How the image was cut and what the filter kept: the counts the page and a lab report."""
    rule = ReferRule()  # the image-level rule diagnose applies (its defaults, as predict)
    return {"tile_size": result.tile_size, "aggregation": result.aggregation,
            "refer_rule": {"min_tiles": rule.min_tiles, "min_agreement": rule.min_agreement,
                           "min_confidence": rule.min_confidence,
                           "max_unusual": rule.max_unusual},
            "unusual": result.unusual,
            "agreement": result.agreement, "whole_image": result.whole_image,
            "grid": result.n_grid, "read": result.n_candidates, "kept": result.kept,
            "dropped": dict(result.dropped), "dropped_total": sum(result.dropped.values()),
            "failed": result.failed, "tissue_found": result.tissue_found,
            "tissue_fraction": result.tissue_fraction}


def tile_json(tile) -> dict[str, Any]:
    """One tile: level-0 position and side, ``ok`` or the drop reason, whether the
    out-of-distribution check flagged it (classified, not aggregated), its probabilities (in
    the order of the model's classes; null when not classified). Four decimals: a slide has
    thousands of tiles, and the page shows one."""
    return {"x": tile.x, "y": tile.y, "size": tile.size, "verdict": tile.verdict,
            "detail": tile.detail, "unusual": bool(tile.unusual),
            "probs": None if tile.probs is None else [round(float(p), 4) for p in tile.probs]}


def overlay_png(result: SlideResult) -> bytes | None:
    """The heat map as a transparent PNG the size of the thumbnail: kept tiles coloured by
    the called class's probability (viridis, as in predict's heat-map PNG), tiles read and
    dropped grey, the rest clear; the page sets its opacity."""
    if result.thumbnail is None:
        return None
    from matplotlib import colormaps  # here: a server that never tiles never loads it

    heat = mean_heat(result, result.label)
    filled = np.nan_to_num(heat, nan=0.0)
    rgba = colormaps["viridis"](np.clip(filled, 0.0, 1.0), bytes=True)
    rgba[..., 3] = np.where(np.isnan(heat), 0, 255)
    rgba[filled == -1] = DROPPED_RGBA
    rgba[filled == -2] = UNUSUAL_RGBA
    return _encode(rgba, "PNG")


def decisive_tiles(reader: SlideReader, result: SlideResult,
                   count: int = DECISIVE) -> list[dict[str, Any]]:
    """The aggregated tiles with the highest probability of the called class, most decisive first,
    each with a JPEG of its pixels (read again: the diagnosis keeps no pixels)."""
    if result.label is None:
        return []
    kept = [(i, t) for i, t in enumerate(result.tiles)
            if t.kept and t.probs is not None and not t.unusual]
    kept.sort(key=lambda it: -float(it[1].probs[result.label]))
    read = max(1, round(result.tile_size / result.downsample))
    out = []
    for index, tile in kept[:count]:
        try:
            pixels = reader.read_region(tile.x, tile.y, result.level, read, read)
        except TileReadError:
            pixels = None  # read once already; a flaky decoder must not cost the answer
        if pixels is not None:
            pixels = np.asarray(Image.fromarray(pixels).resize((CROP_PX, CROP_PX),
                                                                Image.BILINEAR))
        out.append({"index": index, "x": tile.x, "y": tile.y, "size": tile.size,
                    "probability": float(tile.probs[result.label]),
                    "jpeg_base64": _b64(_encode(pixels, "JPEG"))})
    return out


def _encode(pixels: np.ndarray | None, fmt: str) -> bytes | None:
    if pixels is None:
        return None
    buf = io.BytesIO()
    options = {"quality": 88} if fmt == "JPEG" else {"optimize": False}
    Image.fromarray(pixels).save(buf, format=fmt, **options)
    return buf.getvalue()


def _b64(data: bytes | None) -> str | None:
    return None if data is None else base64.b64encode(data).decode("ascii")
