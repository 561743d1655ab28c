"""Stratified, group-aware train/val/test splits: no group (source micrograph, patient) is ever
in two of the sets, so patches of one slide are never both trained and tested on."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold, train_test_split

from medscope.errors import MedscopeError


def split_indices(
    labels: Sequence[int],
    groups: Sequence[str | None] | None,
    val_fraction: float,
    test_fraction: float,
    seed: int,
    class_names: Sequence[str] | None = None,
) -> np.ndarray:
    """An array of 'train' / 'val' / 'test', one per sample."""
    labels = np.asarray(labels)
    n_sets = 1 + (val_fraction > 0) + (test_fraction > 0)
    for label, count in Counter(labels.tolist()).items():
        if count < n_sets:
            name = class_names[label] if class_names else label
            raise MedscopeError(
                f"class {name!r} has {count} image(s); a train/val/test split needs at least "
                f"{n_sets}"
            )
    group_ids = _group_ids(groups, len(labels))
    assign = np.full(len(labels), "train", dtype=object)
    rest = np.arange(len(labels))
    if test_fraction > 0:
        test = _holdout(labels[rest], group_ids[rest], test_fraction, seed)
        assign[rest[test]] = "test"
        rest = rest[~test]
    if val_fraction > 0:
        val = _holdout(labels[rest], group_ids[rest], val_fraction / (1 - test_fraction), seed + 1)
        assign[rest[val]] = "val"
    return assign


def _group_ids(groups: Sequence[str | None] | None, n: int) -> np.ndarray:
    """Ungrouped samples are each their own group."""
    if groups is None:
        return np.arange(n).astype(str)
    return np.array([g if g is not None else f"__sample{i}" for i, g in enumerate(groups)],
                    dtype=object)


def _holdout(labels: np.ndarray, groups: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """A boolean mask of about ``fraction`` of the samples, stratified, whole groups only."""
    n_unique_groups = len(set(groups.tolist()))
    if n_unique_groups == len(labels):
        n_classes = len(set(labels.tolist()))
        # Stratification needs one image of every class on each side.
        n_held = max(n_classes, round(fraction * len(labels)))
        if len(labels) - n_held < n_classes:
            raise MedscopeError(f"{len(labels)} images are too few to hold out {fraction:.0%} "
                                f"with all {n_classes} classes on both sides")
        _, held = train_test_split(np.arange(len(labels)), test_size=n_held,
                                   stratify=labels, random_state=seed)
        mask = np.zeros(len(labels), dtype=bool)
        mask[held] = True
        return mask
    n_splits = max(2, min(round(1 / fraction), n_unique_groups))
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    _, held = next(splitter.split(np.zeros(len(labels)), labels, groups))
    mask = np.zeros(len(labels), dtype=bool)
    mask[held] = True
    return mask
