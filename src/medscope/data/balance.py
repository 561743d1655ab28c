"""Class imbalance: inverse-frequency class weights for the loss, or a sampler that draws every
class about equally often (the fungi data is 6:1 between its biggest and smallest class)."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import WeightedRandomSampler


def class_counts(targets: np.ndarray, num_classes: int) -> np.ndarray:
    """Images per class (multi-label: images carrying each label)."""
    targets = np.asarray(targets)
    if targets.ndim == 2:
        return targets.sum(0).astype(np.int64)
    return np.bincount(targets, minlength=num_classes)


def class_weights(targets: np.ndarray, num_classes: int) -> torch.Tensor:
    """Multi-class: n / (K * count_c), so a balanced set gets all ones (sklearn's 'balanced').
    Multi-label: the positive weight negatives / positives of each label (BCE ``pos_weight``)."""
    targets = np.asarray(targets)
    counts = class_counts(targets, num_classes).astype(np.float64)
    if targets.ndim == 2:
        weights = (len(targets) - counts) / np.maximum(counts, 1)
    else:
        weights = len(targets) / (num_classes * np.maximum(counts, 1))
    return torch.tensor(weights, dtype=torch.float32)


def sample_weights(targets: np.ndarray, num_classes: int) -> np.ndarray:
    """Per sample 1 / (size of its class); multi-label: of its rarest label (no label: of the
    label-free samples)."""
    targets = np.asarray(targets)
    counts = class_counts(targets, num_classes).astype(np.float64)
    if targets.ndim == 1:
        return 1.0 / counts[targets]
    inv = np.where(targets > 0, 1.0 / np.maximum(counts, 1), 0.0).max(1)
    empty = inv == 0
    if empty.any():
        inv[empty] = 1.0 / empty.sum()
    return inv


def balanced_sampler(targets: np.ndarray, num_classes: int, generator: torch.Generator | None
                     = None) -> WeightedRandomSampler:
    """Draws with replacement, as many samples per epoch as there are, classes about equal."""
    weights = torch.as_tensor(sample_weights(targets, num_classes), dtype=torch.double)
    return WeightedRandomSampler(weights, num_samples=len(weights), replacement=True,
                                 generator=generator)


def distribution_line(targets: np.ndarray, classes: list[str]) -> str:
    """'H1 3523 (38.7%), H2 …; imbalance 6.0:1' for the log at train start."""
    counts = class_counts(targets, len(classes))
    total = max(int(counts.sum()), 1)
    parts = ", ".join(f"{c} {n} ({n / total:.1%})" for c, n in zip(classes, counts, strict=True))
    ratio = counts.max() / max(counts.min(), 1)
    return f"{parts}; imbalance {ratio:.1f}:1"
