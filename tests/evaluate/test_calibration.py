import logging

import numpy as np
import pytest
from scipy.special import softmax

from medscope.errors import MedscopeError
from medscope.evaluate.calibration import (
    apply_temperature,
    coverage_accuracy_curve,
    expected_calibration_error,
    fit_temperature,
    reliability_bins,
    selective_at,
    threshold_for_accuracy,
)


def _two_class(conf):
    conf = np.asarray(conf)
    return np.stack([conf, 1 - conf], axis=1)


def test_ece_by_hand():
    # two images at 0.95 (one right) and two at 0.7 (both right)
    probs, labels = _two_class([0.95, 0.95, 0.7, 0.7]), np.array([0, 1, 0, 0])
    # bin of 0.95: |0.5 - 0.95| * 2/4; bin of 0.7: |1.0 - 0.7| * 2/4
    assert expected_calibration_error(probs, labels) == pytest.approx(0.225 + 0.15)
    # one bin: |accuracy 0.75 - mean confidence 0.825|
    assert expected_calibration_error(probs, labels, n_bins=1) == pytest.approx(0.075)
    bins = reliability_bins(probs, labels)
    assert len(bins) == 15 and sum(b["count"] for b in bins) == 4
    full = [b for b in bins if b["count"]]
    assert [(b["confidence"], b["accuracy"], b["count"]) for b in full] == [
        (pytest.approx(0.7), 1.0, 2), (pytest.approx(0.95), 0.5, 2)]
    assert full[0]["lo"] < 0.7 <= full[0]["hi"]


def _overconfident(n, seed):
    """A 4-class toy model whose logits are 6x too large: right ~65%, sure ~99% of the time."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, n)
    honest = rng.normal(size=(n, 4)) + 1.5 * np.eye(4)[labels]
    return 6 * honest, labels


def test_temperature_scaling_lowers_ece_and_keeps_the_argmax():
    val_logits, val_labels = _overconfident(600, 0)
    test_logits, test_labels = _overconfident(600, 1)
    t = fit_temperature(val_logits, val_labels)
    assert t > 2
    before, after = softmax(test_logits, axis=1), apply_temperature(test_logits, t)
    assert np.array_equal(before.argmax(1), after.argmax(1))
    ece_before = expected_calibration_error(before, test_labels)
    ece_after = expected_calibration_error(after, test_labels)
    assert ece_after < ece_before / 3
    assert fit_temperature(val_logits, val_labels) == t  # deterministic


def test_fit_temperature_recovers_a_known_temperature():
    rng = np.random.default_rng(4)
    z = rng.normal(size=(4000, 3)) * 2
    p = softmax(z, axis=1)
    labels = (rng.random(4000)[:, None] > p.cumsum(1)).sum(1)  # drawn from softmax(z)
    assert fit_temperature(3 * z, labels) == pytest.approx(3.0, rel=0.1)


@pytest.mark.parametrize("sign, reason", [(1, "every validation image is classified "
                                              "correctly"),
                                          (-1, "no better than chance")])
def test_no_temperature_is_fitted_when_the_likelihood_has_no_optimum(sign, reason, caplog):
    """A validation split the model gets all right (near copies of training images) would
    drive T to its lower bound and make every later probability ~1; all wrong, to the upper."""
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 4, 400)
    logits = rng.normal(size=(400, 4))
    logits[np.arange(400), labels] += sign * 6.0
    with caplog.at_level(logging.WARNING, logger="medscope"):
        assert fit_temperature(logits, labels) == 1.0
    assert any(reason in r.getMessage() and "T = 1 kept" in r.getMessage()
               for r in caplog.records)
    if sign == 1:
        logits[:8, :] = rng.normal(size=(8, 4)) * 6  # a few confident mistakes: an optimum
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="medscope"):
            t = fit_temperature(logits, labels)
        assert 0.05 < t < 20 and t != 1.0 and not caplog.records


def test_fit_temperature_rejects_mismatched_shapes():
    with pytest.raises(MedscopeError, match="logits"):
        fit_temperature(np.zeros((3, 2)), np.zeros(4, int))


def test_coverage_curve_keeps_the_most_confident_first():
    probs = _two_class([0.99, 0.9, 0.9, 0.8, 0.6])
    labels = np.array([0, 0, 1, 0, 1])  # right, right, wrong, right, wrong
    curve = coverage_accuracy_curve(probs, labels)
    assert curve["threshold"] == [0.99, 0.9, 0.8, 0.6]  # the tie at 0.9 moves together
    assert curve["coverage"] == [0.2, 0.6, 0.8, 1.0]
    assert curve["accuracy"] == pytest.approx([1.0, 2 / 3, 0.75, 0.6])


def test_threshold_reaches_the_target_with_the_largest_coverage():
    rng = np.random.default_rng(2)
    conf = rng.uniform(0.5, 1.0, 300)
    labels = (rng.random(300) > conf).astype(int)  # right with probability = confidence
    probs = _two_class(conf)
    t = threshold_for_accuracy(probs, labels, 0.9)
    kept = selective_at(probs, labels, t)
    assert kept["accuracy"] >= 0.9 and 0 < kept["coverage"] < 1
    lower = conf[conf < t].max()  # one step further would fall short
    assert selective_at(probs, labels, lower)["accuracy"] < 0.9


def test_no_threshold_when_the_most_confident_image_is_wrong():
    probs, labels = _two_class([0.99, 0.7]), np.array([1, 0])
    assert threshold_for_accuracy(probs, labels, 0.99) is None
    assert selective_at(probs, labels, None) == {"coverage": 0.0, "accuracy": None}
    with pytest.raises(MedscopeError, match="target accuracy"):
        threshold_for_accuracy(probs, labels, 1.5)


def test_multilabel_shaped_labels_are_refused():
    with pytest.raises(MedscopeError, match="multi-class only"):
        expected_calibration_error(np.full((2, 2), 0.5), np.ones((2, 2)))


def test_a_threshold_fitted_without_errors_is_flagged(caplog):
    probs, labels = _two_class([0.99, 0.9, 0.8]), np.array([0, 0, 0])
    with caplog.at_level(logging.WARNING, logger="medscope"):
        assert threshold_for_accuracy(probs, labels, 0.99) == 0.8
    (warning,) = [r.getMessage() for r in caplog.records]
    assert "all 3 images" in warning and "(0.800)" in warning
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="medscope"):
        threshold_for_accuracy(probs, np.array([0, 0, 1]), 0.99)  # one error: a real fit
    assert not caplog.records
