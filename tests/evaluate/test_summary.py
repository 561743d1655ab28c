import json

import numpy as np
import pytest
from scipy.special import softmax

from medscope.errors import MedscopeError
from medscope.evaluate.calibration import apply_temperature
from medscope.evaluate.summary import evaluation_metrics, fit_on_validation

CLASSES = ["a", "b", "c"]


def _logits(n, seed):
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 3
    return 5 * (rng.normal(size=(n, 3)) + 1.5 * np.eye(3)[labels]), labels


def test_multiclass_blocks_from_validation_fit():
    val_logits, val_labels = _logits(150, 0)
    fitted = fit_on_validation(val_labels, val_logits, target_accuracy=0.9)
    assert fitted["temperature"] > 1 and fitted["target_accuracy"] == 0.9
    logits, labels = _logits(90, 1)
    probs = apply_temperature(logits, fitted["temperature"])
    m = evaluation_metrics(labels, probs, CLASSES, logits=logits,
                           temperature=fitted["temperature"], groups=np.arange(90) // 3,
                           selective_threshold=fitted["selective_threshold"],
                           target_accuracy=0.9, n_resamples=200)
    json.dumps(m)  # everything is plain JSON
    assert m["ci"]["grouped"] is True and m["ci"]["n_resamples"] == 200
    cal = m["calibration"]
    assert cal["n_bins"] == 15 and cal["ece"] < cal["ece_uncalibrated"]
    sel = m["selective"]
    assert sel["fitted_on"] == "validation" and sel["threshold"] == fitted["selective_threshold"]
    assert 0 < sel["coverage"] <= 1 and sel["accuracy"] >= m["accuracy"]
    for key in ("balanced_accuracy", "top_k_accuracy", "confusion_matrix_normalized"):
        assert key in m


def test_without_logits_or_a_fitted_threshold():
    logits, labels = _logits(60, 2)
    m = evaluation_metrics(labels, softmax(logits, axis=1), CLASSES, n_resamples=50)
    assert m["calibration"]["temperature"] == 1.0
    assert m["calibration"]["ece_uncalibrated"] == m["calibration"]["ece"]
    assert m["selective"]["fitted_on"] == "this data"
    assert m["selective"]["accuracy"] is None or m["selective"]["accuracy"] >= 0.99


def test_multilabel_has_tuned_block_and_no_calibration():
    rng = np.random.default_rng(0)
    y = (rng.random((40, 3)) < 0.5).astype(int)
    probs = np.clip(0.4 * y + rng.random((40, 3)) * 0.6, 0, 1)
    fitted = fit_on_validation(y, probs, multilabel=True)
    m = evaluation_metrics(y, probs, CLASSES, multilabel=True, thresholds=fitted["thresholds"],
                           n_resamples=50)
    assert m["thresholds"] == fitted["thresholds"] and "tuned" in m and "ci" in m
    assert m["tuned"]["f1_macro"] >= m["f1_macro"]  # tuned on these very images
    assert "calibration" not in m and "selective" not in m
    json.dumps(m)


def test_mismatched_inputs_are_user_errors():
    logits, labels = _logits(30, 0)
    with pytest.raises(MedscopeError, match="do not match"):
        evaluation_metrics(labels[:-1], softmax(logits, axis=1), CLASSES)
    with pytest.raises(MedscopeError, match="groups"):
        evaluation_metrics(labels, softmax(logits, axis=1), CLASSES, groups=[0, 1])


def test_an_unreachable_validation_threshold_is_not_refitted_on_the_test_data():
    logits, labels = _logits(60, 3)
    m = evaluation_metrics(labels, softmax(logits, axis=1), CLASSES, selective_threshold=None,
                           target_accuracy=0.5, n_resamples=20)
    assert m["selective"] == {"target_accuracy": 0.5, "threshold": None,
                              "fitted_on": "validation", "coverage": 0.0, "accuracy": None}
