"""Grad-CAM of the tiles of a large image (a whole micrograph, a slide): the tile as read, under
the heat map computed on the tile as the model saw it. ``medscope predict --explain-tiles``
(through ``medscope.diagnosis.write_tile_explanations``) and ``medscope explain`` on a large
image write these for the tiles most supporting the image's call."""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image

from medscope.explain.gradcam import heatmap, overlay_png
from medscope.slides.tiling import to_model_input


def tile_overlay(predictor: Any, tile: np.ndarray, target: int, method: str = "gradcam",
                 layer: str | None = None) -> bytes:
    """PNG bytes at the tile's size: ``tile`` (H x W x 3 uint8, as read from its pyramid
    level) under the heat map of class ``target``, computed on the tile resized to the model
    input as tiles are classified (``slides.tiling.to_model_input``), then enlarged back."""
    image = to_model_input(tile, predictor.img_size, predictor.in_chans)
    heat = heatmap(predictor, image, target=target, method=method, layer=layer)
    height, width = tile.shape[:2]
    if heat.shape != (height, width):
        heat = np.asarray(Image.fromarray(heat, mode="F").resize((width, height),
                                                                 Image.BILINEAR))
    return overlay_png(tile, np.clip(heat, 0, 1))
