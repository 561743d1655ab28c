"""Group-level metrics: patch and group accuracy differ in a known way."""

from __future__ import annotations

import json

import numpy as np
import pytest

from medscope.errors import MedscopeError
from medscope.evaluate.groups import aggregate_groups, group_level_metrics
from medscope.evaluate.metrics import classification_metrics

CLASSES = ["yeast", "hyphae"]


def _patches(label: int, right: int, p_right: float, wrong: int, p_wrong: float):
    """Patches of one group: ``right`` give the true class ``p_right``, ``wrong`` give it
    ``p_wrong`` (< 0.5: misclassified)."""
    rows = [p_right] * right + [p_wrong] * wrong
    probs = np.array([[p, 1 - p] if label == 0 else [1 - p, p] for p in rows])
    return probs, [label] * len(rows)


@pytest.fixture
def data():
    """Eight groups with 3 of 5 patches right (group mean 0.66: right), one group with 2 of
    5 right (mean 0.36: wrong). Patch accuracy 26/45, group accuracy 8/9."""
    probs, labels, groups = [], [], []
    for g in range(9):
        label = 0 if g < 4 or g == 8 else 1
        p, y = _patches(label, 3, 0.9, 2, 0.3) if g < 8 else _patches(label, 2, 0.6, 3, 0.2)
        probs.append(p)
        labels += y
        groups += [f"slide{g}"] * len(y)
    return np.concatenate(probs), labels, groups


def test_patch_and_group_accuracy_differ_as_built(data):
    probs, labels, groups = data
    patch = classification_metrics(labels, probs, CLASSES)
    assert patch["accuracy"] == pytest.approx(26 / 45)
    out = group_level_metrics(probs, labels, groups, CLASSES, unit="slide", n_resamples=200)
    assert out["unit"] == "slide" and out["aggregation"] == "mean"
    assert out["n_groups"] == 9 and out["n_patches"] == 45
    assert out["accuracy"] == pytest.approx(8 / 9)
    assert out["per_class"]["yeast"]["sensitivity"] == pytest.approx(4 / 5)
    assert out["per_class"]["hyphae"]["sensitivity"] == pytest.approx(1.0)
    assert out["per_class"]["hyphae"]["specificity"] == pytest.approx(4 / 5)
    assert out["balanced_accuracy"] == pytest.approx(0.9)
    ci = out["ci"]["accuracy"]
    assert ci["low"] <= 8 / 9 <= ci["high"] and not out["ci"]["grouped"]
    json.dumps(out)  # goes into metrics.json as it is


def test_vote_and_topk_use_the_slide_aggregations(data):
    probs, labels, groups = data
    vote = group_level_metrics(probs, labels, groups, CLASSES, aggregation="vote",
                               n_resamples=50)
    assert vote["accuracy"] == pytest.approx(8 / 9)  # 3 of 5 votes right, 2 of 5 wrong
    top = group_level_metrics(probs, labels, groups, CLASSES, aggregation="topk", k=1,
                              n_resamples=50)
    # the most decisive patch of the odd group is 0.8 for the wrong class
    assert top["accuracy"] == pytest.approx(8 / 9) and top["k"] == 1


def test_aggregate_groups_orders_and_labels():
    probs = np.array([[0.8, 0.2], [0.4, 0.6], [0.6, 0.4]])
    names, g_probs, g_labels = aggregate_groups(probs, [1, 0, 1], ["b", "a", "b"])
    assert names == ["a", "b"] and g_labels.tolist() == [0, 1]
    assert g_probs[1] == pytest.approx([0.7, 0.3])


def test_a_group_with_two_labels_is_a_user_error():
    with pytest.raises(MedscopeError, match="group 'p1' holds patches of classes"):
        aggregate_groups(np.full((2, 2), 0.5), [0, 1], ["p1", "p1"])


def test_lengths_must_match():
    with pytest.raises(MedscopeError, match="must match"):
        aggregate_groups(np.full((2, 2), 0.5), [0], ["a", "b"])


def test_group_refer_threshold_fitted_on_validation_groups(data):
    from medscope.evaluate.groups import fit_group_refer_threshold

    probs, labels, groups = data
    # group confidences: eight right at 0.66, the wrong one at 0.64 (its wrong class)
    threshold = fit_group_refer_threshold(probs, labels, groups, target_accuracy=1.0)
    assert threshold == pytest.approx(0.66)
    out = group_level_metrics(probs, labels, groups, CLASSES, n_resamples=20,
                              refer_threshold=threshold)
    assert out["selective"]["coverage"] == pytest.approx(8 / 9)
    assert out["selective"]["accuracy"] == pytest.approx(1.0)
