"""Augmentation presets (torchvision transforms v2) that run on uint8 CHW tensors after the cache,
and the normalisation that runs on whole batches."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
from torchvision.transforms import v2

from medscope.errors import MedscopeError


class RandomRot90(nn.Module):
    """Rotate by a random multiple of 90°: microscopy has no 'up'."""

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        k = int(torch.randint(0, 4, ()).item())
        return torch.rot90(img, k, dims=(-2, -1)) if k else img


def augmentation(preset: str) -> nn.Module:
    if preset == "none":
        return nn.Identity()
    if preset == "flips":
        return v2.Compose([v2.RandomHorizontalFlip(), v2.RandomVerticalFlip(), RandomRot90()])
    raise MedscopeError(f"unknown augmentation preset {preset!r}")


class Normalize(nn.Module):
    """uint8 batch (N, C, H, W) -> float, scaled to [0, 1], minus mean, over std."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.float() / 255.0 - self.mean) / self.std


def channel_stats(pixels, max_images: int = 2000) -> tuple[list[float], list[float]]:
    """Per-channel mean and std (on the 0-1 scale) of an N x H x W x C uint8 array."""
    sample = torch.from_numpy(pixels[:max_images]).float() / 255.0
    flat = sample.reshape(-1, sample.shape[-1])
    std = flat.std(0).clamp_min(1e-3)
    return flat.mean(0).tolist(), std.tolist()
