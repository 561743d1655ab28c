"""Group-level metrics: figures per micrograph, slide or patient rather than per patch.

A lab reports per specimen, so the patches (or tiles) of one group are aggregated into the
group's probabilities with the same functions the diagnosis path uses to call an image
(``medscope.slides.aggregate``): what is measured is what is served. The group's label is the
label its patches share. Metrics come from ``classification_metrics`` on the aggregated
probabilities (one row per group), and the bootstrap resamples groups, so the intervals are
over groups, the unit of independent evidence.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from medscope.errors import MedscopeError
from medscope.evaluate.bootstrap import bootstrap_ci
from medscope.evaluate.calibration import selective_at, threshold_for_accuracy
from medscope.evaluate.metrics import classification_metrics
from medscope.slides.aggregate import aggregate, check_aggregation


def aggregate_groups(probs: np.ndarray, labels: Sequence[int], groups: Sequence[Any],
                     aggregation: str = "mean", k: int | None = None, *,
                     per_class: bool = False) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(group ids sorted, G x K aggregated probabilities, G labels). Every group must hold
    patches of one class: a group whose patches disagree is a labelling mistake."""
    check_aggregation(aggregation)
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels).astype(int)
    ids = np.asarray([str(g) for g in groups])
    if not (len(probs) == len(labels) == len(ids)) or probs.ndim != 2:
        raise MedscopeError(f"group-level metrics: {len(probs)} probability rows, "
                            f"{len(labels)} labels and {len(ids)} group ids must match")
    if not len(ids):
        raise MedscopeError("group-level metrics: no patches")
    names, member = np.unique(ids, return_inverse=True)
    order = np.argsort(member, kind="stable")
    starts = np.flatnonzero(np.r_[True, np.diff(member[order]) != 0])
    out_probs, out_labels = [], []
    for name, rows in zip(names.tolist(), np.split(order, starts[1:]), strict=True):
        classes = np.unique(labels[rows])
        if len(classes) > 1:
            raise MedscopeError(f"group {name!r} holds patches of classes "
                                f"{classes.tolist()}; group-level metrics need one label a group")
        out_probs.append(aggregate(probs[rows], aggregation, k, per_class=per_class))
        out_labels.append(int(classes[0]))
    return names.tolist(), np.stack(out_probs), np.asarray(out_labels)


def group_level_metrics(probs: np.ndarray, labels: Sequence[int], groups: Sequence[Any],
                        classes: Sequence[str], *, unit: str = "group",
                        aggregation: str = "mean", k: int | None = None,
                        n_resamples: int = 1000, seed: int = 0, level: float = 0.95,
                        refer_threshold: float | None = None) -> dict[str, Any]:
    """``metrics.json["group_level"]``: accuracy, balanced accuracy, macro-F1, per-class
    sensitivity and specificity of the aggregated groups, with bootstrap CIs over groups.
    ``unit`` names the group (micrograph, slide, patient). With ``refer_threshold`` (fitted on
    validation groups by ``fit_group_refer_threshold``), ``selective`` gives the share of
    groups kept (aggregated confidence >= threshold) and the accuracy on them."""
    names, g_probs, g_labels = aggregate_groups(probs, labels, groups, aggregation, k)
    m = classification_metrics(g_labels, g_probs, classes)
    out: dict[str, Any] = {
        "unit": unit, "aggregation": aggregation, "n_groups": len(names),
        "n_patches": int(len(np.asarray(labels))),
        "accuracy": m["accuracy"], "balanced_accuracy": m["balanced_accuracy"],
        "f1_macro": m["f1_macro"], "roc_auc_macro": m["roc_auc_macro"],
        "per_class": {c: {key: m["per_class"][c][key]
                          for key in ("sensitivity", "specificity", "support")}
                      for c in classes},
        "confusion_matrix": m["confusion_matrix"],
    }
    if aggregation == "topk":
        out["k"] = k
    if refer_threshold is not None:
        out["selective"] = {"threshold": float(refer_threshold),
                            **selective_at(g_probs, g_labels, refer_threshold)}
    # one row per group: resampling rows is resampling groups
    out["ci"] = bootstrap_ci(g_labels, g_probs, classes, n_resamples=n_resamples, seed=seed,
                             level=level)
    return out


def fit_group_refer_threshold(probs: np.ndarray, labels: Sequence[int], groups: Sequence[Any],
                              target_accuracy: float, aggregation: str = "mean",
                              k: int | None = None) -> float | None:
    """The image-level ``min_confidence`` fitted on validation groups: the lowest aggregated
    confidence whose kept groups reach ``target_accuracy`` (the rule
    ``calibration.threshold_for_accuracy`` applies to single images); None when even the
    most confident groups fall short."""
    _, g_probs, g_labels = aggregate_groups(probs, labels, groups, aggregation, k)
    return threshold_for_accuracy(g_probs, g_labels, target_accuracy)
