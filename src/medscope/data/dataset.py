"""A torch Dataset over cached uint8 pixels."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import Dataset


class PixelDataset(Dataset):
    """Yields (uint8 CHW tensor, label); normalisation happens later, per batch.

    ``labels``: N class indices, or an N x K 0/1 matrix (multi-label, yielded as float for
    BCEWithLogitsLoss). ``pixels`` may be a read-only memmap of the disk cache."""

    def __init__(self, pixels: np.ndarray, labels: np.ndarray, transform: nn.Module | None = None):
        if len(pixels) != len(labels):
            raise ValueError("pixels and labels differ in length")
        self.pixels = pixels
        labels = np.asarray(labels)
        self.labels = torch.as_tensor(labels, dtype=torch.float32 if labels.ndim == 2
                                      else torch.long)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        # A copy: the cache's memmap is read-only and torch wants writable memory.
        img = torch.from_numpy(np.array(self.pixels[i])).permute(2, 0, 1)
        if self.transform is not None:
            img = self.transform(img)
        return img, self.labels[i]
