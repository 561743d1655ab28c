"""Multi-label iterative stratification and k-fold, group-aware."""

from collections import Counter

import numpy as np
import pytest

from medscope.data.splits import iterative_stratification, kfold_indices, split_indices
from medscope.errors import MedscopeError


def _multilabel(n=600, k=5, seed=0):
    rng = np.random.default_rng(seed)
    rates = np.array([0.5, 0.2, 0.1, 0.05, 0.03])[:k]
    return (rng.random((n, k)) < rates).astype(int)


def test_multilabel_split_keeps_every_label_share():
    y = _multilabel()
    assign = split_indices(y, None, 0.2, 0.2, seed=0)
    assert Counter(assign.tolist()) == pytest.approx({"train": 360, "val": 120, "test": 120},
                                                     abs=6)
    for label in range(y.shape[1]):
        total = y[:, label].sum()
        for name, share in (("val", 0.2), ("test", 0.2)):
            got = y[assign == name, label].sum()
            assert abs(got - share * total) <= 1.5, (label, name, got, total)


def test_iterative_stratification_beats_random_on_rare_labels():
    y = _multilabel(seed=1)
    folds = iterative_stratification(y, [0.5, 0.5], seed=0)
    rare = y[:, 4]
    assert abs(rare[folds == 0].sum() - rare[folds == 1].sum()) <= 1


def test_multilabel_groups_never_cross():
    y = _multilabel(300)
    groups = [f"patient{i // 3}" for i in range(300)]
    assign = split_indices(y, groups, 0.1, 0.2, seed=2)
    seen: dict[str, set] = {}
    for g, a in zip(groups, assign, strict=True):
        seen.setdefault(g, set()).add(a)
    assert all(len(s) == 1 for s in seen.values())


def test_kfold_stratified_and_deterministic():
    labels = [0] * 50 + [1] * 25 + [2] * 10
    folds = kfold_indices(labels, None, 5, seed=0)
    assert np.array_equal(folds, kfold_indices(labels, None, 5, seed=0))
    assert sorted(Counter(folds.tolist()).values()) == [17] * 5
    for f in range(5):
        assert Counter(np.asarray(labels)[folds == f].tolist()) == {0: 10, 1: 5, 2: 2}


def test_kfold_keeps_groups_whole():
    groups = [f"slide{i // 6}" for i in range(240)]
    labels = [(i // 6) % 3 for i in range(240)]
    folds = kfold_indices(labels, groups, 4, seed=1)
    by_group: dict[str, set] = {}
    for g, f in zip(groups, folds, strict=True):
        by_group.setdefault(g, set()).add(int(f))
    assert all(len(s) == 1 for s in by_group.values())
    assert set(folds.tolist()) == {0, 1, 2, 3}


def test_kfold_multilabel():
    y = _multilabel(400)
    folds = kfold_indices(y, None, 4, seed=0)
    for f in range(4):
        assert abs(y[folds == f, 0].sum() - y[:, 0].sum() / 4) <= 2


def test_class_too_small_for_folds_is_a_clear_error():
    with pytest.raises(MedscopeError, match="class 'rare' has 3 image.*5-fold.*at least 5"):
        kfold_indices([0] * 20 + [1] * 3, None, 5, 0, class_names=["common", "rare"])


def test_too_few_groups_for_folds():
    with pytest.raises(MedscopeError, match="only 2 group"):
        kfold_indices([0, 1] * 10, ["a"] * 10 + ["b"] * 10, 3, 0)


def test_a_class_needs_k_groups_not_k_images():
    labels = [0, 0, 0, 0, 1, 1, 1, 1]
    groups = ["a", "a", "b", "b", "c", "d", "e", "f"]
    with pytest.raises(MedscopeError, match="class 'x' spans only 2 group"):
        kfold_indices(labels, groups, 3, 0, ["x", "y"])
    folds = kfold_indices(labels, groups, 2, 0, ["x", "y"])
    assert folds[0] == folds[1] and folds[2] == folds[3]


def test_grouped_holdout_on_classes_smaller_than_one_over_fraction():
    labels = np.repeat([0, 1, 2], 8)
    groups = [f"g{i // 2}" for i in range(len(labels))]  # pairs of copies
    assign = split_indices(labels, groups, 0.0, 0.1, 0, ["a", "b", "c"])
    held = {g for g, a in zip(groups, assign, strict=True) if a == "test"}
    assert 0 < (assign == "test").sum() < len(labels) / 4
    assert not held & {g for g, a in zip(groups, assign, strict=True) if a == "train"}
