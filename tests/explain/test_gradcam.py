"""Grad-CAM, Grad-CAM++ and occlusion heat maps: where they look, sanity, layers, overlays."""

from __future__ import annotations

import io
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.stats import spearmanr

from medscope.errors import MedscopeError
from medscope.explain import heatmap, overlay_png, target_layer
from medscope.models import create_model
from medscope.predictor import Predictor
from tests.explain.conftest import blob_images


def _top_left_mass(heat: np.ndarray) -> float:
    half = heat.shape[0] // 2
    return float(heat[:half, :half].sum() / max(heat.sum(), 1e-12))


@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "occlusion"])
@pytest.mark.slow
def test_heat_concentrates_on_the_corner_blob(blob_predictor, method):
    images = blob_images(8, True, seed=7)
    probs = blob_predictor.model(blob_predictor.normalize(
        torch.from_numpy(images).permute(0, 3, 1, 2))).softmax(1).detach().numpy()
    assert (probs.argmax(1) == 1).mean() >= 0.8, "the tiny model did not learn the blob"
    masses = [_top_left_mass(heatmap(blob_predictor, img, target="blob", method=method))
              for img in images]
    assert np.mean(masses) > 0.5, masses


def test_randomised_model_gives_a_different_map(blob_predictor, scrambled):
    rhos = []
    for img in blob_images(6, True, seed=9):
        a = heatmap(blob_predictor, img, target="blob")
        b = heatmap(scrambled, img, target="blob")
        rhos.append(spearmanr(a.ravel(), b.ravel()).statistic)
    assert np.mean(np.nan_to_num(rhos)) < 0.5, rhos


def test_heatmap_is_unit_range_and_leaves_no_hooks(trained_run):
    predictor = Predictor.load(trained_run.root, precision="fp32", device="cpu")
    img = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    with torch.no_grad():
        heat = heatmap(predictor, img, method="gradcam++")
        assert not torch.is_grad_enabled()
    assert heat.shape == (32, 32) and heat.dtype == np.float32
    assert heat.min() >= 0.0 and heat.max() <= 1.0
    hooks = sum(len(m._forward_hooks) + len(m._backward_hooks) for m in predictor.model.modules())
    assert hooks == 0


@pytest.mark.parametrize("name,size,expected", [
    ("simple_cnn", 32, "features"),
    ("resnet18", 64, "layer4"),
    ("vit_seed", 32, "blocks.5.norm1"),
    ("lenet5", 32, "features.6"),
])
def test_auto_target_layer(name, size, expected):
    model = create_model(name, num_classes=3, in_chans=3, img_size=size).eval()
    layer = target_layer(model)
    assert dict(model.named_modules())[expected] is layer


def test_vit_map_follows_the_patch_grid():
    from medscope.core.runtime import select_runtime
    from medscope.data.transforms import Normalize

    model = create_model("vit_seed", num_classes=2, in_chans=3, img_size=32).eval()
    predictor = SimpleNamespace(model=model, normalize=Normalize([0.5] * 3, [0.25] * 3),
                                runtime=select_runtime("cpu", "fp32"), classes=["a", "b"],
                                img_size=32, in_chans=3)
    img = np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    heat = heatmap(predictor, img, method="gradcam")
    assert heat.shape == (32, 32) and heat.max() == pytest.approx(1.0)
    assert heat.std() > 0  # patch tokens do carry gradient: not a flat map


def test_unknown_layer_class_and_method_are_user_errors(trained_run):
    predictor = Predictor.load(trained_run.root, precision="fp32", device="cpu")
    img = np.zeros((32, 32, 3), dtype=np.uint8)
    with pytest.raises(MedscopeError, match="unknown layer 'nope'.*features"):
        heatmap(predictor, img, layer="nope")
    with pytest.raises(MedscopeError, match="unknown class 'delta'.*alpha, beta, gamma"):
        heatmap(predictor, img, target="delta")
    with pytest.raises(MedscopeError, match="unknown explain method"):
        heatmap(predictor, img, method="lime")
    with pytest.raises(MedscopeError, match="expected 32x32x3 uint8"):
        heatmap(predictor, np.zeros((40, 40, 3), dtype=np.uint8))


def test_named_layer_changes_the_map(trained_run):
    predictor = Predictor.load(trained_run.root, precision="fp32", device="cpu")
    img = np.random.default_rng(2).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    early = heatmap(predictor, img, target=0, layer="features.3")
    late = heatmap(predictor, img, target=0)
    assert not np.allclose(early, late)


def test_overlay_png_is_the_image_with_the_heat(trained_run):
    img = np.full((32, 32, 1), 128, dtype=np.uint8)
    heat = np.zeros((32, 32), dtype=np.float32)
    heat[:8, :8] = 1.0
    png = Image.open(io.BytesIO(overlay_png(img, heat)))
    arr = np.asarray(png)
    assert png.format == "PNG" and arr.shape == (32, 32, 3)
    # jet maps 1.0 to dark red and 0.0 to dark blue: the hot corner is redder than the rest.
    assert arr[2, 2, 0] > arr[20, 20, 0] and arr[20, 20, 2] > arr[2, 2, 2]
    with pytest.raises(MedscopeError, match="does not match"):
        overlay_png(img, np.zeros((8, 8), dtype=np.float32))


def test_auto_layer_skips_stages_pooled_to_one_pixel_at_the_real_size():
    # resnet18 at 32 px: layer4 is 1 x 1 (a constant map), so layer3 (2 x 2) is the last
    # spatial stage; at its configured 224 px it is layer4.
    model = create_model("resnet18", num_classes=3, in_chans=3, img_size=32).eval()
    layers = dict(model.named_modules())
    assert target_layer(model, example=torch.zeros(1, 3, 32, 32)) is layers["layer3"]
    assert target_layer(model, example=torch.zeros(1, 3, 224, 224)) is layers["layer4"]
