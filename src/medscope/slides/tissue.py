"""Where the specimen is, found on a low-resolution thumbnail before any tile is read.

Stained tissue and organisms are coloured; glass, empty field and most dust are grey or white.
So: HSV saturation of the thumbnail, Otsu's threshold (scikit-image) over the pixels that are
neither near-black (slide edges and field stops have unstable hue) nor pure white, a floor
under that threshold (on a blank slide Otsu would split sensor noise into "tissue"), then a
morphological closing and opening to join the specimen and drop specks, and small objects
removed. The result is a mask at thumbnail scale and, for any tile grid in level-0 pixels,
the share of each tile the mask covers (a summed-area table: one lookup per tile).

A slide with no tissue is a result (``TissueMap.found`` is False), not an exception.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class TissueMap:
    mask: np.ndarray  # bool, thumbnail resolution (rows x cols)
    level0_size: tuple[int, int]  # (width, height) of the image the mask covers
    threshold: float  # the saturation threshold used (0-1)
    fraction: float  # share of the image that is tissue

    @property
    def found(self) -> bool:
        return bool(self.mask.any())

    def coverage(self, origins: Sequence[tuple[int, int]], size: int) -> np.ndarray:
        """Share of each level-0 tile (``x, y`` of ``origins``, ``size`` a side) on tissue."""
        if not len(origins):
            return np.zeros(0)
        rows, cols = self.mask.shape
        sx, sy = cols / self.level0_size[0], rows / self.level0_size[1]
        table = np.zeros((rows + 1, cols + 1), dtype=np.int64)
        table[1:, 1:] = self.mask.cumsum(0).cumsum(1)
        xy = np.asarray(origins, dtype=np.float64)
        x0 = np.clip(np.floor(xy[:, 0] * sx), 0, cols - 1).astype(int)
        y0 = np.clip(np.floor(xy[:, 1] * sy), 0, rows - 1).astype(int)
        x1 = np.clip(np.ceil((xy[:, 0] + size) * sx), x0 + 1, cols).astype(int)
        y1 = np.clip(np.ceil((xy[:, 1] + size) * sy), y0 + 1, rows).astype(int)
        inside = table[y1, x1] - table[y0, x1] - table[y1, x0] + table[y0, x0]
        return inside / ((x1 - x0) * (y1 - y0))

    def select(self, origins: Sequence[tuple[int, int]], size: int,
               min_coverage: float = 0.05) -> list[tuple[int, int]]:
        """The origins whose tile is at least ``min_coverage`` on tissue."""
        cover = self.coverage(origins, size)
        return [o for o, c in zip(origins, cover, strict=True) if c >= min_coverage]


def find_tissue(thumb: np.ndarray, level0_size: tuple[int, int], *,
                min_saturation: float = 0.07, dark_value: float = 0.15,
                radius: int = 2, min_object: float = 0.0005) -> TissueMap:
    """The tissue mask of an RGB ``thumb`` of an image of ``level0_size`` (width, height).

    ``min_saturation``: the floor under Otsu's threshold; ``dark_value``: HSV value below which
    a pixel is never tissue; ``radius``: of the closing/opening disk, in thumbnail pixels;
    ``min_object``: objects smaller than this share of the thumbnail are dropped."""
    from skimage.filters import threshold_otsu
    from skimage.morphology import closing, disk, opening, remove_small_objects

    sat, val = saturation_value(thumb)
    candidates = val > dark_value
    threshold = min_saturation
    if candidates.sum() > 1 and np.ptp(sat[candidates]) > 0:
        threshold = max(float(threshold_otsu(sat[candidates])), min_saturation)
    mask = (sat > threshold) & candidates
    if radius > 0 and mask.any():
        footprint = disk(radius)
        mask = opening(closing(mask, footprint), footprint)
    smallest = int(min_object * mask.size)
    if smallest > 0 and mask.any():
        mask = remove_small_objects(mask, max_size=smallest)
    return TissueMap(mask.astype(bool), (int(level0_size[0]), int(level0_size[1])),
                     float(threshold), float(mask.mean()))


def saturation_value(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """HSV saturation and value (0-1) of an RGB uint8 image. Computed directly: hue is not
    needed, and skimage's ``rgb2hsv``, which computes it, took 10x longer on a thumbnail."""
    rgb = np.asarray(rgb)[..., :3]
    hi = rgb.max(2).astype(np.float32)
    lo = rgb.min(2).astype(np.float32)
    sat = np.divide(hi - lo, hi, out=np.zeros_like(hi), where=hi > 0)
    return sat, hi / 255.0


def whole_field(level0_size: tuple[int, int]) -> TissueMap:
    """A map that counts everything as specimen: micrographs, where the artifact filter of
    ``medscope patches`` alone decides, as in training."""
    return TissueMap(np.ones((1, 1), dtype=bool), (int(level0_size[0]), int(level0_size[1])),
                     0.0, 1.0)
