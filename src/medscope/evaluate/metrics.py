"""Classification metrics from labels and probabilities (scikit-learn does the arithmetic)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    hamming_loss,
    log_loss,
    precision_recall_fscore_support,
    roc_auc_score,
)


def classification_metrics(
    y_true: Sequence[int], probs: np.ndarray, classes: Sequence[str]
) -> dict[str, Any]:
    """Accuracy, macro/micro precision-recall-F1, per-class table, confusion matrix, ROC-AUC."""
    y_true = np.asarray(y_true)
    probs = np.asarray(probs, dtype=np.float64)
    y_pred = probs.argmax(1)
    labels = list(range(len(classes)))
    out: dict[str, Any] = {"n": int(len(y_true)), "accuracy": float(accuracy_score(y_true, y_pred))}
    for avg in ("macro", "micro", "weighted"):
        p, r, f, _ = precision_recall_fscore_support(
            y_true, y_pred, labels=labels, average=avg, zero_division=0
        )
        out[f"precision_{avg}"], out[f"recall_{avg}"], out[f"f1_{avg}"] = map(float, (p, r, f))
    p, r, f, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, average=None, zero_division=0
    )
    out["per_class"] = {
        name: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]),
               "support": int(support[i])}
        for i, name in enumerate(classes)
    }
    out["confusion_matrix"] = confusion_matrix(y_true, y_pred, labels=labels).tolist()
    out["log_loss"] = float(log_loss(y_true, probs / probs.sum(1, keepdims=True), labels=labels))
    out["roc_auc_macro"] = _roc_auc(y_true, probs, labels)
    out["classes"] = list(classes)
    return out


def _roc_auc(y_true: np.ndarray, probs: np.ndarray, labels: list[int]) -> float | None:
    """One-vs-rest macro ROC-AUC; None when a class is absent from ``y_true`` (undefined)."""
    if len(set(y_true.tolist())) < len(labels):
        return None
    if len(labels) == 2:
        return float(roc_auc_score(y_true, probs[:, 1]))
    return float(roc_auc_score(y_true, probs, multi_class="ovr", average="macro", labels=labels))


def multilabel_metrics(
    y_true: np.ndarray, probs: np.ndarray, classes: Sequence[str], threshold: float = 0.5
) -> dict[str, Any]:
    """Multi-label (sigmoid probabilities, N x K): exact-match ratio (``accuracy``), Hamming
    loss, macro/micro precision-recall-F1, per-label table and macro ROC-AUC over the labels
    that have both outcomes in ``y_true``."""
    y_true = np.asarray(y_true).astype(int)
    probs = np.asarray(probs, dtype=np.float64)
    y_pred = (probs >= threshold).astype(int)
    out: dict[str, Any] = {"n": int(len(y_true)), "multilabel": True, "threshold": threshold,
                           "accuracy": float(accuracy_score(y_true, y_pred)),
                           "hamming_loss": float(hamming_loss(y_true, y_pred))}
    for avg in ("macro", "micro", "weighted"):
        p, r, f, _ = precision_recall_fscore_support(y_true, y_pred, average=avg,
                                                     zero_division=0)
        out[f"precision_{avg}"], out[f"recall_{avg}"], out[f"f1_{avg}"] = map(float, (p, r, f))
    p, r, f, support = precision_recall_fscore_support(y_true, y_pred, average=None,
                                                       zero_division=0)
    aucs = [float(roc_auc_score(y_true[:, i], probs[:, i]))
            if 0 < y_true[:, i].sum() < len(y_true) else None for i in range(len(classes))]
    out["per_class"] = {
        name: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]),
               "support": int(support[i]), "roc_auc": aucs[i]}
        for i, name in enumerate(classes)
    }
    defined = [a for a in aucs if a is not None]
    out["roc_auc_macro"] = float(np.mean(defined)) if defined else None
    out["classes"] = list(classes)
    return out
