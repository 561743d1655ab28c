"""plain18 and resnet18 both train on the same tiny task."""

import pytest
import torch

from medscope.models import create_model


def _tiny_task(n=32, size=32):
    # Class = which half of the image is brighter: learnable in a few dozen steps.
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, 1, size, size, generator=g) * 0.5
    y = torch.arange(n) % 2
    x[y == 0, :, : size // 2] += 0.5
    x[y == 1, :, size // 2:] += 0.5
    return x, y


@pytest.mark.slow
@pytest.mark.parametrize("name", ["plain18", "resnet18"])
def test_trains_on_tiny_task(name):
    torch.manual_seed(0)
    x, y = _tiny_task()
    model = create_model(name, 2, in_chans=1, img_size=32)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses, accuracy = [], 0.0
    model.train()
    for _ in range(25):
        logits = model(x)
        loss = torch.nn.functional.cross_entropy(logits, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        # Train-mode accuracy: 25 steps are too few for BN running stats to settle for eval().
        accuracy = (logits.argmax(1) == y).float().mean().item()
    assert losses[-1] < 0.5 * losses[0]
    assert accuracy >= 0.9
