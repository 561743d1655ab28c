"""A tiny CNN trained here on a task where the class is decided by a bright blob in the
top-left corner, wrapped in the surface ``heatmap`` uses (model, normalize, runtime, classes)."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn as nn

from medscope.core.runtime import select_runtime
from medscope.data.transforms import Normalize
from tests.conftest import one_torch_thread

BLOB_SIZE = 48


def blob_images(n: int, with_blob: bool, size: int = BLOB_SIZE, seed: int = 0) -> np.ndarray:
    """N x S x S x 3 uint8: dim noise, plus (``with_blob``) a bright disc in the top-left
    quadrant at a random place."""
    rng = np.random.default_rng(seed + (1000 if with_blob else 0))
    yy, xx = np.mgrid[0:size, 0:size]
    out = rng.normal(70, 20, (n, size, size, 3))
    if with_blob:
        for img in out:
            cy, cx = rng.integers(6, size // 2 - 6, 2)
            img[(yy - cy) ** 2 + (xx - cx) ** 2 <= 20] = 230
    return np.clip(out, 0, 255).astype(np.uint8)


def tiny_gap_cnn() -> nn.Module:
    # Global average pooling before the classifier: the architecture Grad-CAM was derived for
    # (a flatten head like simple_cnn's can weigh the same channel with opposite signs at
    # different places, and the averaged gradient then hides the evidence).
    def block(cin: int, cout: int, pool: bool) -> list[nn.Module]:
        layers = [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU()]
        return layers + ([nn.MaxPool2d(2)] if pool else [])

    features = nn.Sequential(*block(3, 16, True), *block(16, 32, True), *block(32, 32, False))
    return nn.Sequential(features, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 2))


def as_predictor(model: nn.Module) -> SimpleNamespace:
    return SimpleNamespace(model=model.eval(), normalize=Normalize([0.3] * 3, [0.1] * 3),
                           runtime=select_runtime("cpu", "fp32"), classes=["plain", "blob"],
                           img_size=BLOB_SIZE, in_chans=3)


@pytest.fixture(scope="session")
def blob_predictor() -> SimpleNamespace:
    torch.manual_seed(0)
    pixels = np.concatenate([blob_images(48, False), blob_images(48, True)])
    labels = torch.tensor([0] * 48 + [1] * 48)
    predictor = as_predictor(tiny_gap_cnn())
    model, x = predictor.model, predictor.normalize(torch.from_numpy(pixels).permute(0, 3, 1, 2))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _step in range(60):
        idx = torch.randperm(len(x))[:16]
        loss = nn.functional.cross_entropy(model(x[idx]), labels[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    return predictor


@pytest.fixture
def scrambled(blob_predictor) -> SimpleNamespace:
    """The same network with every layer re-initialised (the model-randomisation check)."""
    model = copy.deepcopy(blob_predictor.model)
    torch.manual_seed(1)
    for module in model.modules():
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
    return as_predictor(model)


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    with one_torch_thread():
        yield
