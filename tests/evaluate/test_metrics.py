import numpy as np
import pytest
from sklearn.metrics import f1_score, precision_score, recall_score

from medscope.evaluate.metrics import classification_metrics


def test_hand_made_confusion_case():
    # true: 3 of class a, 2 of b, 1 of c; one a predicted as b, the c predicted as a
    y_true = [0, 0, 0, 1, 1, 2]
    y_pred = [0, 0, 1, 1, 1, 0]
    probs = np.eye(3)[y_pred] * 0.8 + 0.2 / 3
    m = classification_metrics(y_true, probs, ["a", "b", "c"])
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["confusion_matrix"] == [[2, 1, 0], [0, 2, 0], [1, 0, 0]]
    # by hand: precision a = 2/3, b = 2/3, c = 0; recall a = 2/3, b = 1, c = 0
    assert m["precision_macro"] == pytest.approx((2 / 3 + 2 / 3 + 0) / 3)
    assert m["recall_macro"] == pytest.approx((2 / 3 + 1 + 0) / 3)
    b = {k: m["per_class"]["b"][k] for k in ("precision", "recall", "f1", "support")}
    assert b == {"precision": pytest.approx(2 / 3), "recall": 1.0, "f1": pytest.approx(0.8),
                 "support": 2}
    for avg in ("macro", "micro", "weighted"):
        assert m[f"f1_{avg}"] == pytest.approx(f1_score(y_true, y_pred, average=avg))
        assert m[f"precision_{avg}"] == pytest.approx(
            precision_score(y_true, y_pred, average=avg, zero_division=0))
        assert m[f"recall_{avg}"] == pytest.approx(recall_score(y_true, y_pred, average=avg))
    assert m["f1_micro"] == pytest.approx(m["accuracy"])


def test_roc_auc_is_none_when_a_class_is_absent():
    probs = np.array([[0.9, 0.05, 0.05], [0.2, 0.7, 0.1]])
    assert classification_metrics([0, 1], probs, ["a", "b", "c"])["roc_auc_macro"] is None


def test_perfect_ranking_gives_auc_one():
    probs = np.array([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [0.1, 0.9]])
    assert classification_metrics([0, 0, 1, 1], probs, ["n", "p"])["roc_auc_macro"] == 1.0
