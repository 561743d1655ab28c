"""What a diagnosis writes: the per-image row, the per-tile CSV and the heat map PNG.

The heat map uses matplotlib's object API (``Figure`` + ``FigureCanvasAgg``), never pyplot or
``matplotlib.use``: no global backend switch, safe in a server's threads.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from medscope.run import atomic_write_csv
from medscope.slides.diagnose import SlideResult

TILE_COLUMNS = ["x", "y", "size", "kept", "reason", "detail", "unusual", "dark_fraction",
                "tissue_fraction", "neighbour_corr"]


def class_names(result: SlideResult) -> list[str]:
    """The class names, or ``0..K-1`` when the caller gave none."""
    if result.classes is not None:
        return list(result.classes)
    k = next((len(t.probs) for t in result.tiles if t.probs is not None), 0)
    return [str(i) for i in range(k)]


def image_row(result: SlideResult) -> dict[str, Any]:
    """The image's line of a predictions CSV: today's columns plus the tile counts."""
    row: dict[str, Any] = {
        "file": result.path, "prediction": result.prediction or "",
        "probability": "" if result.probability is None else f"{result.probability:.4f}",
        "refer_to_expert": int(result.refer), "refer_reason": result.reason or "",
        "aggregation": result.aggregation, "whole_image": int(result.whole_image),
        "tiles_read": result.n_candidates, "tiles_kept": result.kept,
        "tiles_unusual": result.unusual,
        "tiles_dropped": sum(result.dropped.values()), "tiles_failed": result.failed,
    }
    if result.probs is not None:
        for name, p in zip(class_names(result), result.probs, strict=True):
            row[f"prob_{name}"] = f"{p:.4f}"
    return row


def tile_rows(result: SlideResult, overlays: dict[tuple[int, int], str] | None = None
              ) -> tuple[list[str], list[list[Any]]]:
    """(header, rows) of the per-tile CSV: position, kept or the drop reason, filter
    statistics and the class probabilities of kept tiles; with ``overlays`` (tile x, y ->
    file name), a last ``gradcam`` column naming each explained tile's overlay."""
    names = class_names(result)
    header = TILE_COLUMNS + [f"prob_{n}" for n in names] + (["gradcam"] if overlays is not None
                                                            else [])
    rows = []
    for t in result.tiles:
        stats = ["", "", ""] if t.stats is None else [
            f"{t.stats.dark_fraction:.4f}", f"{t.stats.tissue_fraction:.4f}",
            f"{t.stats.neighbour_corr:.4f}"]
        probs = [""] * len(names) if t.probs is None else [f"{p:.4f}" for p in t.probs]
        extra = [] if overlays is None else [overlays.get((t.x, t.y), "")]
        rows.append([t.x, t.y, t.size, int(t.kept), t.verdict, t.detail, int(t.unusual),
                     *stats, *probs, *extra])
    return header, rows


def write_tiles_csv(result: SlideResult, path: Path | str,
                    overlays: dict[tuple[int, int], str] | None = None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    header, rows = tile_rows(result, overlays)
    atomic_write_csv(path, header, rows)
    return path


def heat_overlay(result: SlideResult, class_index: int | None) -> np.ndarray:
    """Thumbnail-sized map: the class probability where a classified tile covers the pixel
    (the mean over the tiles covering it: tiles overlap when the stride is smaller than the
    tile), -1 where tiles were read but none aggregated (dropped, failed or unlike the
    training images: drawn grey), NaN where nothing was read."""
    heat = mean_heat(result, class_index)
    heat[heat == -2.0] = -1.0
    return heat


def mean_heat(result: SlideResult, class_index: int | None) -> np.ndarray:
    """Thumbnail-sized map of ``class_index``'s probability, each pixel the mean over the
    aggregated tiles covering it (tiles overlap when the stride is smaller than the tile:
    painting the last tile over the others would show one arbitrary tile's value); -2 where
    the only classified tiles were flagged unlike the training images; -1 where tiles were
    read but none classified; NaN where nothing was read. ``heat_overlay``'s map when tiles
    do not overlap and none is flagged."""
    rows, cols = result.thumbnail.shape[:2]
    sx, sy = cols / result.width, rows / result.height
    total, kept = np.zeros((rows, cols)), np.zeros((rows, cols))
    read, flagged = np.zeros((rows, cols), bool), np.zeros((rows, cols), bool)
    for t in result.tiles:
        x0, y0 = int(t.x * sx), int(t.y * sy)
        x1 = max(x0 + 1, int(round((t.x + t.size) * sx)))
        y1 = max(y0 + 1, int(round((t.y + t.size) * sy)))
        read[y0:y1, x0:x1] = True
        if t.probs is not None and t.unusual:
            flagged[y0:y1, x0:x1] = True
        elif t.probs is not None and class_index is not None:
            total[y0:y1, x0:x1] += float(t.probs[class_index])
            kept[y0:y1, x0:x1] += 1
    heat = np.full((rows, cols), np.nan)
    heat[read] = -1.0
    heat[flagged] = -2.0
    np.divide(total, kept, out=heat, where=kept > 0)
    return heat


def write_heatmap(result: SlideResult, path: Path | str, class_index: int | None = None,
                  *, dpi: int = 100) -> Path:
    """A PNG of ``class_index``'s probability per tile (the call's class by default) over
    the thumbnail, dropped tiles in grey, with the call and any refer reason in the title."""
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure

    if result.thumbnail is None:
        raise ValueError("the result holds no thumbnail to draw on")
    names = class_names(result)
    if class_index is None:
        class_index = result.label if result.label is not None else 0
    heat = heat_overlay(result, class_index if names else None)
    cmap, norm = colormaps["viridis"], Normalize(0.0, 1.0)
    overlay = cmap(norm(np.clip(np.nan_to_num(heat, nan=0.0), 0, 1)))
    overlay[..., 3] = np.where(np.isnan(heat), 0.0, 0.55)
    overlay[heat < 0] = (0.5, 0.5, 0.5, 0.45)
    rows, cols = heat.shape
    fig = Figure(figsize=(max(4.0, 8 * cols / max(rows, cols)) + 1.5,
                          max(3.0, 8 * rows / max(rows, cols)) + 0.8), dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.imshow(result.thumbnail)
    ax.imshow(overlay, interpolation="nearest")
    ax.set_axis_off()
    ax.set_title(_title(result, names[class_index] if names else None), fontsize=9)
    fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=ax, fraction=0.04,
                 label=f"P({names[class_index]}) per tile" if names else "probability")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", bbox_inches="tight")
    return path


def _title(result: SlideResult, shown: str | None) -> str:
    name = Path(result.path).name
    call = "no call" if result.prediction is None else \
        f"{result.prediction} {100 * (result.probability or 0):.1f} %"
    refer = f"; refer: {result.reason}" if result.refer else ""
    counts = f"{result.kept} tiles kept, {sum(result.dropped.values())} dropped"
    if result.failed:
        counts += f", {result.failed} failed"
    if result.unusual:
        counts += f", {result.unusual} unlike the training images"
    return f"{name}: {call}{refer}\n{counts}" + (f"; colour: P({shown})" if shown else "")
