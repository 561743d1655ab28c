"""The training scale recorded in the checkpoint: patches.csv, else image sizes."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from medscope.data.patches import extract_patches
from medscope.data.scale import training_scale
from medscope.data.sources import Sample, load_source


def _micrographs(root, n=2, side=400):
    rng = np.random.default_rng(0)
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        for i in range(n):
            pixels = rng.integers(90, 200, (side, side + 40, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / cls / f"m{i}.png")


@pytest.mark.slow
def test_scale_from_patches_manifest(tmp_path):
    _micrographs(tmp_path / "src")
    extract_patches(tmp_path / "src", tmp_path / "patches", 200, stride=100, progress=False,
                    workers=1)
    source = load_source(tmp_path / "patches")
    scale = training_scale(source.root, source.samples, mpp=0.5)
    assert (scale.tile_px, scale.stride_px, scale.origin, scale.mpp) == (200, 100,
                                                                          "patches.csv", 0.5)
    assert scale.source_px == 400  # three rows of 200 px patches at stride 100 cover 400 px


def test_scale_from_image_sizes(tmp_path):
    _micrographs(tmp_path / "imgs", side=120)
    source = load_source(tmp_path / "imgs")
    scale = training_scale(source.root, source.samples)
    assert (scale.tile_px, scale.source_px, scale.stride_px) == (120, 120, None)
    assert scale.origin == "image sizes"


def test_no_scale_for_array_samples(tmp_path):
    samples = [Sample(tmp_path / "x.npz", 0, index=i) for i in range(3)]
    assert training_scale(None, samples) is None
