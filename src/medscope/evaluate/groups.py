"""Group-level metrics: figures per micrograph, slide or patient rather than per patch.

A lab reports per specimen, so the patches (or tiles) of one group are aggregated into the
group's probabilities with the same functions the diagnosis path uses to call an image
(``medscope.slides.aggregate``): what is measured is what is served. The group's label is the
label its patches share. Metrics come from ``classification_metrics`` on the aggregated
probabilities (one row per group), and the bootstrap resamples groups, so the intervals are
over groups, the unit of independent evidence.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medscope.data.prepare import labels_of
from medscope.data.sources import PATCH_MANIFEST, SPLIT_NAMES, Sample
from medscope.errors import MedscopeError
from medscope.evaluate.bootstrap import bootstrap_ci
from medscope.evaluate.calibration import selective_at, threshold_for_accuracy
from medscope.evaluate.metrics import classification_metrics
from medscope.slides.aggregate import aggregate, check_aggregation

log = logging.getLogger("medscope")


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
                        refer_threshold: float | None = None, refer_fitted_on: str | None = None,
                        target_accuracy: float | None = None) -> dict[str, Any]:
    """``metrics.json["group_level"]``: accuracy, balanced accuracy, macro-F1, per-class
    sensitivity and specificity of the aggregated groups, with bootstrap CIs over groups.
    ``unit`` names the group (micrograph, slide, patient). With ``refer_threshold`` (fitted on
    validation groups by ``fit_group_refer_threshold``), ``selective`` gives the share of
    groups kept (aggregated confidence >= threshold) and the accuracy on them;
    ``refer_fitted_on`` (e.g. "validation") says where it was fitted, and with it the block is
    written even for a threshold of None (no threshold reached ``target_accuracy``: every
    group is referred)."""
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
    if refer_threshold is not None or refer_fitted_on is not None:
        out["selective"] = {
            **({} if target_accuracy is None else {"target_accuracy": float(target_accuracy)}),
            "threshold": None if refer_threshold is None else float(refer_threshold),
            **({} if refer_fitted_on is None else {"fitted_on": refer_fitted_on}),
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


DUPLICATE_PREFIX = "dup:"  # the group data.duplicates gives a set of copies with no group


def named_groups(groups: Sequence[str | None], fallback: Sequence[str]) -> list[str] | None:
    """The group ids group-level metrics use, or None when the data names no group (no
    ``patches.csv``, group/patient column or ``data.group_pattern``): a set of byte-identical
    copies alone is no specimen. An image without a group is its own (``fallback``, its
    path)."""
    if not any(g and not str(g).startswith(DUPLICATE_PREFIX) for g in groups):
        return None
    return [g or f for g, f in zip(groups, fallback, strict=True)]


PATIENT_COLUMNS = ("patient", "patient_id", "Patient ID")


def group_unit(data_path: Path | str | None) -> str:
    """The name of a group, from where the data comes from: "micrograph" for a folder made by
    ``medscope patches`` (a ``patches.csv`` in it or in its train/val/test folders),
    "patient" for a CSV whose group column is a patient column (``patient``,
    ``patient_id``, ``Patient ID``; a ``group`` column wins, as when the CSV is read),
    else "group" (a ``group`` column, ``data.group_pattern``)."""
    if data_path is None:
        return "group"
    path = Path(data_path)
    if path.is_dir():
        folders = [path, *(path / s for s in SPLIT_NAMES)]
        return "micrograph" if any((f / PATCH_MANIFEST).is_file() for f in folders) else "group"
    if path.suffix.lower() == ".csv" and path.is_file():
        with path.open(newline="") as fh:
            header = next(csv.reader(fh), [])
        if "group" not in header and any(c in header for c in PATIENT_COLUMNS):
            return "patient"
    return "group"


def sample_groups(samples: Sequence[Sample]) -> list[str] | None:
    """:func:`named_groups` of ``samples`` (None: they carry no group)."""
    return named_groups([s.group for s in samples], [str(s.path) for s in samples])


def group_level_for(samples: Sequence[Sample], probs: np.ndarray, classes: Sequence[str], *,
                    unit: str, target_accuracy: float,
                    val: tuple[Sequence[Sample], np.ndarray] | None = None
                    ) -> dict[str, Any] | None:
    """``metrics.json["group_level"]`` of evaluated ``samples`` (None when they carry no group,
    or when a group holds two classes: said in the log). The group refer threshold for
    ``target_accuracy`` is fitted on the validation groups ``val`` (their samples and
    probabilities); without any, on these very groups (``fitted_on`` "this data":
    optimistic, as for the patch-level threshold)."""
    groups = sample_groups(samples)
    if groups is None:
        return None
    labels = labels_of(list(samples))
    try:
        val_groups = None if val is None or not len(val[0]) else sample_groups(val[0])
        if val_groups is not None:
            threshold = fit_group_refer_threshold(val[1], labels_of(list(val[0])), val_groups,
                                                  target_accuracy)
            fitted_on = "validation"
        else:
            threshold = fit_group_refer_threshold(probs, labels, groups, target_accuracy)
            fitted_on = "this data"
        return group_level_metrics(probs, labels, groups, classes, unit=unit,
                                   refer_threshold=threshold, refer_fitted_on=fitted_on,
                                   target_accuracy=target_accuracy)
    except MedscopeError as exc:
        log.warning("no metrics per %s: %s", unit, exc)
        return None
