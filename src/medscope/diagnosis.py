"""Large images through a trained model: the tiling rule, and the glue between a ``Classifier``
and ``medscope.slides`` (which knows no model). Used by ``predict`` (files), the served page and
the demo, so a micrograph gets the same call wherever it is diagnosed.

The tiling rule (``tiles``):
- ``off``: every image is squashed whole to the model input, as training images were.
- ``on``: every image is tiled.
- ``auto`` (default): a whole-slide file (.svs, .ndpi, .mrxs, pyramidal TIFF, ...) is always
  tiled; any other image is tiled when its smaller side is at least ``TILE_FACTOR`` times the
  region one model input covered in training (``scale.tile_px`` in the checkpoint: the patch
  size of ``medscope patches`` data, else the median side of the training images). A model
  trained on 500 px patches tiles a 1,000 px micrograph; a model trained on whole 400 px
  images squashes a 500 px one. Without a recorded scale (array data, older checkpoints)
  ``auto`` never tiles.
Tiles are cut at the recorded patch size and stride (at the recorded microns per pixel when the
image states its own), filtered by the artifact filter of ``medscope patches``, classified in
batches, and aggregated into the image's call by ``medscope.slides.aggregate``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from PIL import Image

from medscope.errors import MedscopeError
from medscope.evaluate.decisions import Rules, refer_flag
from medscope.novelty import ood_checks, unusual
from medscope.options import TILE_MODES
from medscope.predictor import Classifier, model_outputs
from medscope.run import atomic_write_bytes
from medscope.slides.aggregate import LOW_CONFIDENCE, ReferRule, check_aggregation
from medscope.slides.diagnose import SlideResult, check_tissue, diagnose
from medscope.slides.outputs import write_heatmap, write_tiles_csv
from medscope.slides.readers import WSI_EXTENSIONS, open_reader
from medscope.slides.tiling import TileRecord

TILE_FACTOR = 1.5  # auto tiles an image whose smaller side holds 1.5 training tiles or more
TILE_COLUMNS = ["tiled", "tiles_kept", "tiles_unusual", "tiles_dropped", "tiles_failed"]


@dataclass(frozen=True)
class TilePlan:
    """How a model's large images are cut: tile side and stride in source pixels, the
    training microns per pixel when recorded, and where tiles are read (``tissue``: the
    tissue finder's mode, ``medscope.slides.diagnose``)."""

    tile_px: int
    stride_px: int
    mpp: float | None = None
    tissue: str = "auto"


def check_tiles(tiles: str, aggregation: str = "mean", tissue: str = "auto") -> None:
    """The tiling options, refused with one line naming the option."""
    if tiles not in TILE_MODES:
        raise MedscopeError(f"--tiles {tiles!r}: choose from {', '.join(TILE_MODES)}")
    check_tissue(tissue)
    check_aggregation(aggregation)


def tile_plan(models: list[Classifier], tiles: str, tile_size: int | None = None,
              tissue: str = "auto") -> TilePlan | None:
    """The plan for ``models`` (None: never tile). Tiling needs single-label models sharing one
    input size; ``tiles="on"`` without a recorded scale needs ``tile_size``."""
    if tiles == "off":
        return None
    first = models[0]
    if first.multilabel or any(m.img_size != first.img_size for m in models):
        if tiles == "on":
            raise MedscopeError("--tiles on: tiling needs single-label models of one input size")
        return None
    scale = first.meta.get("scale") or {}
    size = tile_size or scale.get("tile_px")
    if size is None:
        if tiles == "on":
            raise MedscopeError("--tiles on: the checkpoint records no training scale; give "
                                "--tile-size (source pixels per tile)")
        return None
    stride = scale.get("stride_px") if tile_size is None else None
    return TilePlan(int(size), int(stride or size), scale.get("mpp"), tissue)


def wants_tiles(source: Path | BinaryIO, plan: TilePlan | None, tiles: str) -> bool:
    """Whether ``source`` (a path, or an upload's bytes as a file object, never a whole-slide
    file) is tiled under ``plan`` (the rule of the module docstring)."""
    if plan is None:
        return False
    is_wsi = isinstance(source, str | Path) and Path(source).suffix.lower() in WSI_EXTENSIONS
    if tiles == "on" or is_wsi:
        return True
    side = _smaller_side(source)
    return side is not None and side >= TILE_FACTOR * plan.tile_px


def _smaller_side(path: Path | BinaryIO) -> int | None:
    try:
        with Image.open(path) as img:  # the header only
            return min(img.size)
    except (OSError, ValueError, Image.DecompressionBombError):
        return None  # decoding reports it (or it is DICOM: never tiled automatically)


def diagnose_path(models: list[Classifier], path: Path, plan: TilePlan, *, tta: bool = False,
                  batch_size: int = 64, aggregation: str = "mean",
                  rule: ReferRule | None = None) -> SlideResult:
    """One large image through ``models`` (their calibrated probabilities averaged). With an
    out-of-distribution check in the models, each tile is also checked in the same forward
    pass: unusual tiles are counted, not aggregated, and an image whose classified tiles are
    mostly unusual is referred as "unlike the training images" (``slides.aggregate``)."""
    checks = ood_checks(models)

    def classify(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        outs = [model_outputs(m, pixels, batch_size, tta=tta, features=c is not None)
                for m, c in zip(models, checks, strict=True)]
        return np.mean([p for p, _ in outs], axis=0), unusual(checks, [f for _, f in outs])

    first = models[0]
    return diagnose(path, classify, plan.tile_px, first.img_size, classes=first.classes,
                    channels=first.in_chans, stride=plan.stride_px, aggregation=aggregation,
                    rule=rule, tissue=plan.tissue, train_mpp=plan.mpp,
                    batch_size=batch_size)


def tiled_row(result: SlideResult, rules: Rules, top_k: int) -> dict[str, Any]:
    """``predict``'s row for a tiled image: the image-level call from the aggregated tile
    probabilities, referred when the slide rule or the model's confidence rule says so."""
    classes = list(rules.classes)
    row: dict[str, Any] = {"file": result.path, "error": "", "tiled": "yes",
                           "tiles_kept": result.kept, "tiles_unusual": result.unusual,
                           "tiles_dropped": sum(result.dropped.values()),
                           "tiles_failed": result.failed}
    if result.probs is None:
        return {**row, "prediction": "", "probability": "", "top_k": "",
                "refer_to_expert": "yes", "refer_reason": result.reason,
                **{f"p_{c}": "" for c in classes}}
    probs = np.asarray(result.probs, dtype=np.float64)
    low = rules.refer_to_expert(probs[None])
    reason = result.reason or (LOW_CONFIDENCE if low is not None and low[0] else "")
    order = np.argsort(-probs, kind="stable")[:top_k]
    return {**row, "prediction": rules.labels(probs[None])[0],
            "probability": float(probs.max()), "refer_reason": reason,
            "top_k": "|".join(f"{classes[i]}:{probs[i]:.4f}" for i in order),
            "refer_to_expert": refer_flag(bool(reason)),
            **{f"p_{c}": float(p) for c, p in zip(classes, probs, strict=True)}}


def write_tile_outputs(result: SlideResult, folder: Path, name: str,
                       overlays: dict[tuple[int, int], str] | None = None) -> list[Path]:
    """The per-tile CSV and the heat map of the called class for one image, in ``folder``;
    ``overlays`` (tile x, y -> file name): the tiles explained, listed in the CSV's
    ``gradcam`` column (present whenever ``overlays`` is given)."""
    folder.mkdir(parents=True, exist_ok=True)
    return [write_tiles_csv(result, folder / f"{name}.tiles.csv", overlays),
            write_heatmap(result, folder / f"{name}.heatmap.png", result.label)]


# Grad-CAM of a tile: (the model, the tile as read (H x W x 3 uint8), the class index) -> PNG
# bytes of the overlay at the tile's size; ``medscope.explain.tile_overlay`` (a layer above).
TileExplainer = Callable[[Classifier, np.ndarray, int], bytes]


def decisive_tiles(result: SlideResult, n: int, target: int | None = None
                   ) -> list[TileRecord]:
    """The ``n`` tiles most supporting the image's call (or class ``target``): the aggregated
    tiles (kept, not unusual) by their probability of that class, highest first (grid order
    among equals); none when the image has no call and no target is given."""
    index = result.label if target is None else target
    if index is None or n < 1:
        return []
    usable = [t for t in result.tiles if t.kept and t.probs is not None and not t.unusual]
    return sorted(usable, key=lambda t: -float(t.probs[index]))[:n]  # type: ignore[index]


def tile_overlay_name(name: str, tile: TileRecord, method: str = "gradcam") -> str:
    """``<image name>.tile_x<X>_y<Y>.<method>.png`` (level-0 pixels of the tile's corner)."""
    return f"{name}.tile_x{tile.x}_y{tile.y}.{method}.png"


def read_tiles(result: SlideResult, tiles: list[TileRecord]) -> list[np.ndarray]:
    """The pixels of ``tiles`` of the image ``result`` diagnosed, as they were read (from the
    pyramid level read, before the resize to the model input)."""
    if not tiles:
        return []
    side = max(1, round(result.tile_size / result.downsample))
    with open_reader(result.path, mpp=result.mpp) as reader:
        if result.whole_image:
            return [reader.read_region(0, 0, 0, result.width, result.height)]
        return [reader.read_region(t.x, t.y, result.level, side, side) for t in tiles]


def write_tile_explanations(result: SlideResult, model: Classifier, explainer: TileExplainer,
                            n: int, folder: Path, name: str) -> dict[tuple[int, int], str]:
    """Grad-CAM overlays of the ``n`` most decisive tiles of ``result`` written in ``folder``
    (``tile_overlay_name``); returns tile x, y -> file name."""
    chosen = decisive_tiles(result, n)
    written: dict[tuple[int, int], str] = {}
    for tile, pixels in zip(chosen, read_tiles(result, chosen), strict=True):
        file_name = tile_overlay_name(name, tile)
        atomic_write_bytes(folder / file_name, explainer(model, pixels, result.label or 0))
        written[(tile.x, tile.y)] = file_name
    return written
