"""The clinical metrics equal scikit-learn's on fixed arrays (multi-class and multi-label)."""

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    hamming_loss,
    multilabel_confusion_matrix,
    recall_score,
    roc_auc_score,
    top_k_accuracy_score,
)

from medscope.evaluate.metrics import classification_metrics, multilabel_metrics, tune_thresholds

CLASSES = ["a", "b", "c", "d"]


def _multiclass():
    rng = np.random.default_rng(3)
    y = np.array([0, 1, 2, 3] * 10)
    logits = rng.normal(size=(40, 4)) + 2.0 * np.eye(4)[y]
    logits[:, 3] -= 10  # class d is never predicted
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return y, probs


def test_multiclass_metrics_equal_sklearn_with_a_class_never_predicted():
    y, probs = _multiclass()
    pred = probs.argmax(1)
    assert 3 not in pred
    m = classification_metrics(y, probs, CLASSES)
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, pred))
    assert m["top_k_accuracy"] == {"2": pytest.approx(top_k_accuracy_score(y, probs, k=2))}
    assert np.allclose(m["confusion_matrix_normalized"],
                       confusion_matrix(y, pred, normalize="true"))
    assert m["roc_auc_macro"] == pytest.approx(roc_auc_score(y, probs, multi_class="ovr"))
    for i, name in enumerate(CLASSES):
        row = m["per_class"][name]
        assert row["sensitivity"] == pytest.approx(recall_score(y == i, pred == i))
        assert row["specificity"] == pytest.approx(recall_score(y == i, pred == i, pos_label=0))
        assert row["roc_auc"] == pytest.approx(roc_auc_score(y == i, probs[:, i]))
    assert m["per_class"]["d"]["sensitivity"] == 0.0 and m["per_class"]["d"]["specificity"] == 1


def test_top_5_only_with_more_than_five_classes():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(7), size=50)
    y = np.arange(50) % 7
    m = classification_metrics(y, probs, [f"k{i}" for i in range(7)])
    assert set(m["top_k_accuracy"]) == {"2", "5"}
    assert m["top_k_accuracy"]["5"] == pytest.approx(top_k_accuracy_score(y, probs, k=5))


def test_undefined_per_class_figures_are_none():
    probs = np.array([[0.9, 0.05, 0.05], [0.2, 0.7, 0.1]])
    m = classification_metrics([0, 1], probs, ["a", "b", "c"])
    assert m["per_class"]["c"]["sensitivity"] is None and m["per_class"]["c"]["roc_auc"] is None
    assert m["per_class"]["c"]["specificity"] == 1.0


def _multilabel():
    rng = np.random.default_rng(5)
    y = (rng.random((30, 3)) < 0.5).astype(int)
    y[:, 2] = 0  # label z is never present
    probs = np.clip(0.6 * y + rng.random((30, 3)) * 0.5, 0, 1)
    return y, probs


def test_multilabel_metrics_equal_sklearn_with_a_label_never_present():
    y, probs = _multilabel()
    m = multilabel_metrics(y, probs, ["x", "y", "z"])
    pred = (probs >= 0.5).astype(int)
    assert m["accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert m["hamming_loss"] == pytest.approx(hamming_loss(y, pred))
    assert m["f1_micro"] == pytest.approx(f1_score(y, pred, average="micro", zero_division=0))
    counts = multilabel_confusion_matrix(y, pred)
    for i, name in enumerate(["x", "y", "z"]):
        row = m["per_class"][name]
        assert [[row["tn"], row["fp"]], [row["fn"], row["tp"]]] == counts[i].tolist()
    assert m["per_class"]["z"]["roc_auc"] is None and m["per_class"]["z"]["sensitivity"] is None
    assert m["per_class"]["x"]["roc_auc"] == pytest.approx(roc_auc_score(y[:, 0], probs[:, 0]))
    assert m["roc_auc_macro"] == pytest.approx(
        np.mean([roc_auc_score(y[:, i], probs[:, i]) for i in (0, 1)]))
    assert "tuned" not in m


def test_tuned_block_uses_the_given_thresholds():
    y, probs = _multilabel()
    cut = [0.7, 0.3, 0.5]
    m = multilabel_metrics(y, probs, ["x", "y", "z"], thresholds=cut)
    pred = (probs >= np.array(cut)).astype(int)
    assert m["thresholds"] == cut
    assert m["tuned"]["f1_macro"] == pytest.approx(
        f1_score(y, pred, average="macro", zero_division=0))
    assert m["tuned"]["accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert m["tuned"]["per_class"]["x"]["tp"] == int(((pred[:, 0] == 1) & (y[:, 0] == 1)).sum())


def test_tuned_thresholds_maximise_f1_and_default_to_half_for_an_absent_label():
    y, probs = _multilabel()
    cut = tune_thresholds(y, probs)
    assert cut[2] == 0.5
    for k in (0, 1):
        best = max(f1_score(y[:, k], probs[:, k] >= t) for t in np.unique(probs[:, k]))
        assert f1_score(y[:, k], probs[:, k] >= cut[k]) == pytest.approx(best)
