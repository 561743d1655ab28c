"""Pretrained weights from local files, format conversion, grayscale adaptation."""

import logging

import pytest
import torch
import torchvision
from safetensors.torch import save_file

from medscope.errors import MedscopeError
from medscope.models import create_model, load_pretrained

X = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))


def _save(model, path):
    if path.suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    else:
        torch.save(model.state_dict(), path)
    return path


@pytest.mark.parametrize("name, size", [
    ("resnet18", 64), ("simple_cnn", 32), ("lenet5", 32), ("plain18", 32), ("vit_seed", 32),
    ("efficientnet_b0", 32),
])
@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_round_trip_through_a_local_file_gives_identical_outputs(tmp_path, name, size, suffix):
    torch.manual_seed(1)
    original = create_model(name, 4, img_size=size).eval()
    path = _save(original, tmp_path / f"w{suffix}")
    torch.manual_seed(2)  # a different init: only the file can make the outputs equal
    again = create_model(name, 4, img_size=size, pretrained=str(path)).eval()
    x = X[:, :, :size, :size]
    assert torch.equal(original(x), again(x))


def test_torchvision_resnet_checkpoint_loads_into_timm_resnet(tmp_path):
    tv = torchvision.models.resnet50(num_classes=1000).eval()
    path = tmp_path / "tv_resnet50.pth"
    torch.save(tv.state_dict(), path)
    ours = create_model("resnet50", 1000, pretrained=str(path)).eval()
    assert torch.equal(tv(X), ours(X))


def test_training_checkpoint_wrappers_and_prefixes_are_unwrapped(tmp_path):
    model = create_model("resnet18", 3).eval()
    wrapped = {"epoch": 3, "state_dict": {f"module.{k}": v for k, v in
                                          model.state_dict().items()}}
    torch.save(wrapped, tmp_path / "ckpt.pth")
    again = create_model("resnet18", 3, pretrained=str(tmp_path / "ckpt.pth")).eval()
    assert torch.equal(model(X), again(X))


def test_classifier_of_wrong_shape_is_dropped_with_a_message(tmp_path, caplog):
    imagenet = create_model("resnet18", 1000).eval()
    path = _save(imagenet, tmp_path / "r18.safetensors")
    with caplog.at_level(logging.WARNING, logger="medscope"):
        model = create_model("resnet18", 5, pretrained=str(path))
    assert "fc.weight (1000, 512) -> (5, 512)" in caplog.text
    assert "dropped" in caplog.text
    assert model.fc.weight.shape == (5, 512)
    assert torch.equal(model.layer4[1].conv2.weight, imagenet.layer4[1].conv2.weight)
    report = load_pretrained(create_model("resnet18", 5), str(path))
    assert sorted(d.split()[0] for d in report.dropped) == ["fc.bias", "fc.weight"]


def test_head_pool_model_takes_imagenet_backbone(tmp_path):
    path = _save(create_model("resnet34", 1000), tmp_path / "r34.safetensors")
    model = create_model("resnet34", 3, head_pool=2, pretrained=str(path))
    assert model.fc.in_features == 2048


def test_other_mismatches_are_errors_listing_keys(tmp_path):
    path = _save(create_model("resnet18", 3), tmp_path / "r18.pth")
    with pytest.raises(MedscopeError, match=r"do not fit resnet34: \d+ missing: layer1\.2\."):
        create_model("resnet34", 3, pretrained=str(path))
    with pytest.raises(MedscopeError, match=r"unexpected: .*downsample"):
        create_model("plain18", 3, pretrained=str(path))


def test_hub_id_offline_fails_fast_naming_the_local_alternative(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-cache"))  # not the user's own cache
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    for source in ("timm/resnet18.a1_in1k", "hf-hub:timm/resnet18.a1_in1k", "resnet18.a1_in1k",
                   "imagenet"):
        with pytest.raises(MedscopeError, match=r"not in the Hugging Face cache .*"
                                                r"--pretrained path/to/weights\.safetensors"):
            create_model("resnet18", 2, pretrained=source)


def test_missing_file_and_pickled_model_are_clear_errors(tmp_path):
    with pytest.raises(MedscopeError, match="weights file not found"):
        create_model("resnet18", 2, pretrained=str(tmp_path / "nope.pth"))
    torch.save(create_model("lenet5", 2), tmp_path / "whole.pt")  # a pickled module
    with pytest.raises(MedscopeError, match="cannot read weights"):
        create_model("lenet5", 2, pretrained=str(tmp_path / "whole.pt"))


@pytest.mark.parametrize("name", ["resnet18", "simple_cnn", "efficientnet_b0", "vit_seed"])
def test_grayscale_adaptation_matches_rgb_on_replicated_grey(tmp_path, name):
    torch.manual_seed(3)
    rgb = create_model(name, 3, img_size=32).eval()
    path = _save(rgb, tmp_path / "rgb.safetensors")
    grey_model = create_model(name, 3, in_chans=1, img_size=32, pretrained=str(path)).eval()
    grey = torch.rand(2, 1, 32, 32)
    expected = rgb(grey.expand(-1, 3, -1, -1))
    torch.testing.assert_close(grey_model(grey), expected, rtol=1e-4, atol=1e-5)


def test_vit_position_embedding_is_resampled_to_another_size(tmp_path):
    path = _save(create_model("vit_seed", 3, img_size=64), tmp_path / "vit64.safetensors")
    model = create_model("vit_seed", 3, img_size=32, pretrained=str(path))
    assert model.pos_embed.shape == (1, 17, 128)
