"""Stain and colour (medscope.data.stain): the HED jitter against scikit-image's conversion,
Reinhard normalisation (back to the reference, JSON state, per-image statistics, torchstain,
ONNX)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from medscope.data import stain as S
from medscope.data.stain import StainNormalize, fit_stain_reference
from medscope.data.synth import make_slide
from medscope.errors import MedscopeError


def _slides(n: int, size: int = 48, seed: int = 0) -> np.ndarray:
    """N x S x S x 3 uint8 synthetic micrographs (stained organisms on a light background)."""
    return np.stack([make_slide(i % 5, np.random.default_rng([seed, i]), size)
                     for i in range(n)])


def _nchw(pixels: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(pixels).permute(0, 3, 1, 2).contiguous()


def _shift_colours(pixels: np.ndarray) -> np.ndarray:
    """Another lab's slide: a yellowish cast, weaker contrast, brighter."""
    x = pixels.astype(np.float64) * np.array([0.85, 0.8, 0.6]) + np.array([40.0, 35.0, 10.0])
    return np.clip(x, 0, 255).round().astype(np.uint8)


# ---------------------------------------------------------------- HED jitter


def test_hed_jitter_is_rgb2hed_scaled_shifted_and_back_without_the_clamp():
    color = pytest.importorskip("skimage.color")
    img = np.random.default_rng(1).integers(0, 256, (12, 12, 3), dtype=np.uint8)
    alpha, beta = np.array([1.04, 0.96, 1.02]), np.array([0.03, -0.04, 0.01])
    # scikit-image's rgb2hed / hed2rgb, less rgb2hed's clamp of negative stains at 0, beta in
    # optical density (rgb2hed's densities are divided by -log(1e-6))
    scale = -np.log(1e-6)
    stains = (np.log(np.maximum(img / 255.0, 1e-6)) / np.log(1e-6)) @ color.hed_from_rgb
    rgb = np.exp(-((stains * alpha + beta / scale) * scale) @ color.rgb_from_hed)
    expected = np.round(np.clip(rgb, 0, 1) * 255)
    mix, offset = S.hed_jitter_matrices(torch.from_numpy(alpha[None]),
                                        torch.from_numpy(beta[None]))
    out = S.stain_colour(_nchw(img[None]), mix, offset, torch.ones(1, 3))
    diff = np.abs(out[0].permute(1, 2, 0).numpy().astype(float) - expected)
    assert diff.max() <= 1 and (diff == 0).mean() > 0.99  # float32 vs float64 rounding


def test_the_centre_of_the_jitter_is_the_identity():
    img = _nchw(np.random.default_rng(2).integers(0, 256, (4, 10, 10, 3), dtype=np.uint8))
    mix, offset = S.hed_jitter_matrices(torch.ones(4, 3), torch.zeros(4, 3))
    assert torch.equal(S.stain_colour(img, mix, offset, torch.ones(4, 3)), img)


def test_sigma_is_mild_on_a_white_background():
    """Tellez's 'HED-light': beta at its extremes tints white by a few per cent, not (as in
    rgb2hed's density scale, 13.8 times larger) by half."""
    white = torch.full((2, 3, 4, 4), 255, dtype=torch.uint8)
    sigma = S.STAIN_SIGMA
    beta = torch.tensor([[sigma] * 3, [-sigma] * 3])
    out = S.stain_colour(white, *S.hed_jitter_matrices(torch.ones(2, 3), beta),
                         torch.ones(2, 3))
    assert out[0].float().min() > 0.85 * 255 and out[1].min() == 255  # darker, or clipped


def test_draws_are_seeded_and_within_their_ranges():
    mix, offset, factors = S.draw_stain_jitter(500, torch.Generator().manual_seed(3))
    again = S.draw_stain_jitter(500, torch.Generator().manual_seed(3))
    assert all(torch.equal(a, b) for a, b in zip((mix, offset, factors), again, strict=True))
    lo = torch.tensor([1 - S.BRIGHTNESS, 1 - S.CONTRAST, np.exp(-S.LOG_GAMMA)])
    hi = torch.tensor([1 + S.BRIGHTNESS, 1 + S.CONTRAST, np.exp(S.LOG_GAMMA)])
    assert ((factors >= lo - 1e-6) & (factors <= hi + 1e-6)).all()
    assert (factors.std(0) > 0.05).all()  # they vary per sample
    assert mix.shape == (500, 3, 3) and offset.shape == (500, 3)
    assert 0 < (mix - torch.eye(3)).abs().amax() < 0.5  # near the identity, not it


