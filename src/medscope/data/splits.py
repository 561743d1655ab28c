"""Stratified, group-aware train/val/test splits and k folds: no group (source micrograph,
patient) is ever in two of the sets, so patches of one slide are never both trained and tested on.

Multi-class labels are stratified by scikit-learn; multi-label targets (an N x K 0/1 matrix) by
iterative stratification (Sechidis, Tsoumakas & Vlahavas, 2011), which places the samples of the
rarest label first so that every label keeps its share in every set."""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Sequence

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold, train_test_split

from medscope.errors import MedscopeError


def split_indices(
    labels: Sequence[int],
    groups: Sequence[str | None] | None,
    val_fraction: float,
    test_fraction: float,
    seed: int,
    class_names: Sequence[str] | None = None,
) -> np.ndarray:
    """An array of 'train' / 'val' / 'test', one per sample. ``labels``: N class indices, or an
    N x K 0/1 matrix (multi-label)."""
    labels = np.asarray(labels)
    n_sets = 1 + (val_fraction > 0) + (test_fraction > 0)
    _require_per_class(labels, n_sets, "a train/val/test split", class_names)
    group_ids = _group_ids(groups, len(labels))
    if groups is not None:
        _require_groups_per_class(labels, group_ids, n_sets, class_names,
                                  "a train/val/test split" if n_sets == 3 else "the split")
    if labels.ndim == 2:
        ratios = [1 - val_fraction - test_fraction, val_fraction, test_fraction]
        folds = _grouped_iterative(labels, group_ids, ratios, seed)
        return np.array(["train", "val", "test"], dtype=object)[folds]
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
    # sklearn refuses more splits than the largest class has members: on tiny data the held-out
    # part is then a little larger than asked rather than an error.
    largest = max(np.unique(labels, return_counts=True)[1])
    n_splits = max(2, min(round(1 / fraction), n_unique_groups, largest))
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    with warnings.catch_warnings():  # a class smaller than n_splits: expected on small data
        warnings.filterwarnings("ignore", "The least populated class", UserWarning)
        _, held = next(splitter.split(np.zeros(len(labels)), labels, groups))
    mask = np.zeros(len(labels), dtype=bool)
    mask[held] = True
    return mask


def kfold_indices(
    labels: Sequence[int] | np.ndarray,
    groups: Sequence[str | None] | None,
    k: int,
    seed: int,
    class_names: Sequence[str] | None = None,
) -> np.ndarray:
    """The fold (0 .. k-1) of every sample: stratified, and group-aware when groups are known
    (every sample of a group lands in the same fold)."""
    labels = np.asarray(labels)
    if k < 2:
        raise MedscopeError(f"--folds {k}: k-fold needs at least 2 folds")
    _require_per_class(labels, k, f"{k}-fold cross-validation", class_names)
    group_ids = _group_ids(groups, len(labels))
    n_groups = len(set(group_ids.tolist()))
    if n_groups < k:
        raise MedscopeError(f"only {n_groups} group(s); {k} folds need at least {k}")
    _require_groups_per_class(labels, group_ids, k, class_names)
    if labels.ndim == 2:
        return _grouped_iterative(labels, group_ids, [1 / k] * k, seed)
    folds = np.empty(len(labels), dtype=np.int64)
    if groups is None or n_groups == len(labels):
        splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
        parts = splitter.split(np.zeros(len(labels)), labels)
    else:
        splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
        parts = splitter.split(np.zeros(len(labels)), labels, group_ids)
    for fold, (_, held) in enumerate(parts):
        folds[held] = fold
    return folds


def iterative_stratification(
    targets: np.ndarray, ratios: Sequence[float], seed: int, sizes: np.ndarray | None = None
) -> np.ndarray:
    """The set (index into ``ratios``) of each item; ``targets`` holds per item the count of
    each label (items may be groups of several samples, weighed by ``sizes``)."""
    rng = np.random.default_rng(seed)
    targets = np.asarray(targets, dtype=np.float64)
    n_items = len(targets)
    sizes = np.ones(n_items) if sizes is None else np.asarray(sizes, dtype=np.float64)
    ratios = np.asarray(ratios, dtype=np.float64) / np.sum(ratios)
    want_label = np.outer(ratios, targets.sum(0))  # sets x labels still wanted
    want_size = ratios * sizes.sum()
    assign = np.full(n_items, -1, dtype=np.int64)
    left = np.ones(n_items, dtype=bool)
    order = rng.permutation(n_items)  # random tie-breaking between otherwise equal items
    while left.any():
        remaining = targets[left].astype(bool).sum(0)
        if not remaining.any():
            break
        # The rarest label still unplaced: its few samples decide most about balance.
        label = int(np.argmin(np.where(remaining > 0, remaining, np.inf)))
        for item in order[left[order] & (targets[order, label] > 0)]:
            best = _best_set(want_label[:, label], want_size, rng)
            assign[item], left[item] = best, False
            want_label[best] -= targets[item]
            want_size[best] -= sizes[item]
    for item in order[left[order]]:  # items without any label: fill by size
        best = _best_set(want_size, want_size, rng)
        assign[item] = best
        want_size[best] -= sizes[item]
    return assign


def _best_set(primary: np.ndarray, secondary: np.ndarray, rng: np.random.Generator) -> int:
    """The set that most wants the label; ties by size wanted, then at random."""
    cand = np.flatnonzero(primary == primary.max())
    if len(cand) > 1:
        cand = cand[secondary[cand] == secondary[cand].max()]
    return int(rng.choice(cand))


def _grouped_iterative(labels: np.ndarray, group_ids: np.ndarray, ratios: Sequence[float],
                       seed: int) -> np.ndarray:
    """Iterative stratification over groups: each group is one item carrying its samples'
    label counts, so a group is never split."""
    uniq, inverse = np.unique(group_ids.astype(str), return_inverse=True)
    per_group = np.zeros((len(uniq), labels.shape[1]))
    np.add.at(per_group, inverse, labels)
    sizes = np.bincount(inverse, minlength=len(uniq))
    return iterative_stratification(per_group, ratios, seed, sizes)[inverse]


def _require_per_class(labels: np.ndarray, n: int, what: str,
                       class_names: Sequence[str] | None) -> None:
    """A clear error before any training when a class is too small for the split or folds."""
    counts = (dict(enumerate(labels.sum(0).tolist())) if labels.ndim == 2
              else Counter(labels.tolist()))
    for label, count in sorted(counts.items()):
        if count < n:
            name = class_names[label] if class_names else label
            raise MedscopeError(f"class {name!r} has {count} image(s); {what} needs at "
                                f"least {n}")


def _require_groups_per_class(labels: np.ndarray, group_ids: np.ndarray, k: int,
                              class_names: Sequence[str] | None, what: str | None = None
                              ) -> None:
    """Whole groups go to one fold, so a class needs k groups (not k images) to be in every
    test fold."""
    columns = labels.T if labels.ndim == 2 else [labels == c for c in np.unique(labels)]
    keys = range(labels.shape[1]) if labels.ndim == 2 else np.unique(labels).tolist()
    for key, member in zip(keys, columns, strict=True):
        n_groups = len(set(group_ids[np.asarray(member, dtype=bool)].tolist()))
        if n_groups < k:
            name = class_names[key] if class_names else key
            raise MedscopeError(f"class {name!r} spans only {n_groups} group(s) (a group and "
                                f"a set of identical images count once); "
                                f"{what or f'{k}-fold cross-validation'} needs at least {k}")
