"""Freezing, frozen BatchNorm, discriminative learning rates, two-phase fine-tuning."""

import pytest
import torch

from medscope.errors import MedscopeError
from medscope.models import (
    apply_freeze,
    create_model,
    param_groups,
    set_frozen_bn_eval,
    unfreeze,
)
from medscope.models.transfer import head_param_names, stage_param_names


def _train_step(model, lr=0.1, head_lr_mult=1.0, steps=1):
    opt = torch.optim.AdamW(param_groups(model, lr, head_lr_mult), weight_decay=0.05)
    model.train()
    set_frozen_bn_eval(model)
    for _ in range(steps):
        x = torch.randn(4, 3, 32, 32)
        loss = torch.nn.functional.cross_entropy(model(x), torch.tensor([0, 1, 2, 0]))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return opt


def _snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("name", ["resnet18", "simple_cnn", "efficientnet_b0", "vit_seed"])
def test_backbone_freeze_keeps_every_backbone_tensor_bit_identical(name):
    torch.manual_seed(0)
    model = create_model(name, 3, img_size=32)
    apply_freeze(model, "backbone")
    before = _snapshot(model)
    _train_step(model)
    head = set(head_param_names(model))
    for key, value in model.state_dict().items():
        if key in head:
            assert not torch.equal(value, before[key]), key
        else:  # weights *and* BN running statistics
            assert torch.equal(value, before[key]), key
    assert all(p.grad is None for n, p in model.named_parameters() if n not in head)


def test_stages_freeze_resnet_stem_and_first_stages():
    torch.manual_seed(0)
    # timm zero-inits each block's last BN, which would leave layer2's first convs without
    # gradient on the first step; the test needs every unfrozen tensor to move.
    model = create_model("resnet18", 3, zero_init_last=False)
    report = apply_freeze(model, "stages:2")  # stem (conv1/bn1) + layer1
    before = _snapshot(model)
    _train_step(model)
    after = model.state_dict()
    for key in after:
        changed = not torch.equal(after[key], before[key])
        frozen = key.startswith(("conv1.", "bn1.", "layer1."))
        if key.endswith("num_batches_tracked") or key.startswith("layer4"):
            continue
        assert changed != frozen, key
    assert report.frozen == len(stage_param_names(model)[0]) + len(stage_param_names(model)[1])


def test_resnet_stages_are_stem_then_layers():
    stages = stage_param_names(create_model("resnet18", 2))
    assert len(stages) == 5
    assert stages[0] == ["conv1.weight", "bn1.weight", "bn1.bias"]
    assert {n.split(".")[0] for n in stages[4]} == {"layer4"}


def test_frozen_bn_layers_stay_in_eval_after_train():
    model = create_model("resnet18", 2)
    apply_freeze(model, "stages:1")
    model.train()
    assert model.bn1.training  # plain train() flips everything back...
    assert set_frozen_bn_eval(model) == 1
    assert not model.bn1.training and model.layer1[0].bn1.training


def test_param_groups_give_the_head_its_multiplied_rate():
    model = create_model("resnet18", 2)
    groups = param_groups(model, 1e-3, head_lr_mult=10)
    assert [g["name"] for g in groups] == ["backbone", "head"]
    assert groups[1]["lr"] == pytest.approx(1e-2) and groups[0]["lr"] == 1e-3
    assert groups[1]["params"] == [model.fc.weight, model.fc.bias]
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


def test_two_phase_fine_tuning_with_one_optimizer():
    torch.manual_seed(0)
    model = create_model("simple_cnn", 3, img_size=32)
    apply_freeze(model, "backbone")
    opt = torch.optim.SGD(param_groups(model, 0.1), lr=0.1)
    first_conv = model.features[0].weight.clone()

    def step():
        model.train()
        set_frozen_bn_eval(model)
        loss = model(torch.randn(4, 3, 32, 32)).logsumexp(1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()

    step()
    assert torch.equal(model.features[0].weight, first_conv)
    unfreeze(model)
    step()
    assert not torch.equal(model.features[0].weight, first_conv)
    assert model.features[1].training


def test_bad_freeze_specs():
    model = create_model("resnet18", 2)
    for spec in ("all", "stages:", "stages:0", "stages:x"):
        with pytest.raises(MedscopeError, match="--freeze"):
            apply_freeze(model, spec)
    with pytest.raises(MedscopeError, match="has 5 stages"):
        apply_freeze(model, "stages:6")
    apply_freeze(model, "none")
    assert all(p.requires_grad for p in model.parameters())
