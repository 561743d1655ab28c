"""Every zoo model: forward + backward at its smallest size, 1 and 3 channels."""

import pytest
import torch

from medscope.models import create_model, min_size
from medscope.models.zoo import zoo_names

HEAVY = {"resnet50", "resnet101", "resnet152", "vgg16", "vgg16_bn", "inception_v3",
         "densenet121", "densenet161"}


def _params():
    for name, _ in zoo_names():
        marks = [pytest.mark.slow] if name in HEAVY else []
        yield pytest.param(name, marks=marks, id=name)


@pytest.mark.parametrize("name", list(_params()))
@pytest.mark.parametrize("in_chans", [1, 3])
@pytest.mark.slow
def test_forward_backward_at_min_size(name, in_chans):
    torch.manual_seed(0)
    size = min_size(name)
    model = create_model(name, 3, in_chans=in_chans, img_size=size).train()
    x = torch.randn(2, in_chans, size, size)
    logits = model(x)
    assert logits.shape == (2, 3)
    torch.nn.functional.cross_entropy(logits, torch.tensor([0, 2])).backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert model.get_classifier().weight.grad.abs().sum() > 0
