"""Refer what the model has never seen: the out-of-distribution check fitted at training
(``evaluate.ood``, stored in the checkpoint as ``ood``) applied to what predict, serve and the
slide path are given, and a check that a single image can hold a specimen at all (not blank,
not degenerate), each with the reason a clinician reads.

Confidence is high on images unlike any training image (a fungi model calls blood cells
"budding yeast, 95 %"), so the refer rule asks a second question: is this image like the
training images? The check measures the per-channel mean and standard deviation of the
model's last feature map (Mahalanobis distance, threshold flagging about 5 % of validation
images); an ONNX export has no features to measure, so its predictions carry no such flag. An
ensemble calls an image unusual when most of its members with a check do.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from PIL import Image

from medscope.evaluate.ood import check_ood_state, ood_flags
from medscope.predictor import Classifier, Predictor
from medscope.slides.aggregate import UNLIKE_TRAINING

__all__ = ["BLANK", "DEGENERATE", "OOD_FEATURES", "UNLIKE_TRAINING", "file_problem",
           "image_problem", "ood_checks", "unusual"]

OOD_FEATURES = "feature-map channel mean and std"  # what the stored check was fitted on
DEGENERATE = "degenerate image"
BLANK = "blank image"
GLANCE = 64  # side of the thumbnail a file's blankness is judged on
BLANK_STD = 2.0  # grey levels: below this spread the frame holds no structure at all
MIN_SIDE = 8  # an image thinner than this (a 1 x 1 pixel, a 20,000 x 1 strip) is degenerate
MAX_ASPECT = 20.0


def ood_checks(models: Sequence[Classifier]) -> list[dict[str, Any] | None]:
    """Each model's fitted check (None where it has none, or one fitted on other features
    than ``Predictor.features_from_pixels`` gives, or an ONNX model that cannot be measured)."""
    return [check_ood_state(m.meta["ood"])
            if isinstance(m, Predictor) and (m.meta.get("ood") or {}).get("features")
            == OOD_FEATURES else None for m in models]


def unusual(checks: Sequence[dict[str, Any] | None],
            features: Sequence[np.ndarray | None]) -> np.ndarray | None:
    """Per image: unlike the training images, by the majority of the models with a check;
    None when no model has one."""
    votes = [ood_flags(c, features=f) for c, f in zip(checks, features, strict=True)
             if c is not None and f is not None]
    if not votes:
        return None
    return np.mean(votes, axis=0) > 0.5


def image_problem(pixels: np.ndarray) -> str | None:
    """Why a single image cannot hold a specimen, None when it may: a degenerate shape (a
    1 x 1 pixel, a 20,000 x 1 strip) or a blank frame (one flat colour, e.g. a black frame).
    Only these extremes: the patch filter's thresholds (dark share, tissue share) would refer
    whole images that are legitimately dark, such as chest X-rays. ``pixels``: H x W x C uint8
    as decoded, before any resize."""
    height, width = pixels.shape[:2]
    if is_degenerate(width, height):
        return DEGENERATE
    return BLANK if is_blank(pixels) else None


def is_degenerate(width: int, height: int) -> bool:
    """Too thin to hold a specimen: under ``MIN_SIDE`` or more than ``MAX_ASPECT`` to one."""
    return min(height, width) < MIN_SIDE or max(height, width) / max(min(height, width), 1) \
        > MAX_ASPECT


def is_blank(pixels: np.ndarray) -> bool:
    """One flat colour: no structure at all, at any scale."""
    return pixels.size == 0 or float(np.asarray(pixels, np.float32).std()) < BLANK_STD


def file_problem(path: Path | BinaryIO) -> str | None:
    """``image_problem`` of an image file (a path, or an upload's bytes as a file object),
    from its header and a small thumbnail (a JPEG is decoded at reduced scale), None where
    Pillow cannot read it (DICOM: decoding decides)."""
    try:
        with Image.open(path) as img:
            width, height = img.size
            img.draft("RGB", (GLANCE, GLANCE))
            small = img.convert("RGB")
            small.thumbnail((GLANCE, GLANCE))
            pixels = np.asarray(small)
    except (OSError, ValueError, Image.DecompressionBombError):
        return None
    if is_degenerate(width, height):
        return DEGENERATE
    return BLANK if is_blank(pixels) else None
