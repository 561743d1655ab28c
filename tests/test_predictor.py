"""The features the out-of-distribution check measures: statistics of the last feature map."""

from __future__ import annotations

import numpy as np
import torch

from medscope.models import create_model
from medscope.predictor import feature_map_layer, map_statistics


def test_the_last_spatial_feature_map_is_found():
    simple = create_model("simple_cnn", num_classes=3, img_size=32).eval()
    assert feature_map_layer(simple, 3, 32) is simple.features
    resnet = create_model("resnet10t", num_classes=3, img_size=64).eval()
    assert feature_map_layer(resnet, 3, 64) is resnet.layer4  # not the pooled 1 x 1 map


def test_map_statistics_are_channel_mean_and_std():
    x = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).reshape(2, 3, 4, 5)
    stats = map_statistics(x)
    assert stats.shape == (2, 6)
    assert np.allclose(stats[:, :3], x.mean((2, 3))) and np.allclose(stats[:, 3:], x.std((2, 3)))


def test_predictor_features_match_a_direct_hook(trained_run):
    from medscope.predictor import Predictor

    p = Predictor.load(trained_run.root, precision="fp32", device="cpu")
    pixels = np.random.default_rng(0).integers(0, 255, (5, 32, 32, 3), dtype=np.uint8)
    features, logits = p.features_from_pixels(pixels, batch_size=2)
    assert features.shape == (5, 2 * 128) and logits.shape == (5, 3)
    assert np.allclose(logits, p.logits_from_pixels(pixels), atol=1e-5)


def test_tta_reuses_the_identity_views_logits_when_given():
    import numpy as np

    from medscope.predictor import tta_logits

    class Counting:  # a classifier whose logits are the mean of each colour channel
        calls = 0

        def logits_from_pixels(self, pixels, batch_size=64):
            self.calls += 1
            return pixels.reshape(len(pixels), -1, 3).mean(axis=1).astype(np.float32) \
                + pixels[:, 0, 0, :]  # the corner pixel: differs between views

    pixels = np.random.default_rng(0).integers(0, 255, (3, 8, 8, 3), dtype=np.uint8)
    plain, model = tta_logits(Counting(), pixels), Counting()
    reused = tta_logits(model, pixels, identity=Counting().logits_from_pixels(pixels))
    assert model.calls == 7
    np.testing.assert_allclose(reused, plain, rtol=1e-6)
