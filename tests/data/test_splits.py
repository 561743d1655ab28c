from collections import Counter

import numpy as np
import pytest

from medscope.data.splits import split_indices
from medscope.errors import MedscopeError


def test_stratified_fractions_and_determinism():
    labels = [0] * 60 + [1] * 30 + [2] * 10
    a = split_indices(labels, None, 0.1, 0.2, seed=3)
    assert np.array_equal(a, split_indices(labels, None, 0.1, 0.2, seed=3))
    assert not np.array_equal(a, split_indices(labels, None, 0.1, 0.2, seed=4))
    counts = Counter(a.tolist())
    assert counts == {"train": 70, "val": 10, "test": 20}
    test_labels = Counter(np.asarray(labels)[a == "test"].tolist())
    assert test_labels == {0: 12, 1: 6, 2: 2}  # class proportions kept


def test_groups_never_cross_sets():
    rng = np.random.default_rng(0)
    groups = [f"slide{i // 9}" for i in range(450)]  # 50 slides x 9 patches
    labels = [(i // 9) % 5 for i in range(450)]
    assign = split_indices(labels, groups, 0.1, 0.2, seed=rng.integers(100))
    by_group: dict[str, set] = {}
    for g, a in zip(groups, assign, strict=True):
        by_group.setdefault(g, set()).add(a)
    assert all(len(s) == 1 for s in by_group.values())
    assert set(assign) == {"train", "val", "test"}
    share = Counter(assign.tolist())["test"] / len(assign)
    assert 0.12 <= share <= 0.3


def test_too_few_images_in_a_class():
    with pytest.raises(MedscopeError, match="'rare' has 2 image"):
        split_indices([0] * 10 + [1] * 2, None, 0.1, 0.2, 0, class_names=["common", "rare"])