def test_the_jitter_moves_colour_and_grey_images_still_pass():
    img = _nchw(_slides(16, 24))
    out = S.stain_colour(img, *S.draw_stain_jitter(16, torch.Generator().manual_seed(4)))
    change = (out.float() - img.float()).abs().mean((1, 2, 3))
    assert (change > 0.5).all() and (change < 60).all()
    grey = img[:, :1].contiguous()
    assert S.stain_colour(grey, *S.draw_stain_jitter(16, None)).shape == grey.shape


# ---------------------------------------------------------------- L*a*b*


def test_lab_matches_scikit_image_and_round_trips():
    color = pytest.importorskip("skimage.color")
    img = np.random.default_rng(5).integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
    to_xyz, from_xyz = S._xyz_matrices()
    lab = S.rgb_to_lab(_nchw(img).float() / 255, to_xyz)
    assert np.abs(lab.permute(0, 2, 3, 1).numpy() - color.rgb2lab(img / 255.0)).max() < 0.02
    back = S.lab_to_rgb(lab, from_xyz) * 255
    assert (back - _nchw(img).float()).abs().max() < 0.05


# ---------------------------------------------------------------- Reinhard


def test_a_colour_shifted_copy_is_normalised_back_close_to_the_reference():
    slides = _slides(6, 48)
    norm = StainNormalize.from_state(fit_stain_reference(slides[:1]))
    shifted = _shift_colours(slides[:1])
    out = norm(_nchw(shifted))[0].permute(1, 2, 0).numpy()
    before = np.abs(shifted.astype(float) - slides[0]).mean()
    after = np.abs(out - slides[0]).mean()
    assert before > 20 and after < 0.2 * before, (before, after)
    # the reference itself is (almost) a fixed point
    same = norm(_nchw(slides[:1]))[0].permute(1, 2, 0).numpy()
    assert np.abs(same - slides[0]).mean() < 0.5


def test_each_image_is_normalised_on_its_own_statistics_whatever_the_batch():
    slides = _slides(8, 32)
    norm = StainNormalize.from_state(fit_stain_reference(slides))
    batch = norm(_nchw(slides))
    alone = torch.cat([norm(_nchw(slides[i:i + 1])) for i in range(8)])
    assert torch.allclose(batch, alone, atol=1e-3)
    assert torch.allclose(norm(_nchw(slides).float()), batch)  # float 0-255 in: the same
    assert batch.dtype == torch.float32 and batch.min() >= 0 and batch.max() <= 255


def test_normalised_images_share_the_reference_statistics():
    slides = _slides(10, 32)
    state = fit_stain_reference(slides)
    norm = StainNormalize.from_state(state)
    out = norm(_nchw(_shift_colours(slides)))
    to_xyz, _ = S._xyz_matrices()
    lab = S.rgb_to_lab(out / 255, to_xyz)
    # The gamut clip moves a few saturated pixels: close to, not exactly, the reference.
    assert np.allclose(lab.mean((2, 3)).mean(0), state["mean"], atol=1.5)
    assert np.allclose(lab.std((2, 3)).mean(0), state["std"], rtol=0.1)


def test_state_round_trips_through_json():
    state = fit_stain_reference(_slides(5, 24))
    assert state["method"] == "reinhard" and len(state["mean"]) == len(state["std"]) == 3
    assert all(type(v) is float for v in state["mean"] + state["std"])
    text = json.dumps(state)
    again = StainNormalize.from_state(json.loads(text))
    back = json.loads(json.dumps(again.state()))  # float32 buffers: equal to ~1e-7
    assert back["method"] == "reinhard"
    for key in ("mean", "std"):
        assert back[key] == pytest.approx(state[key], rel=1e-6, abs=1e-5)
    img = _nchw(_slides(2, 24, seed=1))
    assert torch.equal(again(img), StainNormalize.from_state(state)(img))


def test_fitting_samples_at_most_max_images_seeded():
    slides = _slides(12, 16)
    a = fit_stain_reference(slides, max_images=5, seed=1)
    assert a == fit_stain_reference(slides, max_images=5, seed=1)
    assert a != fit_stain_reference(slides, max_images=5, seed=2)
    chunked, whole = fit_stain_reference(slides, chunk=5), fit_stain_reference(slides)
    for key in ("mean", "std"):
        assert chunked[key] == pytest.approx(whole[key], rel=1e-9)


