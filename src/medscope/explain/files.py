"""Heat-map overlays for image files (``medscope explain``) and for a run's report."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medscope.data.sources import Sample
from medscope.diagnosis import (
    decisive_tiles,
    diagnose_path,
    read_tiles,
    tile_overlay_name,
    tile_plan,
    wants_tiles,
)
from medscope.errors import MedscopeError
from medscope.explain.gradcam import (
    METHODS,
    class_index,
    heatmap,
    overlay_pixels,
    overlay_png,
    target_layer,
)
from medscope.explain.tiles import tile_overlay
from medscope.run import atomic_write_bytes, atomic_write_csv

CSV_NAME = "explanations.csv"
CSV_HEADER = ["file", "prediction", "probability", "target", "overlay", "error"]


def explain_files(source: Path | str, inputs: Sequence[Path | str], out_dir: Path | str, *,
                  method: str = "gradcam", target: str | None = None, layer: str | None = None,
                  progress: bool = False, explain_tiles: int = 4) -> list[dict[str, Any]]:
    """Write ``<stem>_<method>.png`` (overlay for the predicted class, or ``target``) per image
    and ``explanations.csv`` in ``out_dir``; unreadable files get a row with their reason.
    A large image (a whole micrograph or slide, tiled as ``medscope predict`` tiles it) is not
    squashed: its ``explain_tiles`` most decisive tiles get one overlay each, at the tile's
    size, ``<stem>.tile_x<X>_y<Y>.<method>.png`` (a row each)."""
    from medscope.predict import collect_images
    from medscope.predictor import Predictor

    if method not in METHODS:
        raise MedscopeError(f"unknown explain method {method!r} (one of {', '.join(METHODS)})")
    predictor = Predictor.load(source, precision="fp32")
    # Checked before any work so that a typo fails at once, naming the choices.
    fixed = class_index(predictor.classes, target) if target is not None else None
    if layer:
        target_layer(predictor.model, layer)
    paths = collect_images(inputs)
    plan = tile_plan([predictor], "auto")
    tiled = {p for p in paths if wants_tiles(p, plan, "auto")}
    out_dir = Path(out_dir)
    names = dict(zip(paths, overlay_names(paths, method), strict=True))
    whole = [p for p in paths if p not in tiled]
    rows, bad = _explain_whole(predictor, whole, [names[p] for p in whole], out_dir, method,
                               fixed, layer, progress)
    for path in (p for p in paths if p in tiled):
        assert plan is not None
        result = diagnose_path([predictor], path, plan)
        rows += _explain_tiled(predictor, result, names[path].removesuffix(f"_{method}.png"),
                               out_dir, method, fixed, layer, explain_tiles)
    rows += bad
    atomic_write_csv(out_dir / CSV_NAME, CSV_HEADER, ([r[h] for h in CSV_HEADER] for r in rows))
    return rows


def _explain_whole(predictor: Any, paths: list[Path], names: list[str], out_dir: Path,
                   method: str, fixed: int | None, layer: str | None, progress: bool
                   ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(rows, rows of unreadable files) of the images explained whole."""
    classes = predictor.classes
    decoded = predictor.decode([Sample(p, -1) for p in paths], progress=progress,
                               desc="explain")
    probs = predictor.probs_from_pixels(decoded.pixels) if len(decoded.kept) else np.empty(0)
    rows: list[dict[str, Any]] = []
    for image, row_probs, idx in zip(decoded.pixels, probs, decoded.kept, strict=True):
        best = int(row_probs.argmax())
        index = best if fixed is None else fixed
        heat = heatmap(predictor, image, target=index, method=method, layer=layer)
        atomic_write_bytes(out_dir / names[idx], overlay_png(image, heat))
        rows.append({"file": str(paths[idx]), "prediction": classes[best],
                     "probability": f"{row_probs[best]:.6f}", "target": classes[index],
                     "overlay": names[idx], "error": ""})
    bad = [{"file": str(p), "prediction": "", "probability": "", "target": "", "overlay": "",
            "error": reason} for p, reason in decoded.bad]
    return rows, bad


def _explain_tiled(predictor: Any, result: Any, base: str, out_dir: Path, method: str,
                   fixed: int | None, layer: str | None, n: int) -> list[dict[str, Any]]:
    """A row per explained tile of a tiled image (the image's call in each); one row saying
    why when the image has no call (no usable field) and no class was asked for."""
    call = {"file": result.path, "prediction": result.prediction or "",
            "probability": "" if result.probability is None else f"{result.probability:.6f}"}
    index = result.label if fixed is None else fixed
    chosen = decisive_tiles(result, n, index)
    if index is None or not chosen:
        return [{**call, "target": "", "overlay": "",
                 "error": f"no tile to explain ({result.reason or 'none usable'})"}]
    rows = []
    for tile, pixels in zip(chosen, read_tiles(result, chosen), strict=True):
        name = tile_overlay_name(base, tile, method)
        atomic_write_bytes(out_dir / name, tile_overlay(predictor, pixels, index,
                                                        method=method, layer=layer))
        rows.append({**call, "target": predictor.classes[index], "overlay": name, "error": ""})
    return rows


def overlay_names(paths: Sequence[Path], method: str) -> list[str]:
    """``<stem>_<method>.png`` per path; a stem seen before gets ``-2``, ``-3``… so that two
    ``img.png`` from different folders do not overwrite each other."""
    seen: dict[str, int] = {}
    names = []
    for path in paths:
        count = seen[path.stem] = seen.get(path.stem, 0) + 1
        suffix = f"-{count}" if count > 1 else ""
        names.append(f"{path.stem}{suffix}_{method}.png")
    return names


def report_gradcam(predictor: Any, pixels: np.ndarray, labels: np.ndarray, probs: np.ndarray,
                   classes: Sequence[str], path: Path, n: int = 8) -> Path | None:
    """A grid of Grad-CAM overlays (for the predicted class) on the most confident mistakes of
    an evaluated split, for the run report; without mistakes, the report's usual examples.
    Returns ``path``, or None when there is nothing to show."""
    from medscope.report.plots import example_indices, plot_examples

    if not len(pixels):
        return None
    shown = example_indices(labels, probs, 2 * n)
    mistakes = shown[probs[shown].argmax(1) != labels[shown]]
    # The spread part of ``shown`` may hold mistakes too: most confident first, over both.
    mistakes = mistakes[np.argsort(-probs[mistakes].max(1), kind="stable")]
    chosen = mistakes[:n] if len(mistakes) else shown[:n]
    overlays, titles = [], []
    for i in chosen:
        pred = int(probs[i].argmax())
        heat = heatmap(predictor, pixels[i], target=pred, method="gradcam")
        overlays.append(overlay_pixels(pixels[i], heat))
        titles.append(f"{classes[labels[i]]} → {classes[pred]} {probs[i, pred]:.2f}")
    flags = [bool(probs[i].argmax() != labels[i]) for i in chosen]
    plot_examples(np.stack(overlays), titles, path, cols=min(4, len(chosen)), wrong=flags)
    return path
