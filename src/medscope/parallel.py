"""Run a function over items in worker processes, in order; serially when one worker is asked
for or the job is tiny (no process start-up cost, and easier to debug)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def default_workers(limit: int = 4) -> int:
    return min(limit, os.cpu_count() or 1)


def process_map(fn: Callable[[T], R], items: Iterable[T], workers: int | None = None,
                chunksize: int = 4) -> Iterator[R]:
    items = list(items)
    workers = workers or default_workers()
    if workers <= 1 or len(items) <= chunksize:
        yield from map(fn, items)
        return
    with ProcessPoolExecutor(max_workers=workers) as pool:
        yield from pool.map(fn, items, chunksize=chunksize)