@pytest.mark.parametrize(("state", "message"), [
    ({"method": "macenko", "mean": [1, 2, 3], "std": [1, 1, 1]}, "stain_norm method 'macenko'"),
    ({"method": "reinhard", "mean": [1, 2], "std": [1, 1, 1]}, "stain_norm mean"),
    ({"method": "reinhard", "mean": [1, 2, 3], "std": [1, 0, 1]}, "stain_norm std"),
    ({"method": "reinhard", "mean": [1, 2, float("nan")], "std": [1, 1, 1]}, "stain_norm mean"),
    ({"method": "reinhard", "mean": [1, 2, 3]}, "stain_norm state"),
    (["reinhard"], "stain_norm state"),
])
def test_bad_states_are_one_line_user_errors(state, message):
    with pytest.raises(MedscopeError, match=message) as info:
        StainNormalize.from_state(state)
    assert "\n" not in str(info.value)


def test_fitting_refuses_grey_images_and_unknown_methods():
    with pytest.raises(MedscopeError, match="in_chans 3"):
        fit_stain_reference(np.zeros((2, 8, 8, 1), np.uint8))
    with pytest.raises(MedscopeError, match="data.stain_norm 'macenko'"):
        fit_stain_reference(_slides(2, 8), method="macenko")


def test_agrees_with_torchstain_reinhard_where_installed():
    torchstain = pytest.importorskip("torchstain")
    target, source = _slides(2, 48, seed=3)
    theirs = torchstain.normalizers.ReinhardNormalizer(backend="torch")
    theirs.fit(torch.from_numpy(target).permute(2, 0, 1))
    expected = theirs.normalize(torch.from_numpy(_shift_colours(source)).permute(2, 0, 1))
    ours = StainNormalize.from_state(fit_stain_reference(target[None]))
    out = ours(_nchw(_shift_colours(source[None])))[0]
    # theirs: unbiased std, OpenCV-scaled L*a*b* (an affine change Reinhard is blind to),
    # output truncated to uint8
    expected = expected.permute(2, 0, 1).float()  # theirs comes back H x W x C
    assert (out - expected).abs().mean() < 1.5


# ---------------------------------------------------------------- ONNX


@pytest.mark.slow
def test_onnx_graph_of_normalisation_and_a_conv_matches_pytorch(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    torch.manual_seed(0)
    slides = _slides(4, 32)
    model = torch.nn.Sequential(StainNormalize.from_state(fit_stain_reference(slides)),
                                torch.nn.Conv2d(3, 4, 3)).eval()
    pixels = _nchw(_shift_colours(slides)).float()
    path = tmp_path / "stain.onnx"
    batch = torch.export.Dim("batch", min=1)
    with torch.no_grad():
        torch.onnx.export(model, (pixels[:2],), str(path), input_names=["pixels"],
                          output_names=["out"], opset_version=18, dynamo=True,
                          dynamic_shapes={"input": {0: batch}}, external_data=False,
                          verbose=False)
        expected = model(pixels).numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"pixels": pixels.numpy()})
    assert got.shape == expected.shape  # batch of 4 through a graph exported with 2
    assert np.abs(got - expected).max() < 1e-3


def test_bf16_autocast_leaves_the_normalisation_in_float32():
    slides = _slides(3, 32)
    norm = StainNormalize.from_state(fit_stain_reference(slides))
    plain = norm(_nchw(slides))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = norm(_nchw(slides))
    assert mixed.dtype == torch.float32 and torch.allclose(mixed, plain)


def test_normalised_pixels_are_the_module_output_rounded():
    slides = _slides(5, 24)
    state = fit_stain_reference(slides)
    out = S.stain_normalised_pixels(slides, state, chunk=2)
    expected = StainNormalize.from_state(state)(_nchw(slides)).round().to(torch.uint8)
    assert out.dtype == np.uint8 and np.array_equal(out, expected.permute(0, 2, 3, 1).numpy())


def test_normalised_pixels_draw_at_most_max_images_as_channel_stats_does():
    slides = _slides(9, 16)
    state = fit_stain_reference(slides)
    drawn = S.stain_normalised_pixels(slides, state, max_images=4, seed=3)
    pick = np.sort(np.random.default_rng(3).choice(9, 4, replace=False))  # channel_stats' draw
    assert np.array_equal(drawn, S.stain_normalised_pixels(slides[pick], state))
    assert len(S.stain_normalised_pixels(slides, state, max_images=20)) == 9


def test_input_normalisation_puts_the_stain_step_before_normalize():
    from medscope.data.transforms import Normalize, input_normalisation

    slides = _slides(3, 24)
    state = fit_stain_reference(slides)
    mean, std = [0.5, 0.4, 0.3], [0.2, 0.2, 0.2]
    assert isinstance(input_normalisation(mean, std), Normalize)
    both = input_normalisation(mean, std, json.loads(json.dumps(state)))
    expected = Normalize(mean, std)(StainNormalize.from_state(state)(_nchw(slides)))
    assert torch.allclose(both(_nchw(slides)), expected)
