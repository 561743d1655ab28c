"""Calibration and selective prediction for multi-class classifiers (one label per image:
confidence is the top softmax probability). Multi-label models are not covered here: their
per-label sigmoid outputs are calibrated by per-label thresholds instead (metrics.tune_thresholds).

- expected calibration error (equal-width confidence bins, as in Guo et al. 2017) and the
  per-bin table behind a reliability diagram;
- temperature scaling: one scalar T fitted on validation logits; softmax(logits / T) keeps the
  argmax, so accuracy is unchanged while confidences become honest;
- the coverage-accuracy curve (refer the least confident images to an expert) and the lowest
  confidence threshold whose kept images reach a target accuracy.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, softmax

from medscope.errors import MedscopeError

log = logging.getLogger("medscope")
_LOG_T_BOUNDS = (np.log(0.05), np.log(20.0))  # beyond these a model is broken, not miscalibrated


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> float:
    """Sum over bins of |accuracy - mean confidence|, weighted by the bin's share of images."""
    bins = reliability_bins(probs, labels, n_bins)
    n = sum(b["count"] for b in bins)
    return float(sum(b["count"] / n * abs(b["accuracy"] - b["confidence"])
                     for b in bins if b["count"]))


def reliability_bins(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15
                     ) -> list[dict[str, Any]]:
    """Per equal-width bin (lo, hi] of top-class confidence: mean confidence, accuracy and
    count (confidence and accuracy None for an empty bin)."""
    conf, correct = _confidence_and_correct(probs, labels)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    which = np.searchsorted(edges[1:-1], conf, side="left")  # bin i holds (edges[i], edges[i+1]]
    out = []
    for i in range(n_bins):
        inside = which == i
        count = int(inside.sum())
        out.append({"lo": float(edges[i]), "hi": float(edges[i + 1]), "count": count,
                    "confidence": float(conf[inside].mean()) if count else None,
                    "accuracy": float(correct[inside].mean()) if count else None})
    return out


def apply_temperature(logits: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(logits / T)."""
    return softmax(np.asarray(logits, dtype=np.float64) / temperature, axis=1)


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The T > 0 minimising the negative log-likelihood of softmax(logits / T) on (validation)
    logits; searched over log T (bounded Brent, deterministic)."""
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels).astype(int)
    if logits.ndim != 2 or len(logits) != len(labels) or not len(labels):
        raise MedscopeError(f"fit_temperature: need N x K logits and N labels, got "
                            f"{logits.shape} and {labels.shape}")
    rows = np.arange(len(labels))

    def nll(log_t: float) -> float:
        return float(-log_softmax(logits / np.exp(log_t), axis=1)[rows, labels].mean())

    best = minimize_scalar(nll, bounds=_LOG_T_BOUNDS, method="bounded",
                           options={"xatol": 1e-6})
    low, high = _LOG_T_BOUNDS
    # At a bound the likelihood has no optimum: sharpening without end means every validation
    # image is right and confident, so the split says nothing about how the model errs.
    at_low, at_high = nll(low) <= best.fun, nll(high) <= best.fun
    if at_low or at_high:
        why = ("every validation image is classified correctly and confidently (are they near "
               "copies of training images? see data.group_pattern)" if at_low
               else "the model does no better than chance on validation")
        log.warning("temperature scaling: the validation likelihood improves all the way to "
                    "T = %g, since %s; T = 1 kept (probabilities uncalibrated)",
                    float(np.exp(low if at_low else high)), why)
        return 1.0
    return float(np.exp(best.x))


def coverage_accuracy_curve(probs: np.ndarray, labels: np.ndarray) -> dict[str, list[float]]:
    """For each distinct confidence t (highest first): the share of images kept (confidence
    >= t) and the accuracy on them. Coverage 1.0 is the plain accuracy."""
    conf, correct = _confidence_and_correct(probs, labels)
    order = np.argsort(-conf, kind="stable")
    conf, correct = conf[order], correct[order]
    # the last position of each run of equal confidences: ties are kept or referred together
    ends = np.flatnonzero(np.append(conf[1:] != conf[:-1], True))
    kept = ends + 1
    hits = np.cumsum(correct)[ends]
    return {"threshold": conf[ends].tolist(), "coverage": (kept / len(conf)).tolist(),
            "accuracy": (hits / kept).tolist()}


def threshold_for_accuracy(probs: np.ndarray, labels: np.ndarray, target: float
                           ) -> float | None:
    """The lowest confidence threshold whose kept images (confidence >= threshold) reach
    ``target`` accuracy, i.e. the one referring the fewest images; None when even the most
    confident images alone fall short."""
    if not 0 < target <= 1:
        raise MedscopeError(f"target accuracy {target} must lie in (0, 1]")
    curve = coverage_accuracy_curve(probs, labels)
    if curve["accuracy"][-1] == 1.0:
        log.warning("refer-to-expert threshold for %.1f%% accuracy: all %d images it is fitted "
                    "on are classified correctly, so it is their lowest confidence (%.3f) and "
                    "says nothing about the errors to come; check its accuracy on the test "
                    "split", 100 * target, len(labels), curve["threshold"][-1])
    reaching = [t for t, acc in zip(curve["threshold"], curve["accuracy"], strict=True)
                if acc >= target]
    return min(reaching) if reaching else None


def selective_at(probs: np.ndarray, labels: np.ndarray, threshold: float | None
                 ) -> dict[str, float | None]:
    """Coverage and accuracy of the images kept at ``threshold`` (None: nothing is kept)."""
    conf, correct = _confidence_and_correct(probs, labels)
    kept = conf >= threshold if threshold is not None else np.zeros(len(conf), dtype=bool)
    return {"coverage": float(kept.mean()) if len(kept) else 0.0,
            "accuracy": float(correct[kept].mean()) if kept.any() else None}


def _confidence_and_correct(probs: np.ndarray, labels: np.ndarray
                            ) -> tuple[np.ndarray, np.ndarray]:
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels)
    if probs.ndim != 2 or labels.ndim != 1 or len(probs) != len(labels) or not len(labels):
        raise MedscopeError(f"calibration needs N x K probabilities and N class indices "
                            f"(multi-class only), got {probs.shape} and {labels.shape}")
    return probs.max(1), probs.argmax(1) == labels.astype(int)
