"""Classification metrics from labels and probabilities (scikit-learn does the arithmetic)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    hamming_loss,
    log_loss,
    multilabel_confusion_matrix,
    precision_recall_curve,
    precision_recall_fscore_support,
    roc_auc_score,
)


def classification_metrics(
    y_true: Sequence[int], probs: np.ndarray, classes: Sequence[str]
) -> dict[str, Any]:
    """Accuracy, balanced accuracy, macro/micro/weighted precision-recall-F1, a per-class table
    (with sensitivity, specificity and one-vs-rest ROC-AUC), confusion matrix (counts and
    row-normalised), top-k accuracy, log loss and macro ROC-AUC."""
    y_true = np.asarray(y_true)
    probs = np.asarray(probs, dtype=np.float64)
    y_pred = probs.argmax(1)
    labels = list(range(len(classes)))
    out: dict[str, Any] = {"n": int(len(y_true)), "accuracy": float(accuracy_score(y_true, y_pred))}
    out["balanced_accuracy"] = _balanced_accuracy(y_true, y_pred)
    for avg in ("macro", "micro", "weighted"):
        p, r, f, _ = precision_recall_fscore_support(
            y_true, y_pred, labels=labels, average=avg, zero_division=0
        )
        out[f"precision_{avg}"], out[f"recall_{avg}"], out[f"f1_{avg}"] = map(float, (p, r, f))
    p, r, f, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, average=None, zero_division=0
    )
    cm = confusion_matrix(y_true, y_pred, labels=labels)
    spec = _specificities(cm)
    aucs = [_binary_auc(y_true == i, probs[:, i]) for i in labels]
    out["per_class"] = {
        name: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]),
               "support": int(support[i]),
               "sensitivity": float(r[i]) if support[i] else None,
               "specificity": spec[i], "roc_auc": aucs[i]}
        for i, name in enumerate(classes)
    }
    out["confusion_matrix"] = cm.tolist()
    out["confusion_matrix_normalized"] = (cm / np.maximum(cm.sum(1, keepdims=True), 1)).tolist()
    out["top_k_accuracy"] = top_k_accuracies(y_true, probs)
    out["log_loss"] = float(log_loss(y_true, probs / probs.sum(1, keepdims=True), labels=labels))
    out["roc_auc_macro"] = _roc_auc(y_true, probs, labels)
    out["classes"] = list(classes)
    return out


def top_k_accuracies(y_true: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """Share of images whose true class is among the k most probable: k = 2 always, and k = 5
    when there are more than 5 classes. A tie with the true class counts in its favour."""
    true_p = probs[np.arange(len(y_true)), y_true]
    rank = (probs > true_p[:, None]).sum(1)  # classes strictly more probable than the true one
    ks = [2, 5] if probs.shape[1] > 5 else [2]
    return {str(k): float(np.mean(rank < k)) for k in ks}


def _balanced_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    import warnings

    with warnings.catch_warnings():  # a class predicted but absent from y_true only warns
        warnings.simplefilter("ignore")
        return float(balanced_accuracy_score(y_true, y_pred))


def _specificities(cm: np.ndarray) -> list[float | None]:
    """TN / (TN + FP) per class from a K x K confusion matrix; None when no negatives."""
    total = cm.sum()
    tp, fp, fn = np.diag(cm), cm.sum(0) - np.diag(cm), cm.sum(1) - np.diag(cm)
    tn = total - tp - fp - fn
    return [float(tn[i] / (tn[i] + fp[i])) if tn[i] + fp[i] else None for i in range(len(cm))]


def _binary_auc(is_pos: np.ndarray, score: np.ndarray) -> float | None:
    """ROC-AUC of one class against the rest; None unless both outcomes occur."""
    is_pos = np.asarray(is_pos, dtype=bool)
    if is_pos.all() or not is_pos.any():
        return None
    return float(roc_auc_score(is_pos, score))


def _roc_auc(y_true: np.ndarray, probs: np.ndarray, labels: list[int]) -> float | None:
    """One-vs-rest macro ROC-AUC; None when a class is absent from ``y_true`` (undefined)."""
    if len(set(y_true.tolist())) < len(labels):
        return None
    if len(labels) == 2:
        return float(roc_auc_score(y_true, probs[:, 1]))
    return float(roc_auc_score(y_true, probs, multi_class="ovr", average="macro", labels=labels))


def tune_thresholds(y_true: np.ndarray, probs: np.ndarray) -> list[float]:
    """Per label, the probability threshold that maximises F1 on the given (validation) data;
    0.5 for a label that never occurs there (no positive to tune on)."""
    y_true = np.asarray(y_true).astype(int)
    probs = np.asarray(probs, dtype=np.float64)
    return [_best_f1_threshold(y_true[:, k], probs[:, k]) for k in range(y_true.shape[1])]


def _best_f1_threshold(y: np.ndarray, score: np.ndarray) -> float:
    if not y.any():
        return 0.5
    precision, recall, thresholds = precision_recall_curve(y, score)
    p, r = precision[:-1], recall[:-1]  # the last point has no threshold
    f1 = np.divide(2 * p * r, p + r, out=np.zeros_like(p), where=(p + r) > 0)
    return float(thresholds[int(np.argmax(f1))])


def multilabel_metrics(
    y_true: np.ndarray, probs: np.ndarray, classes: Sequence[str], threshold: float = 0.5,
    thresholds: Sequence[float] | None = None,
) -> dict[str, Any]:
    """Multi-label (sigmoid probabilities, N x K): exact-match ratio (``accuracy``), Hamming
    loss, macro/micro precision-recall-F1, per-label table (with tp/fp/fn/tn, sensitivity and
    specificity), macro ROC-AUC over the labels that have both outcomes in ``y_true`` and
    micro ROC-AUC. With per-label ``thresholds`` (tuned on the validation split), a ``tuned``
    block gives the same figures at those thresholds."""
    y_true = np.asarray(y_true).astype(int)
    probs = np.asarray(probs, dtype=np.float64)
    out: dict[str, Any] = {"n": int(len(y_true)), "multilabel": True, "threshold": threshold}
    out.update(_multilabel_at(y_true, (probs >= threshold).astype(int), classes))
    aucs = [_binary_auc(y_true[:, i], probs[:, i]) for i in range(len(classes))]
    for name, auc in zip(classes, aucs, strict=True):
        out["per_class"][name]["roc_auc"] = auc
    defined = [a for a in aucs if a is not None]
    out["roc_auc_macro"] = float(np.mean(defined)) if defined else None
    out["roc_auc_micro"] = _binary_auc(y_true.ravel(), probs.ravel())
    out["classes"] = list(classes)
    if thresholds is not None:
        cut = np.asarray(thresholds, dtype=np.float64)
        out["thresholds"] = [float(t) for t in cut]
        out["tuned"] = _multilabel_at(y_true, (probs >= cut[None, :]).astype(int), classes)
    return out


def _multilabel_at(y_true: np.ndarray, y_pred: np.ndarray, classes: Sequence[str]
                   ) -> dict[str, Any]:
    out: dict[str, Any] = {"accuracy": float(accuracy_score(y_true, y_pred)),
                           "hamming_loss": float(hamming_loss(y_true, y_pred))}
    for avg in ("macro", "micro", "weighted"):
        p, r, f, _ = precision_recall_fscore_support(y_true, y_pred, average=avg,
                                                     zero_division=0)
        out[f"precision_{avg}"], out[f"recall_{avg}"], out[f"f1_{avg}"] = map(float, (p, r, f))
    p, r, f, support = precision_recall_fscore_support(y_true, y_pred, average=None,
                                                       zero_division=0)
    counts = multilabel_confusion_matrix(y_true, y_pred)  # per label [[tn, fp], [fn, tp]]
    out["per_class"] = {}
    for i, name in enumerate(classes):
        (tn, fp), (fn, tp) = counts[i].tolist()
        out["per_class"][name] = {
            "precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]),
            "support": int(support[i]), "tp": tp, "fp": fp, "fn": fn, "tn": tn,
            "sensitivity": tp / (tp + fn) if tp + fn else None,
            "specificity": tn / (tn + fp) if tn + fp else None,
        }
    return out
