"""Grad-CAM of one tile as read: the overlay has the tile's size, whatever the model's input."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from medscope.explain.tiles import tile_overlay
from tests.explain.conftest import blob_images


def test_tile_overlay_is_the_tiles_size(blob_predictor):
    tile = np.asarray(Image.fromarray(blob_images(1, True)[0]).resize((100, 90)))
    png = tile_overlay(blob_predictor, tile, target=1)
    with Image.open(io.BytesIO(png)) as img:
        assert img.size == (100, 90) and img.mode == "RGB"
        assert not np.array_equal(np.asarray(img), tile)  # the heat map is drawn on it
