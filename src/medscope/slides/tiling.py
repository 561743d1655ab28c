"""Tiles at the model's training scale, the artifact filter of ``medscope patches`` on each,
and a stream of batches read in the background.

Scale rule: a tile is ``tile_size`` level-0 pixels a side (the patch size the training data
was cut at, in source pixels). When both the training data's microns per pixel and the
slide's are known, the side becomes ``tile_size * train_mpp / slide_mpp`` level-0 pixels so a
tile covers the same physical field as a training patch. The tile is read from the pyramid
level nearest that scale that is not coarser than the model input (``readers.nearest_level``),
filtered there, then resized to the model input as training images were (bilinear,
``reducing_gap=2``).

Filter: the thresholds and verdicts of ``medscope.data.patches`` (``PatchFilter``,
``patch_stats``, ``verdict``), with the background colour estimated once per image from its
thumbnail, as ``medscope patches`` estimates it once per micrograph. A region that fails to
decode is counted as ``failed`` and skipped.

Streaming: one producer thread walks the grid in order, keeps at most a few tile reads in
flight in a small thread pool (OpenSlide, tifffile and Pillow release the GIL while
decoding), and puts finished batches on a bounded queue. Reading overlaps the consumer's
inference; memory is bounded by ``queue_size`` batches plus the reads in flight, whatever the
slide's size. Closing the iterator early stops the producer.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from medscope.data.patches import PatchFilter, PatchStats, patch_stats, tile_origins, verdict
from medscope.errors import MedscopeError
from medscope.slides.readers import SlideReader, TileReadError, nearest_level
from medscope.slides.tissue import TissueMap

KEPT = "ok"
FAILED = "failed"


@dataclass(frozen=True)
class TileGrid:
    """Where the tiles are and how to read them."""

    tile_size: int  # level-0 pixels a side
    stride: int  # level-0 pixels between origins
    level: int  # the pyramid level read
    downsample: float  # of that level
    read_size: int  # pixels a side read at that level
    origins: tuple[tuple[int, int], ...]  # level-0 top-left corners of the tiles to read
    n_grid: int  # whole tiles in the image before the tissue selection


@dataclass
class TileRecord:
    """One tile: where it is, the filter's verdict (``ok``, a drop reason, or ``failed``)
    and, once classified, its probabilities and whether it looked unlike the training
    images."""

    x: int
    y: int
    size: int
    verdict: str
    detail: str = ""
    stats: PatchStats | None = None
    probs: np.ndarray | None = None
    unusual: bool = False  # flagged by the out-of-distribution check: not aggregated

    @property
    def kept(self) -> bool:
        return self.verdict == KEPT


@dataclass
class TileBatch:
    """The next stretch of the grid: every tile handled (in grid order) and the pixels of
    those kept (``pixels[i]`` belongs to ``kept[i]``)."""

    pixels: np.ndarray  # N x S x S x C uint8, N may be 0
    kept: list[TileRecord] = field(default_factory=list)
    records: list[TileRecord] = field(default_factory=list)


def scaled_tile_size(tile_size: int, train_mpp: float | None = None,
                     slide_mpp: float | None = None) -> int:
    """Level-0 pixels a side for a tile covering what a ``tile_size`` training patch did."""
    if tile_size < 8:
        raise MedscopeError(f"tile size must be at least 8 pixels (got {tile_size})")
    if train_mpp and slide_mpp:
        return max(8, round(tile_size * train_mpp / slide_mpp))
    return int(tile_size)


def plan_grid(reader: SlideReader, tile_size: int, input_size: int, *,
              stride: int | None = None, tissue: TissueMap | None = None,
              min_coverage: float = 0.05) -> TileGrid:
    """The grid of whole tiles (``tile_size`` level-0 pixels, already scaled), kept where
    ``tissue`` covers at least ``min_coverage`` of a tile (everywhere without a map)."""
    stride = stride or tile_size
    if stride < 1:
        raise MedscopeError(f"tile stride must be at least 1 (got {stride})")
    width, height = reader.level_dimensions[0]
    level = nearest_level(reader.level_downsamples, tile_size / input_size)
    downsample = reader.level_downsamples[level]
    origins = list(tile_origins(width, height, tile_size, stride))
    n_grid = len(origins)
    if tissue is not None:
        origins = tissue.select(origins, tile_size, min_coverage)
    read_size = max(1, round(tile_size / downsample))
    return TileGrid(tile_size, stride, level, downsample, read_size, tuple(origins), n_grid)


def to_model_input(tile: np.ndarray, input_size: int, channels: int) -> np.ndarray:
    """RGB tile -> ``input_size`` square, 1 or 3 channels, as training images were read."""
    img = Image.fromarray(tile)
    if channels == 1:
        img = img.convert("L")
    if img.size != (input_size, input_size):
        img = img.resize((input_size, input_size), Image.BILINEAR, reducing_gap=2.0)
    arr = np.asarray(img, dtype=np.uint8)
    return arr[:, :, None] if arr.ndim == 2 else arr


def read_tile(reader: SlideReader, grid: TileGrid, origin: tuple[int, int], input_size: int,
              channels: int, background: np.ndarray, flt: PatchFilter
              ) -> tuple[TileRecord, np.ndarray | None]:
    """Read, filter and (if kept) resize one tile; a decode failure is a ``failed`` record."""
    x, y = origin
    try:
        tile = reader.read_region(x, y, grid.level, grid.read_size, grid.read_size)
    except TileReadError as exc:
        return TileRecord(x, y, grid.tile_size, FAILED, str(exc)), None
    stats = patch_stats(tile, background, flt)
    reason = verdict(stats, flt)
    record = TileRecord(x, y, grid.tile_size, reason, stats=stats)
    if reason != KEPT:
        return record, None
    return record, to_model_input(tile, input_size, channels)


class _Failure:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


_DONE = object()


def iter_tile_batches(reader: SlideReader, grid: TileGrid, input_size: int, *,
                      background: np.ndarray, flt: PatchFilter | None = None,
                      channels: int = 3, batch_size: int = 32, workers: int = 2,
                      queue_size: int = 4) -> Iterator[TileBatch]:
    """Batches of at most ``batch_size`` kept tiles, in grid order, read in the background.
    Dropped and failed tiles ride along in ``records`` of the batch they fall in."""
    if batch_size < 1 or workers < 1 or queue_size < 1:
        raise MedscopeError("batch_size, workers and queue_size must be at least 1")
    flt = flt or PatchFilter()
    batches: queue.Queue = queue.Queue(maxsize=queue_size)
    stop = threading.Event()

    def job(origin: tuple[int, int]):
        return read_tile(reader, grid, origin, input_size, channels, background, flt)

    def produce() -> None:
        try:
            for batch in _batches(grid.origins, job, batch_size, workers, input_size,
                                  channels, stop):
                if not _put(batches, batch, stop):
                    return
            _put(batches, _DONE, stop)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, re-raised there
            _put(batches, _Failure(exc), stop)

    thread = threading.Thread(target=produce, name="medscope-tiles", daemon=True)
    thread.start()
    try:
        while True:
            item = batches.get()
            if item is _DONE:
                return
            if isinstance(item, _Failure):
                raise item.exc
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full queue
            with contextlib.suppress(queue.Empty):
                batches.get(timeout=0.05)
        thread.join()


def _put(q: queue.Queue, item, stop: threading.Event) -> bool:
    """Put, waiting for room, unless the consumer has gone; False when it has."""
    while not stop.is_set():
        try:
            q.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


def _batches(origins: Sequence[tuple[int, int]], job, batch_size: int, workers: int,
             input_size: int, channels: int, stop: threading.Event) -> Iterator[TileBatch]:
    """Tile reads in a pool, at most ``batch_size + 2 * workers`` in flight, gathered in
    order into batches of ``batch_size`` kept tiles."""
    window = batch_size + 2 * workers
    pending: deque[Future] = deque()
    records: list[TileRecord] = []
    kept: list[TileRecord] = []
    pixels: list[np.ndarray] = []
    it = iter(origins)
    with ThreadPoolExecutor(workers, thread_name_prefix="medscope-read") as pool:
        while not stop.is_set():
            while len(pending) < window and (origin := next(it, None)) is not None:
                pending.append(pool.submit(job, origin))
            if not pending:
                break
            record, tile = pending.popleft().result()
            records.append(record)
            if tile is not None:
                kept.append(record)
                pixels.append(tile)
            if len(pixels) == batch_size:
                yield TileBatch(np.stack(pixels), kept, records)
                records, kept, pixels = [], [], []
        for f in pending:
            f.cancel()
    if records and not stop.is_set():
        empty = np.zeros((0, input_size, input_size, channels), dtype=np.uint8)
        yield TileBatch(np.stack(pixels) if pixels else empty, kept, records)
