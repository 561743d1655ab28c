"""Architectures: published parameter counts and MACs, sizes, options."""

import pytest
import torch

from medscope.errors import MedscopeError
from medscope.models import count_params, create_model, gmacs, min_size


def build_meta(name, num_classes=1000, **kw):
    # The meta device allocates no weights: counting VGG-16's 138M parameters is instant.
    with torch.device("meta"):
        return create_model(name, num_classes, **kw)


@pytest.mark.parametrize("name, published", [
    ("resnet18", 11_689_512),
    ("resnet50", 25_557_032),
    ("vgg16", 138_357_544),
    ("densenet121", 7_978_856),
    ("efficientnet_b0", 5_288_548),
])
def test_timm_params_match_published(name, published):
    assert abs(count_params(build_meta(name)) - published) <= published * 0.001


@pytest.mark.parametrize("name, published", [("resnet18", 1.82), ("resnet50", 4.11)])
def test_gmacs_at_224_match_published(name, published):
    assert gmacs(build_meta(name), 224) == pytest.approx(published, rel=0.03)


def test_lenet5_is_the_61_7k_parameter_network():
    model = create_model("lenet5", 10, in_chans=1)
    assert count_params(model) == 61_706
    assert model(torch.zeros(2, 1, 32, 32)).shape == (2, 10)


def test_alexnet_is_the_62_3m_parameter_network():
    model = build_meta("alexnet")
    assert count_params(model) == 62_378_344
    convs = [m for m in model.features if isinstance(m, torch.nn.Conv2d)]
    assert [(c.out_channels, c.kernel_size[0], c.stride[0]) for c in convs] == [
        (96, 11, 4), (256, 5, 1), (384, 3, 1), (384, 3, 1), (256, 3, 1)]


def test_simple_cnn_flatten_is_100352_at_224():
    model = build_meta("simple_cnn", 4, img_size=224)
    assert model.flatten_dim == 100_352
    assert model.head[1].in_features == 100_352


def test_plain18_is_resnet18_without_any_shortcut():
    plain, res = build_meta("plain18"), build_meta("resnet18")
    # resnet18's three 1x1 projection shortcuts (conv + BN) are the whole difference.
    projections = (64 * 128 + 2 * 128) + (128 * 256 + 2 * 256) + (256 * 512 + 2 * 512)
    assert count_params(plain) == count_params(res) - projections == 11_515_688
    assert not any("downsample" in n for n, _ in plain.named_parameters())
    assert [len(plain.get_submodule(f"layer{i}")) for i in range(1, 5)] == [2, 2, 2, 2]
    assert [len(build_meta("plain34").get_submodule(f"layer{i}")) for i in range(1, 5)] == [
        3, 4, 6, 3]


def test_plain_block_has_no_identity_path():
    # With the residual branch's last BN zeroed, a residual block passes its input through;
    # a plain block must output relu(0) = 0.
    model = create_model("plain18", 2).eval()
    block = model.layer1[0]
    torch.nn.init.zeros_(block.bn2.weight)
    torch.nn.init.zeros_(block.bn2.bias)
    x = torch.rand(1, 64, 8, 8)
    assert torch.count_nonzero(block(x)) == 0


@pytest.mark.parametrize("n", [1, 2, 4, 8])
def test_head_pool_feeds_512_n2_features_to_the_classifier(n):
    model = create_model("resnet34", 3, head_pool=n)
    assert model.get_classifier().in_features == 512 * n * n
    assert model(torch.zeros(1, 3, 64, 64)).shape == (1, 3)


def test_head_pool_rejects_other_sizes_and_non_resnets():
    with pytest.raises(MedscopeError, match="head_pool"):
        build_meta("resnet18", head_pool=3)
    with pytest.raises(MedscopeError, match="ResNet"):
        build_meta("efficientnet_b0", head_pool=2)


def test_vit_seed_configuration():
    model = build_meta("vit_seed", 4, img_size=64)
    assert model.patch_embed.patch_size == (8, 8)
    assert model.embed_dim == 128 and len(model.blocks) == 6
    assert model.blocks[0].attn.num_heads == 16
    assert model.blocks[0].mlp.fc1.out_features == 512
    assert model.blocks[0].attn.attn_drop.p == 0.3
    assert model.pos_embed.shape == (1, (64 // 8) ** 2 + 1, 128)
    block = 4 * 128 * 128 + 4 * 128 + 2 * 128 * 512 + 512 + 128 + 4 * 128
    expected = 6 * block + (3 * 64 * 128 + 128) + 128 + 65 * 128 + 2 * 128 + 128 * 4 + 4
    assert count_params(model) == expected


def test_vit_seed_needs_size_divisible_by_8():
    with pytest.raises(MedscopeError, match="divisible by 8"):
        build_meta("vit_seed", 2, img_size=60)


def test_timm_vit_takes_the_requested_size():
    model = build_meta("vit_small_patch16_224", 2, img_size=64)
    assert model.pos_embed.shape[1] == (64 // 16) ** 2 + 1


@pytest.mark.parametrize("name, smallest", [
    ("lenet5", 32), ("alexnet", 67), ("resnet18", 32), ("inception_v3", 75),
    ("vit_small_patch16_224", 16), ("vit_seed", 8),
])
def test_below_min_size_is_a_clear_error(name, smallest):
    assert min_size(name) == smallest
    with pytest.raises(MedscopeError, match=f"{name}.*at least {smallest} px"):
        create_model(name, 2, img_size=smallest - 1)


def test_alexnet_min_size_is_really_the_minimum():
    model = create_model("alexnet", 2, img_size=67)
    assert model(torch.zeros(1, 3, 67, 67)).shape == (1, 2)
    with pytest.raises(RuntimeError):  # one pixel less and a max-pool gets an empty input
        model(torch.zeros(1, 3, 66, 66))


def test_unknown_names_and_bad_arguments():
    with pytest.raises(MedscopeError, match="unknown model 'resnet19'"):
        create_model("resnet19", 2)
    with pytest.raises(MedscopeError, match="num_classes"):
        create_model("resnet18", 1)
    with pytest.raises(MedscopeError, match="in_chans"):
        create_model("resnet18", 2, in_chans=4)
