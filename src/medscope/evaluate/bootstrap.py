"""95% bootstrap confidence intervals for the headline metrics, group-aware when groups are
known (cluster bootstrap: whole groups, e.g. all images of one patient, are resampled together,
because images of one group are not independent evidence).

Every resample is a vector of integer weights (how often each image was drawn), so that all
counts of a batch of resamples come from one matrix product instead of a loop of sklearn calls.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from medscope.errors import MedscopeError

_CELLS_PER_BATCH = 4_000_000  # resamples x images held at once (float64: ~32 MB)


def bootstrap_ci(
    y_true: np.ndarray, probs: np.ndarray, classes: Sequence[str], *, multilabel: bool = False,
    groups: Sequence[Any] | None = None, n_resamples: int = 1000, seed: int = 0,
    level: float = 0.95, thresholds: Sequence[float] | None = None,
) -> dict[str, Any]:
    """Percentile intervals of accuracy (exact match for multi-label), balanced accuracy
    (single-label: the mean recall over the classes a resample holds, as sklearn's), macro F1,
    macro ROC-AUC and each class's sensitivity and specificity. A resample where a metric is
    undefined (a class absent, say) is skipped for that metric; ``roc_auc_macro`` is left out
    when it is undefined on the full data. Multi-label predictions use ``thresholds`` (0.5 by
    default)."""
    y_true, probs = np.asarray(y_true), np.asarray(probs, dtype=np.float64)
    if len(y_true) == 0:
        raise MedscopeError("bootstrap: no images to resample")
    if not 0 < level < 1:
        raise MedscopeError(f"bootstrap: level {level} must lie between 0 and 1")
    truth, pred = _indicators(y_true, probs, multilabel, thresholds)
    draws = {"accuracy": [], "balanced_accuracy": [], "f1_macro": [], "roc_auc_macro": [],
             "sensitivity": [], "specificity": []}
    # as in the point estimates: multi-class AUC needs every class, multi-label averages the
    # labels that have both outcomes
    auc_labels = np.flatnonzero(truth.any(0) & (~truth).any(0))
    auc_defined = len(auc_labels) == truth.shape[1] if not multilabel else len(auc_labels) > 0
    for weights in _weight_batches(len(y_true), groups, n_resamples, seed):
        for key, value in _resample_metrics(weights, truth, pred, multilabel).items():
            draws[key].append(value)
        if auc_defined:
            draws["roc_auc_macro"].append(_macro_auc(weights, truth, probs, auc_labels,
                                                     binary=not multilabel and len(classes) == 2))
    stack = {k: np.concatenate(v) for k, v in draws.items() if v}
    out: dict[str, Any] = {"level": level, "n_resamples": n_resamples, "seed": seed,
                           "grouped": groups is not None}
    if multilabel:
        stack.pop("balanced_accuracy", None)
    for key in ("accuracy", "balanced_accuracy", "f1_macro", "roc_auc_macro"):
        if key in stack:
            out[key] = _interval(stack[key], level)
    out["per_class"] = {
        name: {m: _interval(stack[m][:, i], level) for m in ("sensitivity", "specificity")}
        for i, name in enumerate(classes)
    }
    return out


def _indicators(y_true, probs, multilabel, thresholds) -> tuple[np.ndarray, np.ndarray]:
    """N x K booleans: truth and prediction per class (one-hot for multi-class)."""
    if multilabel:
        cut = np.full(probs.shape[1], 0.5) if thresholds is None else np.asarray(thresholds)
        return y_true.astype(bool), probs >= cut[None, :]
    eye = np.eye(probs.shape[1], dtype=bool)
    return eye[y_true.astype(int)], eye[probs.argmax(1)]


def _weight_batches(n: int, groups, n_resamples: int, seed: int) -> Iterator[np.ndarray]:
    """R x N draw counts per image, in batches; with groups, each draw takes a whole group."""
    rng = np.random.default_rng(seed)
    if groups is None:
        member, n_units = np.arange(n), n
    else:
        _, member = np.unique(np.asarray(groups, dtype=str), return_inverse=True)
        n_units = int(member.max()) + 1
    per_batch = max(1, _CELLS_PER_BATCH // n)
    for start in range(0, n_resamples, per_batch):
        size = min(per_batch, n_resamples - start)
        counts = rng.multinomial(n_units, np.full(n_units, 1 / n_units), size=size)
        yield counts[:, member].astype(np.float64)


def _resample_metrics(w: np.ndarray, truth: np.ndarray, pred: np.ndarray, multilabel: bool
                      ) -> dict[str, np.ndarray]:
    """Weighted confusion counts per class for every resample (rows of ``w``) at once."""
    tp = w @ (truth & pred)
    fp = w @ (~truth & pred)
    fn = w @ (truth & ~pred)
    tn = w @ (~truth & ~pred)
    total = w.sum(1)
    exact = (truth == pred).all(1) if multilabel else (truth & pred).any(1)
    with np.errstate(divide="ignore", invalid="ignore"):
        f1 = np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), 0.0)  # sklearn's 0
        sensitivity = tp / (tp + fn)  # NaN where undefined: skipped later
        present = np.isfinite(sensitivity)
        balanced = np.where(present, sensitivity, 0).sum(1) / present.sum(1)
        return {"accuracy": (w @ exact) / total, "f1_macro": f1.mean(1),
                "balanced_accuracy": balanced, "sensitivity": sensitivity,
                "specificity": tn / (tn + fp)}


def _macro_auc(w: np.ndarray, truth: np.ndarray, probs: np.ndarray, labels: np.ndarray,
               binary: bool) -> np.ndarray:
    """One-vs-rest ROC-AUC per resample from weighted rank counts (ties count one half, as in
    sklearn); NaN for a resample that lacks a positive or a negative of some class."""
    cols = [1] if binary else labels
    aucs = np.stack([_weighted_auc(w, truth[:, k], probs[:, k]) for k in cols], axis=1)
    return aucs.mean(1)


def _weighted_auc(w: np.ndarray, is_pos: np.ndarray, score: np.ndarray) -> np.ndarray:
    order = np.argsort(score, kind="stable")
    _, starts = np.unique(score[order], return_index=True)
    pos = np.add.reduceat(w[:, order] * is_pos[order], starts, axis=1)
    neg = np.add.reduceat(w[:, order] * ~is_pos[order], starts, axis=1)
    below = np.cumsum(neg, axis=1) - neg  # negatives strictly below each distinct score
    pairs = pos.sum(1) * neg.sum(1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(pairs > 0, (pos * (below + 0.5 * neg)).sum(1) / pairs, np.nan)


def _interval(values: np.ndarray, level: float) -> dict[str, float] | None:
    values = values[np.isfinite(values)]
    if not len(values):
        return None
    tail = (1 - level) / 2
    low, high = np.quantile(values, [tail, 1 - tail])
    return {"low": float(low), "high": float(high)}
