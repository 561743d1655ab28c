import numpy as np
import pytest
import torch

from medscope.data.balance import (
    balanced_sampler,
    class_weights,
    distribution_line,
    sample_weights,
)
from medscope.data.transforms import PRESETS, Normalize, augmentation, batch_mixing
from medscope.errors import MedscopeError


def test_inverse_frequency_weights():
    w = class_weights(np.array([0] * 60 + [1] * 30 + [2] * 10), 3)
    assert torch.allclose(w, torch.tensor([100 / 180, 100 / 90, 100 / 30]))


def test_multilabel_pos_weight():
    y = np.array([[1, 0], [1, 1], [0, 0], [1, 0]])
    assert torch.allclose(class_weights(y, 2), torch.tensor([1 / 3, 3.0]))


def test_sampler_draws_classes_about_equally():
    labels = np.array([0] * 600 + [1] * 100)
    sampler = balanced_sampler(labels, 2, torch.Generator().manual_seed(0))
    drawn = labels[list(sampler)]
    assert len(drawn) == 700 and 0.4 < drawn.mean() < 0.6


@pytest.mark.slow
def test_sample_weights_multilabel_use_rarest_label():
    y = np.array([[1, 0], [1, 1], [1, 0], [0, 0]])
    w = sample_weights(y, 2)
    assert w[1] == 1.0 and w[0] == pytest.approx(1 / 3) and w[3] == 1.0


def test_distribution_line_shows_imbalance():
    line = distribution_line(np.array([0] * 6 + [1]), ["big", "small"])
    assert "big 6 (85.7%)" in line and "imbalance 6.0:1" in line


@pytest.mark.parametrize("preset", PRESETS)
def test_presets_keep_shape_and_dtype(preset):
    torch.manual_seed(0)
    img = torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8)
    out = augmentation(preset)(img)
    assert out.shape == img.shape and out.dtype == torch.uint8


def test_flips_preset_changes_images_sometimes():
    torch.manual_seed(0)
    img = torch.arange(3 * 16 * 16, dtype=torch.int64).reshape(3, 16, 16).to(torch.uint8)
    aug = augmentation("flips")
    assert any(not torch.equal(aug(img), img) for _ in range(10))


def test_unknown_preset():
    with pytest.raises(MedscopeError, match="unknown augmentation preset 'spin'"):
        augmentation("spin")


def test_mixup_gives_soft_labels():
    mix = batch_mixing(3, mixup=0.4)
    images = torch.stack([torch.full((3, 8, 8), i * 50.0) for i in range(4)])
    mixed, labels = mix(images, torch.arange(4) % 3)
    assert labels.shape == (4, 3) and torch.allclose(labels.sum(1), torch.ones(4))
    assert mixed.dtype == torch.float32 and mixed.shape == images.shape
    assert batch_mixing(3) is None


def test_batch_ops_augment_uint8_first_then_mix_floats():
    from medscope.core.runtime import select_runtime
    from medscope.train.engine import BatchOps

    seen = []

    def spy(images, generator):
        seen.append(images.dtype)
        return images.flip(-1)

    ops = BatchOps(spy, torch.Generator().manual_seed(0), batch_mixing(3, cutmix=1.0))
    images = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    out, labels = ops(images, torch.arange(4) % 3, Normalize([0.5] * 3, [0.25] * 3),
                      select_runtime("cpu", "fp32"))
    assert seen == [torch.uint8]
    assert out.dtype == torch.float32 and labels.shape == (4, 3)
