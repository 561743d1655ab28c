"""VGG with a Keras-style flatten head (include_top=False + Flatten + Dense)."""

from __future__ import annotations

import pytest
import torch

from medscope.errors import MedscopeError
from medscope.models import create_model
from medscope.models.transfer import apply_freeze, head_param_names


def test_vgg16_flatten_head_has_keras_parameter_count_and_trains_only_the_dense():
    with torch.device("meta"):
        model = create_model("vgg16", 2, img_size=224, flatten_head=True)
    # Keras VGG16(include_top=False): 14,714,688; Dense(2) on 7*7*512 = 25,088 inputs.
    assert sum(p.numel() for p in model.parameters()) == 14_714_688 + 25_088 * 2 + 2
    assert head_param_names(model) == ["head.fc.weight", "head.fc.bias"]
    report = apply_freeze(model, "backbone")
    assert report.trainable == 2 and report.frozen == 26


@pytest.mark.slow
def test_flatten_head_follows_the_input_size_and_refuses_other_families():
    model = create_model("vgg11", 3, img_size=64, flatten_head=True).eval()
    assert model.head.fc.in_features == 512 * 2 * 2
    assert model(torch.zeros(2, 3, 64, 64)).shape == (2, 3)
    with pytest.raises(MedscopeError, match="flatten_head only applies to VGG"):
        create_model("resnet18", 3, img_size=64, flatten_head=True)
