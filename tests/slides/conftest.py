"""Small generated images and pyramidal TIFFs for the slide tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

CLASSES = ["pink", "blue"]


def tissue_image(width: int, height: int, box: tuple[int, int, int, int] | None,
                 seed: int = 0) -> np.ndarray:
    """A near-white field with a stained, textured 'tissue' rectangle ``box`` (x0, y0, x1,
    y1): smooth at pixel scale like real specimen, so the artifact filter keeps it."""
    rng = np.random.default_rng(seed)
    img = np.full((height, width, 3), 236, dtype=np.uint8)
    if box is not None:
        x0, y0, x1, y1 = box
        yy, xx = np.mgrid[y0:y1, x0:x1]
        wave = (np.sin(xx / 9.0) + np.cos(yy / 7.0)) * 20
        base = np.array([200, 90, 160], dtype=np.float32)
        img[y0:y1, x0:x1] = np.clip(base + wave[..., None] + rng.normal(0, 2, (*wave.shape, 3)),
                                    0, 255).astype(np.uint8)
    return img


def write_pyramid(path: Path, img: np.ndarray, levels: int = 3, *, ome: bool = False,
                  mpp: float | None = 0.5, tile: int = 128, compression: str = "jpeg") -> Path:
    """A tiled pyramidal TIFF: each level half the previous, as separate pages (generic
    tiled TIFF, what OpenSlide reads) or as OME SubIFDs."""
    import tifffile

    pyramid = [img[::2 ** i, ::2 ** i] for i in range(levels)]
    res = {} if mpp is None else {"resolution": (1e4 / mpp, 1e4 / mpp),
                                  "resolutionunit": "CENTIMETER"}
    with tifffile.TiffWriter(path, bigtiff=True, ome=ome) as tw:
        if ome:
            tw.write(pyramid[0], tile=(tile, tile), compression=compression, subifds=levels - 1,
                     photometric="rgb", **res)
            for lv in pyramid[1:]:
                tw.write(lv, tile=(tile, tile), compression=compression, subfiletype=1,
                         photometric="rgb")
        else:
            for i, lv in enumerate(pyramid):
                tw.write(lv, tile=(tile, tile), compression=compression,
                         subfiletype=1 if i else 0, photometric="rgb", **res)
    return path


def corrupt_tile(path: Path, index: int) -> None:
    """Overwrite the data of level 0's tile ``index`` with noise (the file stays whole)."""
    import tifffile

    with tifffile.TiffFile(path) as tf:
        offset = tf.pages[0].dataoffsets[index]
        count = tf.pages[0].databytecounts[index]
    data = bytearray(path.read_bytes())
    data[offset + 20:offset + count] = np.random.default_rng(0).integers(
        0, 256, count - 20, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))


def colour_classify(batch: np.ndarray) -> np.ndarray:
    """A stand-in model: P(pink) rises with red over blue."""
    b = batch.astype(np.float64)
    red = b[..., 0].mean((1, 2))
    blue = b[..., -1].mean((1, 2))
    p = 1 / (1 + np.exp(-(red - blue) / 10))
    return np.stack([p, 1 - p], 1)


@pytest.fixture
def slide_tif(tmp_path) -> Path:
    """1536 x 1024 px, tissue over the middle, 3 levels, 0.5 µm/px."""
    img = tissue_image(1536, 1024, (384, 256, 1152, 768))
    return write_pyramid(tmp_path / "slide.tif", img)
