"""Matplotlib figures of a run, written as PNG. Drawn through matplotlib's object API
(``Figure`` rendered by ``savefig``), never pyplot: no backend is switched and no global figure
state is kept, so importing medscope leaves a notebook user's matplotlib as it was."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from medscope.run import atomic_write_bytes


def _save(fig: Figure, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    atomic_write_bytes(path, buf.getvalue())


def plot_learning_curves(history: Sequence[dict[str, Any]], path: Path) -> None:
    """Loss and accuracy per epoch, train vs validation."""
    epochs = [int(r["epoch"]) for r in history]
    fig = Figure(figsize=(10, 3.8))
    axes = fig.subplots(1, 2)
    for ax, metric in zip(axes, ("loss", "accuracy"), strict=True):
        ax.plot(epochs, [_num(r[f"train_{metric}"]) for r in history], "o-", label="train")
        val = [_num(r.get(f"val_{metric}")) for r in history]
        if any(v is not None for v in val):
            ax.plot(epochs, val, "s-", label="validation")
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    axes[0].set_title("Loss")
    axes[1].set_title("Accuracy")
    _save(fig, path)


def plot_confusion_matrix(cm: Sequence[Sequence[int]], classes: Sequence[str], path: Path,
                          title: str = "Confusion matrix (test)") -> None:
    """Counts, with each row's share (recall) as the cell colour."""
    cm = np.asarray(cm)
    share = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    size = 1.2 + 0.7 * len(classes)
    fig = Figure(figsize=(size + 1.5, size))
    ax = fig.subplots()
    im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, fraction=0.046, label="share of true class")
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center",
                    color="white" if share[i, j] > 0.5 else "black", fontsize=9)
    ax.set_title(title)
    _save(fig, path)


def example_indices(labels: np.ndarray, probs: np.ndarray, n: int = 16) -> np.ndarray:
    """Which images a report shows: up to n/2 of the most confident mistakes (what a reader
    needs to see), the rest spread evenly over the split."""
    mistakes = np.flatnonzero(probs.argmax(1) != labels)
    mistakes = mistakes[np.argsort(-probs[mistakes].max(1), kind="stable")][: n // 2]
    rest = np.setdiff1d(np.arange(len(labels)), mistakes)
    take = min(n - len(mistakes), len(rest))
    spread = rest[np.linspace(0, len(rest) - 1, take).astype(int)] if take else rest[:0]
    return np.concatenate([spread, mistakes]).astype(int)


def plot_examples(pixels: np.ndarray, titles: Sequence[str], path: Path, cols: int = 8,
                  wrong: Sequence[bool] | None = None) -> None:
    """A grid of sample images (N x H x W x C uint8); titles of ``wrong`` ones in red."""
    n = len(pixels)
    rows = max(1, int(np.ceil(n / cols)))
    fig = Figure(figsize=(cols * 1.8, rows * 2.0))
    axes = fig.subplots(rows, cols)
    for ax in np.atleast_1d(axes).ravel():
        ax.axis("off")
    flags = wrong if wrong is not None else [False] * n
    for ax, img, title, bad in zip(np.atleast_1d(axes).ravel(), pixels, titles, flags,
                                   strict=False):
        ax.imshow(img[..., 0] if img.shape[-1] == 1 else img,
                  cmap="gray" if img.shape[-1] == 1 else None)
        ax.set_title(title, fontsize=7, color="#b00020" if bad else "black")
    _save(fig, path)


def _num(value: Any) -> float | None:
    if value in (None, ""):
        return None
    return float(value)


def plot_prediction_examples(pixels: np.ndarray, labels: np.ndarray, probs: np.ndarray,
                             classes: Sequence[str], path: Path, n: int = 16) -> None:
    """The report's example grid: true and predicted class per image, mistakes in red."""
    pick = example_indices(np.asarray(labels), probs, n)
    predicted = probs.argmax(1)
    titles = [f"true {classes[labels[i]]}\npred {classes[predicted[i]]} {probs[i].max():.2f}"
              for i in pick]
    wrong = [bool(predicted[i] != labels[i]) for i in pick]
    plot_examples(pixels[pick], titles, path, wrong=wrong)
