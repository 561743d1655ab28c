import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score, roc_auc_score

from medscope.errors import MedscopeError
from medscope.evaluate.bootstrap import _indicators, _resample_metrics, _weighted_auc, bootstrap_ci
from medscope.evaluate.metrics import classification_metrics, multilabel_metrics

CLASSES = ["a", "b", "c"]


def _data(n=120, seed=0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    logits = rng.normal(size=(n, 3)) + 1.2 * np.eye(3)[y]
    return y, np.exp(logits) / np.exp(logits).sum(1, keepdims=True)


def _inside(interval, value):
    return interval["low"] <= value <= interval["high"]


def test_interval_contains_the_point_estimate():
    y, probs = _data()
    m = classification_metrics(y, probs, CLASSES)
    ci = bootstrap_ci(y, probs, CLASSES, n_resamples=300)
    assert ci["level"] == 0.95 and ci["n_resamples"] == 300 and ci["grouped"] is False
    assert _inside(ci["accuracy"], m["accuracy"])
    assert _inside(ci["f1_macro"], m["f1_macro"])
    assert _inside(ci["balanced_accuracy"], m["balanced_accuracy"])
    assert _inside(ci["roc_auc_macro"], m["roc_auc_macro"])
    for name in CLASSES:
        for key in ("sensitivity", "specificity"):
            assert _inside(ci["per_class"][name][key], m["per_class"][name][key])
    assert ci["accuracy"]["high"] - ci["accuracy"]["low"] > 0.05


def test_same_seed_same_interval_other_seed_other_interval():
    y, probs = _data()
    first = bootstrap_ci(y, probs, CLASSES, n_resamples=200, seed=7)
    assert bootstrap_ci(y, probs, CLASSES, n_resamples=200, seed=7) == first
    assert bootstrap_ci(y, probs, CLASSES, n_resamples=200, seed=8) != first


def test_groups_of_duplicated_images_give_wider_intervals():
    y, probs = _data(n=40)
    # every image five times: the naive bootstrap believes it has 200 independent images
    y5, probs5, groups = np.repeat(y, 5), np.repeat(probs, 5, axis=0), np.repeat(np.arange(40), 5)
    naive = bootstrap_ci(y5, probs5, CLASSES, n_resamples=400)
    grouped = bootstrap_ci(y5, probs5, CLASSES, groups=groups, n_resamples=400)
    assert grouped["grouped"] is True

    def width(ci, key):
        return ci[key]["high"] - ci[key]["low"]

    for key in ("accuracy", "f1_macro", "roc_auc_macro"):
        assert width(grouped, key) > 1.5 * width(naive, key)


def test_weighted_auc_equals_sklearn_on_a_resample_with_ties():
    rng = np.random.default_rng(1)
    is_pos, score = rng.random(60) < 0.4, np.round(rng.random(60), 1)
    idx = rng.integers(0, 60, 60)
    weights = np.bincount(idx, minlength=60)[None].astype(float)
    assert _weighted_auc(weights, is_pos, score)[0] == pytest.approx(
        roc_auc_score(is_pos[idx], score[idx]))


def test_resampled_balanced_accuracy_is_sklearns_even_with_a_class_drawn_out():
    y, probs = _data(n=30)
    truth, pred = _indicators(y, probs, False, None)
    rng = np.random.default_rng(3)
    weights = rng.multinomial(30, np.full(30, 1 / 30), size=20).astype(float)
    weights[0, y == 2] = 0  # this resample holds no image of class c
    got = _resample_metrics(weights, truth, pred, False)["balanced_accuracy"]
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn warns of a class predicted but absent
        expected = [balanced_accuracy_score(y, probs.argmax(1), sample_weight=w)
                    for w in weights]
    assert got == pytest.approx(expected)


def test_undefined_metrics_are_left_out_or_none():
    y, probs = _data(n=30)
    keep = y != 2  # class c never occurs: no AUC, no sensitivity for c
    ci = bootstrap_ci(y[keep], probs[keep], CLASSES, n_resamples=100)
    assert "roc_auc_macro" not in ci
    assert ci["per_class"]["c"]["sensitivity"] is None
    assert ci["per_class"]["c"]["specificity"] is not None


def test_multilabel_intervals():
    rng = np.random.default_rng(2)
    y = (rng.random((80, 3)) < 0.5).astype(int)
    y[:, 2] = 0
    probs = np.clip(0.5 * y + rng.random((80, 3)) * 0.6, 0, 1)
    m = multilabel_metrics(y, probs, ["x", "y", "z"])
    ci = bootstrap_ci(y, probs, ["x", "y", "z"], multilabel=True, n_resamples=300)
    assert _inside(ci["accuracy"], m["accuracy"]) and _inside(ci["f1_macro"], m["f1_macro"])
    assert _inside(ci["roc_auc_macro"], m["roc_auc_macro"])
    assert ci["per_class"]["z"]["sensitivity"] is None
    assert "balanced_accuracy" not in ci  # single-label only, as the point estimate


def test_empty_input_is_a_user_error():
    with pytest.raises(MedscopeError, match="no images"):
        bootstrap_ci(np.zeros(0, int), np.zeros((0, 3)), CLASSES)
