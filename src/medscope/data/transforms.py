"""Augmentation presets as per-image torchvision v2 pipelines, MixUp/CutMix and the
normalisation of whole batches.

Training augments whole batches with ``augment.BatchAugment`` (same distributions, a few tensor
ops per batch); the per-image pipelines here are its reference (tests compare the statistics)
and what a plain PyTorch pipeline would run in its workers (``benchmarks/train_throughput.py``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from torchvision.transforms import v2

from medscope.data.stain import StainNormalize, draw_stain_jitter, stain_colour
from medscope.errors import MedscopeError


class RandomRot90(nn.Module):
    """Rotate by a random multiple of 90°: microscopy has no 'up'."""

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        k = int(torch.randint(0, 4, ()).item())
        return torch.rot90(img, k, dims=(-2, -1)) if k else img


class RandomStainJitter(nn.Module):
    """The ``stain`` preset's colour step on one uint8 CHW image (HED jitter, brightness,
    contrast, gamma), its parameters drawn from torch's global generator."""

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        return stain_colour(img.unsqueeze(0), *draw_stain_jitter(1, None))[0]


class SameSizeResizedCrop(nn.Module):
    """v2.RandomResizedCrop back to the image's own size (the ``ssl`` preset's crop)."""

    def __init__(self, scale: tuple[float, float]) -> None:
        super().__init__()
        self.scale = scale

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        crop = v2.RandomResizedCrop(tuple(img.shape[-2:]), scale=self.scale, antialias=False)
        return crop(img)


PRESETS = ("none", "flips", "microscopy", "keras-classic", "randaugment", "stain", "ssl")
# The ``ssl`` preset's crop area (fraction of the image): SimCLR's 0.08-1.
SSL_CROP_SCALE = (0.08, 1.0)


def augmentation(preset: str) -> nn.Module:
    """A per-image augmentation on uint8 CHW tensors or PIL images, by preset name."""
    if preset == "none":
        return nn.Identity()
    if preset == "flips":
        return v2.Compose([v2.RandomHorizontalFlip(), v2.RandomVerticalFlip(), RandomRot90()])
    if preset == "microscopy":
        # Orientation is meaningless under the microscope; stain, focus and magnification vary
        # a little from slide to slide and lab to lab.
        return v2.Compose([
            v2.RandomHorizontalFlip(), v2.RandomVerticalFlip(), RandomRot90(),
            v2.RandomAffine(degrees=0, translate=(0.05, 0.05), scale=(0.9, 1.1)),
            v2.ColorJitter(brightness=0.15, contrast=0.15, saturation=0.15, hue=0.03),
            v2.RandomApply([v2.GaussianBlur(kernel_size=3, sigma=(0.1, 1.0))], p=0.2),
        ])
    if preset == "keras-classic":
        # ImageDataGenerator(shear_range=0.2, zoom_range=0.2, horizontal_flip=True): Keras 2
        # reads the shear in degrees and zooms within [1 - 0.2, 1 + 0.2].
        return v2.Compose([v2.RandomAffine(degrees=0, shear=0.2, scale=(0.8, 1.2)),
                           v2.RandomHorizontalFlip()])
    if preset == "randaugment":
        return v2.RandAugment()
    if preset == "stain":
        # The microscopy geometry and blur; the colour varies as stains and lamps do
        # (medscope.data.stain).
        return v2.Compose([
            v2.RandomHorizontalFlip(), v2.RandomVerticalFlip(), RandomRot90(),
            v2.RandomAffine(degrees=0, translate=(0.05, 0.05), scale=(0.9, 1.1)),
            RandomStainJitter(),
            v2.RandomApply([v2.GaussianBlur(kernel_size=3, sigma=(0.1, 1.0))], p=0.2),
        ])
    if preset == "ssl":
        # SimCLR's views (crop, colour jitter on 80 %, grey on 20 %, blur) with the
        # orientations microscopy allows; kept strong: the pretext task is pairing two views.
        return v2.Compose([
            SameSizeResizedCrop(SSL_CROP_SCALE),
            v2.RandomHorizontalFlip(), v2.RandomVerticalFlip(), RandomRot90(),
            v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
            v2.RandomGrayscale(p=0.2),
            v2.RandomApply([v2.GaussianBlur(kernel_size=3, sigma=(0.1, 2.0))], p=0.5),
        ])
    raise MedscopeError(f"unknown augmentation preset {preset!r} (one of {', '.join(PRESETS)})")


def batch_mixing(num_classes: int, mixup: float = 0.0, cutmix: float = 0.0):
    """``mix(images, labels) -> (images, soft labels N x K)`` applying MixUp and/or CutMix to a
    float batch, or None when both alphas are 0. The loop calls it after augmentation (on
    uint8) and normalisation: both mixes are convex combinations or pastes, which commute with
    the per-channel affine normalisation."""
    mixers = ([v2.MixUp(alpha=mixup, num_classes=num_classes)] if mixup > 0 else []) + \
             ([v2.CutMix(alpha=cutmix, num_classes=num_classes)] if cutmix > 0 else [])
    if not mixers:
        return None
    return mixers[0] if len(mixers) == 1 else v2.RandomChoice(mixers)


class Normalize(nn.Module):
    """uint8 batch (N, C, H, W) -> float, scaled to [0, 1], minus mean, over std."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.float() / 255.0 - self.mean) / self.std


def input_normalisation(mean: Sequence[float], std: Sequence[float],
                        stain_norm: Mapping[str, Any] | None = None) -> nn.Module:
    """A checkpoint's preprocessing of 0-255 pixels (uint8 or float): its stain
    normalisation when it records one (``stain_norm``: ``StainNormalize``'s state), then
    ``Normalize(mean, std)``."""
    if stain_norm is None:
        return Normalize(mean, std)
    return nn.Sequential(StainNormalize.from_state(stain_norm), Normalize(mean, std))


def channel_stats(pixels, max_images: int = 2000, seed: int = 0
                  ) -> tuple[list[float], list[float]]:
    """Per-channel mean and std (on the 0-1 scale) of an N x H x W x C uint8 array, from at
    most ``max_images`` drawn evenly at random (seeded): data sets are often ordered by class,
    and the first images alone would give one class's statistics."""
    if len(pixels) > max_images:
        pick = np.sort(np.random.default_rng(seed).choice(len(pixels), max_images, replace=False))
        pixels = pixels[pick]
    sample = torch.from_numpy(np.array(pixels)).float() / 255.0  # a copy: a memmap is read-only
    flat = sample.reshape(-1, sample.shape[-1])
    std = flat.std(0).clamp_min(1e-3)
    return flat.mean(0).tolist(), std.tolist()
