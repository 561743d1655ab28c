"""Decode once: every image is decoded and resized a single time into one uint8 array
(N x S x S x C) that all epochs read from; augmentation then runs on tensors."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from medscope.data.io import BadImageError, read_image
from medscope.data.sources import Sample
from medscope.errors import MedscopeError

log = logging.getLogger(__name__)


@dataclass
class DecodedImages:
    pixels: np.ndarray  # N x S x S x C uint8, only the good files
    kept: np.ndarray  # indices into the input samples of the rows of ``pixels``
    bad: list[tuple[Path, str]]  # (file, reason)


def decode_images(
    samples: Sequence[Sample],
    size: int,
    in_chans: int,
    *,
    strict: bool = False,
    max_bad_fraction: float = 1.0,
    workers: int = 4,
    progress: bool = True,
    desc: str = "decode",
) -> DecodedImages:
    """Decode the samples' images in parallel (PIL releases the GIL) into one array.

    A bad file is skipped and reported unless ``strict``; more than ``max_bad_fraction`` bad
    files stop with an error, since the dataset is then likely not what the user meant.
    """
    paths = [s.path for s in samples]
    pixels = np.empty((len(paths), size, size, in_chans), dtype=np.uint8)
    bad: list[tuple[Path, str]] = []

    def load(i: int) -> tuple[int, str | None]:
        try:
            pixels[i] = read_image(paths[i], size, in_chans)
            return i, None
        except BadImageError as exc:
            return i, str(exc)

    ok = np.ones(len(paths), dtype=bool)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = pool.map(load, range(len(paths)))
        for i, reason in tqdm(results, total=len(paths), desc=desc, disable=not progress,
                              leave=False, unit="img"):
            if reason is None:
                continue
            if strict:
                raise MedscopeError(f"{paths[i]}: {reason}")
            log.warning("skipping %s: %s", paths[i], reason)
            bad.append((Path(paths[i]), reason))
            ok[i] = False
    if paths and len(bad) > max_bad_fraction * len(paths):
        raise MedscopeError(
            f"{len(bad)} of {len(paths)} images are unreadable (more than "
            f"{max_bad_fraction:.0%}); first: {bad[0][0]}: {bad[0][1]}"
        )
    kept = np.flatnonzero(ok)
    return DecodedImages(pixels[kept] if bad else pixels, kept, bad)
