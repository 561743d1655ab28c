"""Tiling: the scale rule, the grid and its level, and the streamed batches (order, bounded
read-ahead, early stop, failed tiles counted, errors passed on)."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from medscope.data.patches import PatchFilter
from medscope.errors import MedscopeError
from medscope.slides.readers import PillowReader, TileReadError, open_reader
from medscope.slides.tiling import iter_tile_batches, plan_grid, scaled_tile_size
from medscope.slides.tissue import find_tissue
from tests.slides.conftest import tissue_image

KEEP_ALL = PatchFilter(min_tissue=0.0)
WHITE = np.array([236.0, 236.0, 236.0])


class CountingReader(PillowReader):
    """A micrograph whose reads are counted; chosen origins fail or raise."""

    def __init__(self, img, fail=(), boom=()):
        super().__init__("counting.png", image=None if img is None else _pil(img))
        self.reads, self.fail, self.boom = 0, set(fail), set(boom)
        self.lock = threading.Lock()

    def read_region(self, x, y, level, width, height):
        with self.lock:
            self.reads += 1
        if (x, y) in self.fail:
            raise TileReadError("corrupt JPEG data")
        if (x, y) in self.boom:
            raise RuntimeError("a bug")
        return super().read_region(x, y, level, width, height)


def _pil(img):
    from PIL import Image

    return Image.fromarray(img)


def test_scale_rule():
    assert scaled_tile_size(500) == 500
    assert scaled_tile_size(500, train_mpp=0.5) == 500  # slide mpp unknown: no rescale
    assert scaled_tile_size(500, train_mpp=0.5, slide_mpp=0.25) == 1000
    assert scaled_tile_size(500, train_mpp=0.25, slide_mpp=0.5) == 250
    with pytest.raises(MedscopeError):
        scaled_tile_size(4)


def test_grid_reads_the_level_nearest_the_model_scale(slide_tif):
    with open_reader(slide_tif) as reader:
        grid = plan_grid(reader, 256, 64)  # 4x smaller: level 2
        assert (grid.level, grid.downsample, grid.read_size) == (2, 4.0, 64)
        assert grid.n_grid == 6 * 4 and len(grid.origins) == 24
        grid = plan_grid(reader, 256, 100)  # 2.56x: level 1, then resized
        assert (grid.level, grid.read_size) == (1, 128)
        tissue = find_tissue(reader.thumbnail(256), reader.level_dimensions[0])
        on_tissue = plan_grid(reader, 256, 64, tissue=tissue)
        assert 0 < len(on_tissue.origins) < on_tissue.n_grid


def test_batches_come_in_grid_order_with_every_tile_accounted():
    reader = CountingReader(tissue_image(1000, 600, (0, 0, 1000, 600)), fail={(300, 200)})
    grid = plan_grid(reader, 100, 32)
    batches = list(iter_tile_batches(reader, grid, 32, background=WHITE, flt=KEEP_ALL,
                                     batch_size=7, workers=3))
    records = [r for b in batches for r in b.records]
    assert [(r.x, r.y) for r in records] == list(grid.origins)
    assert all(len(b.pixels) == len(b.kept) <= 7 for b in batches)
    assert all(b.pixels.shape[1:] == (32, 32, 3) for b in batches if len(b.pixels))
    (failed,) = [r for r in records if r.verdict == "failed"]
    assert (failed.x, failed.y) == (300, 200) and "corrupt" in failed.detail
    assert sum(len(b.kept) for b in batches) == len(grid.origins) - 1


def test_read_ahead_is_bounded_while_the_consumer_is_slow():
    reader = CountingReader(tissue_image(2000, 2000, (0, 0, 2000, 2000)))
    grid = plan_grid(reader, 100, 16)  # 400 tiles
    stream = iter_tile_batches(reader, grid, 16, background=WHITE, flt=KEEP_ALL, batch_size=4,
                               workers=1, queue_size=2)
    next(stream)
    time.sleep(0.5)  # the producer runs ahead until the queue is full, then waits
    # consumed 4 + queue 2 x 4 + one batch waiting to be put + at most 4 + 2 in flight
    assert reader.reads <= 4 + 8 + 4 + 6
    rest = sum(len(b.kept) for b in stream)
    assert 4 + rest == 400


def test_closing_the_stream_early_stops_the_reader_thread():
    reader = CountingReader(tissue_image(2000, 2000, (0, 0, 2000, 2000)))
    grid = plan_grid(reader, 100, 16)
    stream = iter_tile_batches(reader, grid, 16, background=WHITE, flt=KEEP_ALL, batch_size=4,
                               queue_size=1)
    next(stream)
    stream.close()
    assert not any(t.name == "medscope-tiles" for t in threading.enumerate())
    assert reader.reads < 400


def test_a_bug_in_reading_reaches_the_consumer():
    reader = CountingReader(tissue_image(600, 600, (0, 0, 600, 600)), boom={(200, 200)})
    grid = plan_grid(reader, 100, 16)
    with pytest.raises(RuntimeError, match="a bug"):
        list(iter_tile_batches(reader, grid, 16, background=WHITE, flt=KEEP_ALL))


def test_filter_verdicts_are_those_of_medscope_patches():
    img = tissue_image(400, 200, (0, 0, 200, 200))  # left half tissue, right half empty
    reader = CountingReader(img)
    grid = plan_grid(reader, 100, 16)
    records = [r for b in iter_tile_batches(reader, grid, 16, background=WHITE)
               for r in b.records]
    verdicts = {(r.x, r.y): r.verdict for r in records}
    assert verdicts[(0, 0)] == "ok" and verdicts[(300, 100)] == "empty"


def test_single_channel_models_get_grey_tiles():
    reader = CountingReader(tissue_image(200, 200, (0, 0, 200, 200)))
    grid = plan_grid(reader, 100, 24)
    (batch,) = iter_tile_batches(reader, grid, 24, background=WHITE, flt=KEEP_ALL,
                                 channels=1)
    assert batch.pixels.shape == (4, 24, 24, 1)
