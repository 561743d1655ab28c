"""One call for the evaluation path: every metrics.json block from labels and probabilities,
and what is fitted on the validation split for the checkpoint metadata."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.special import softmax

from medscope.errors import MedscopeError
from medscope.evaluate.bootstrap import bootstrap_ci
from medscope.evaluate.calibration import (
    apply_temperature,
    expected_calibration_error,
    fit_temperature,
    selective_at,
    threshold_for_accuracy,
)
from medscope.evaluate.metrics import classification_metrics, multilabel_metrics, tune_thresholds


class _NotFitted:
    def __repr__(self) -> str:
        return "NOT_FITTED"


# No refer-to-expert threshold was fitted on the validation split (an older checkpoint); distinct
# from None, which means one was sought there and no threshold reached the target.
NOT_FITTED: Any = _NotFitted()


def evaluation_metrics(
    y_true: np.ndarray, probs: np.ndarray, classes: Sequence[str], *, multilabel: bool = False,
    logits: np.ndarray | None = None, temperature: float = 1.0,
    groups: Sequence[Any] | None = None, thresholds: Sequence[float] | None = None,
    selective_threshold: float | None = NOT_FITTED, target_accuracy: float = 0.99,
    n_resamples: int = 1000, seed: int = 0, n_bins: int = 15,
) -> dict[str, Any]:
    """The metrics.json content (less ``data``) for one evaluated split.

    ``probs`` are the probabilities the model reports (already divided by ``temperature``);
    ``logits`` (optional) are the same images' logits before the temperature, used only for
    the uncalibrated ECE. ``groups`` makes the bootstrap group-aware. Multi-label:
    ``thresholds`` are the per-label thresholds tuned on the validation split (the ``tuned``
    block). Multi-class: ``selective_threshold`` is the refer-to-expert threshold fitted on the
    validation split (None: none reached the target there; pass
    ``meta.get("selective_threshold", NOT_FITTED)``); when NOT_FITTED, the threshold reaching
    ``target_accuracy`` is searched on these very images (optimistic, and marked so in
    ``selective.fitted_on``)."""
    y_true, probs = np.asarray(y_true), np.asarray(probs, dtype=np.float64)
    _check_shapes(y_true, probs, classes, multilabel, logits, groups)
    if multilabel:
        out = multilabel_metrics(y_true, probs, classes, thresholds=thresholds)
    else:
        out = classification_metrics(y_true, probs, classes)
    out["ci"] = bootstrap_ci(y_true, probs, classes, multilabel=multilabel, groups=groups,
                             n_resamples=n_resamples, seed=seed)
    if not multilabel:
        out["calibration"] = _calibration(y_true, probs, logits, temperature, n_bins)
        out["selective"] = _selective(y_true, probs, selective_threshold, target_accuracy)
    return out


def fit_on_validation(y_val: np.ndarray, outputs: np.ndarray, *, multilabel: bool = False,
                      target_accuracy: float = 0.99) -> dict[str, Any]:
    """What the end of training stores in the checkpoint metadata, fitted on the validation
    split. Multi-class (``outputs`` = logits): ``temperature`` and the ``selective_threshold``
    (on the calibrated probabilities) reaching ``target_accuracy``, None when unreachable.
    Multi-label (``outputs`` = sigmoid probabilities): per-label ``thresholds``."""
    if multilabel:
        return {"thresholds": tune_thresholds(y_val, outputs)}
    temperature = fit_temperature(outputs, y_val)
    calibrated = apply_temperature(outputs, temperature)
    return {"temperature": temperature, "target_accuracy": target_accuracy,
            "selective_threshold": threshold_for_accuracy(calibrated, y_val, target_accuracy)}


def _calibration(y_true, probs, logits, temperature: float, n_bins: int) -> dict[str, Any]:
    ece = expected_calibration_error(probs, y_true, n_bins)
    if logits is not None:
        before = expected_calibration_error(softmax(np.asarray(logits, np.float64), axis=1),
                                            y_true, n_bins)
    else:  # without logits the uncalibrated probabilities are only known when T = 1
        before = ece if temperature == 1.0 else None
    return {"n_bins": n_bins, "temperature": float(temperature), "ece_uncalibrated": before,
            "ece": ece}


def _selective(y_true, probs, threshold: Any, target: float) -> dict[str, Any]:
    fitted_on = "validation"
    if threshold is NOT_FITTED:
        threshold, fitted_on = threshold_for_accuracy(probs, y_true, target), "this data"
    return {"target_accuracy": target, "threshold": threshold, "fitted_on": fitted_on,
            **selective_at(probs, y_true, threshold)}


def _check_shapes(y_true, probs, classes, multilabel, logits, groups) -> None:
    n, k = len(y_true), len(classes)
    if probs.shape != (n, k):
        raise MedscopeError(f"evaluation: probabilities of shape {probs.shape} do not match "
                            f"{n} labels and {k} classes")
    if multilabel and y_true.shape != (n, k):
        raise MedscopeError(f"evaluation: multi-label targets must be {n} x {k}, "
                            f"got {y_true.shape}")
    if logits is not None and np.shape(logits) != (n, k):
        raise MedscopeError(f"evaluation: logits of shape {np.shape(logits)} do not match "
                            f"the probabilities {probs.shape}")
    if groups is not None and len(groups) != n:
        raise MedscopeError(f"evaluation: {len(groups)} groups for {n} images")
