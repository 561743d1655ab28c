"""Evaluation curves as PNG: one-vs-rest ROC, reliability before/after temperature scaling,
coverage-accuracy (selective prediction). File names are the constants below (a run's root, or
an eval-<folder>/ directory, holds them)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from scipy.special import softmax
from sklearn.metrics import roc_auc_score, roc_curve

from medscope.evaluate.calibration import (
    coverage_accuracy_curve,
    expected_calibration_error,
    reliability_bins,
    selective_at,
)
from medscope.report.plots import _save

ROC_CURVES = "roc_curves.png"
RELIABILITY = "reliability_diagram.png"
COVERAGE = "coverage_accuracy.png"


def plot_roc_curves(y_true: np.ndarray, probs: np.ndarray, classes: Sequence[str], path: Path,
                    multilabel: bool = False) -> None:
    """One curve per class (one-vs-rest) or per label; classes without both outcomes are left
    out; the legend gives each AUC and the title their mean (macro AUC)."""
    y_true, probs = np.asarray(y_true), np.asarray(probs, dtype=np.float64)
    truth = y_true.astype(bool) if multilabel else np.eye(len(classes), dtype=bool)[y_true]
    fig = Figure(figsize=(5.2, 4.6))
    ax = fig.subplots()
    aucs = []
    for k, name in enumerate(classes):
        if truth[:, k].all() or not truth[:, k].any():
            continue
        fpr, tpr, _ = roc_curve(truth[:, k], probs[:, k])
        aucs.append(roc_auc_score(truth[:, k], probs[:, k]))
        ax.plot(fpr, tpr, lw=1.5, label=f"{name} (AUC {aucs[-1]:.3f})")
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1)
    ax.set_xlabel("1 − specificity (false-positive rate)")
    ax.set_ylabel("sensitivity (true-positive rate)")
    macro = f"macro AUC {np.mean(aucs):.3f}" if aucs else "AUC undefined"
    ax.set_title(f"ROC curves, one-vs-rest ({macro})")
    ax.grid(alpha=0.3)
    if aucs:
        ax.legend(fontsize=8, loc="lower right")
    _save(fig, path)


def plot_reliability(labels: np.ndarray, probs_before: np.ndarray, probs_after: np.ndarray,
                     temperature: float, path: Path, n_bins: int = 15) -> None:
    """Accuracy against confidence per bin, before and after temperature scaling."""
    fig = Figure(figsize=(10, 4.2))
    axes = fig.subplots(1, 2, sharey=True)
    panels = (("uncalibrated", probs_before), (f"temperature T = {temperature:.2f}", probs_after))
    for ax, (name, probs) in zip(axes, panels, strict=True):
        bins = [b for b in reliability_bins(probs, labels, n_bins) if b["count"]]
        ece = expected_calibration_error(probs, labels, n_bins)
        ax.bar([(b["lo"] + b["hi"]) / 2 for b in bins], [b["accuracy"] for b in bins],
               width=1 / n_bins, edgecolor="black", alpha=0.7, label="accuracy")
        ax.plot([b["confidence"] for b in bins], [b["confidence"] for b in bins], "r.",
                label="mean confidence")
        ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("confidence (top probability)")
        ax.set_title(f"{name}: ECE {ece:.3f}")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("accuracy")
    axes[0].legend(fontsize=8, loc="upper left")
    _save(fig, path)


def plot_coverage(labels: np.ndarray, probs: np.ndarray, path: Path,
                  threshold: float | None = None, target: float | None = None) -> None:
    """Accuracy of the images kept against the share kept (the rest go to an expert), with
    the operating point at ``threshold`` marked."""
    curve = coverage_accuracy_curve(probs, labels)
    fig = Figure(figsize=(5.6, 4.2))
    ax = fig.subplots()
    ax.plot(curve["coverage"], curve["accuracy"], "-", lw=1.5)
    if target is not None:
        ax.axhline(target, ls="--", color="grey", lw=1, label=f"target {target:.3g}")
    point = selective_at(probs, labels, threshold) if threshold is not None else None
    if point is not None and point["accuracy"] is None:  # no image this confident: none kept
        ax.plot([], [], " ", label=f"threshold {threshold:.3f}: keeps none of these images")
    elif point is not None:
        ax.plot(point["coverage"], point["accuracy"], "o", color="#b00020",
                label=f"threshold {threshold:.3f}: keeps {point['coverage']:.0%}")
    ax.set_xlabel("coverage (share of images the model decides)")
    ax.set_ylabel("accuracy on the images kept")
    ax.set_xlim(0, 1.02)
    ax.set_title("Selective prediction: refer the least confident")
    ax.grid(alpha=0.3)
    if threshold is not None or target is not None:
        ax.legend(fontsize=8, loc="lower left")
    _save(fig, path)


def write_evaluation_plots(target: Path, labels: np.ndarray, probs: np.ndarray,
                           classes: Sequence[str], *, multilabel: bool = False,
                           logits: np.ndarray | None = None, temperature: float = 1.0,
                           selective_threshold: float | None = None,
                           target_accuracy: float | None = None) -> list[Path]:
    """The curves of one evaluated split into ``target``; returns the files written.
    Reliability and coverage are multi-class only; reliability needs the logits."""
    target = Path(target)
    written = [target / ROC_CURVES]
    plot_roc_curves(labels, probs, classes, written[0], multilabel=multilabel)
    if multilabel:
        return written
    if logits is not None:
        before = softmax(np.asarray(logits, dtype=np.float64), axis=1)
        plot_reliability(labels, before, probs, temperature, target / RELIABILITY)
        written.append(target / RELIABILITY)
    plot_coverage(labels, probs, target / COVERAGE, selective_threshold, target_accuracy)
    written.append(target / COVERAGE)
    return written
