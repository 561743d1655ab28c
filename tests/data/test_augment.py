"""Batched augmentation: the same distributions as the per-image torchvision presets, seeded
reproducibly, on whichever device the batch is."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision.transforms.v2 import functional as TF

from medscope.data import augment as A
from medscope.data.augment import BatchAugment, batch_augmentation
from medscope.data.transforms import PRESETS, augmentation
from medscope.errors import MedscopeError
from tests.conftest import one_torch_thread

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU here")


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _per_image(preset: str, images: torch.Tensor, seed: int = 0) -> torch.Tensor:
    torch.manual_seed(seed)
    aug = augmentation(preset)
    return torch.stack([aug(img) for img in images])


def _batched(preset: str, images: torch.Tensor, seed: int = 0, batch: int = 64,
             fill: str = A.MICROSCOPY_FILL) -> torch.Tensor:
    aug, g = BatchAugment(preset, microscopy_fill=fill), _gen(seed)
    return torch.cat([aug(images[i:i + batch], g) for i in range(0, len(images), batch)])


def _close(a: np.ndarray, b: np.ndarray, what: str, k: float = 4.0) -> None:
    """Means within k standard errors of their difference, and stds within 15 %."""
    se = np.sqrt(a.var() / len(a) + b.var() / len(b))
    assert abs(a.mean() - b.mean()) <= k * se + 1e-9, (what, a.mean(), b.mean(), se)
    assert b.std() * 0.85 - 1e-9 <= a.std() <= b.std() * 1.15 + 1e-9, (what, a.std(), b.std())


def _patterned(n: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    """Smooth colour blobs with a bright centred square: orientation, scale and colour of each
    output can be read back."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    imgs = []
    for _ in range(n):
        wave = np.sin(rng.uniform(2, 6) * xx + rng.uniform(0, 6))[None]
        base = rng.uniform(40, 160, (3, 1, 1)) + 30 * wave * rng.uniform(0.5, 1, (3, 1, 1))
        lo, hi = size // 4, 3 * size // 4
        base[:, lo:hi, lo:hi] += 60
        imgs.append(np.clip(base, 0, 255))
    return torch.from_numpy(np.stack(imgs)).round().to(torch.uint8)


# ---------------------------------------------------------------- exact pieces


def test_every_orientation_code_is_the_per_image_flip_and_rot90():
    img = torch.arange(3 * 6 * 6, dtype=torch.int64).reshape(1, 3, 6, 6).to(torch.uint8)
    for code in range(16):
        expected = img[0]
        if code // 8:
            expected = expected.flip(-1)
        if (code // 4) % 2:
            expected = expected.flip(-2)
        expected = torch.rot90(expected, code % 4, dims=(-2, -1))
        assert torch.equal(A.orient(img, torch.tensor([code]))[0], expected), code


def test_orientation_folded_into_the_affine_is_exact():
    img = torch.randint(0, 256, (16, 3, 12, 12), dtype=torch.uint8)
    codes = torch.arange(16)
    identity = A.inverse_affine(torch.ones(16), torch.zeros(16), torch.zeros(16),
                                torch.zeros(16))
    warped = A.warp(img, A._compose_orientation(identity, codes))
    assert torch.equal(warped, A.orient(img, codes))


@pytest.mark.parametrize("padding", ["zeros", "reflection"])
@pytest.mark.slow
def test_affine_matches_torchvision_pixel_for_pixel(padding):
    g = _gen(1)
    img = _patterned(24, 40)
    scale, shear = A._uniform(24, 0.8, 1.2, g), A._uniform(24, -0.2, 0.2, g)
    tx, ty = A._uniform(24, -2, 2, g).round(), A._uniform(24, -2, 2, g).round()
    mine = A.warp(img, A.inverse_affine(scale, shear, tx, ty), padding)
    if padding == "zeros":
        ref = torch.stack([TF.affine(img[i], angle=0.0, translate=[int(tx[i]), int(ty[i])],
                                     scale=float(scale[i]), shear=[float(shear[i]), 0.0])
                           for i in range(24)])
        assert (mine == ref).float().mean() > 0.999
    else:  # reflection fills what zeros leaves black, and leaves the rest alone
        zeros = A.warp(img, A.inverse_affine(scale, shear, tx, ty), "zeros")
        inside = zeros > 0
        assert torch.equal(mine[inside], zeros[inside])
        assert (mine[~inside] > 0).float().mean() > 0.95


@pytest.mark.parametrize("op, tv", [(A._brightness, TF.adjust_brightness),
                                    (A._contrast, TF.adjust_contrast),
                                    (A._saturation, TF.adjust_saturation),
                                    (A._hue, TF.adjust_hue)])
def test_colour_ops_match_torchvision_on_uint8(op, tv):
    img = _patterned(12, 24, seed=3)
    factors = (torch.linspace(-0.03, 0.03, 12) if op is A._hue
               else torch.linspace(0.85, 1.15, 12))
    mine = op(img.float(), factors).to(torch.uint8)
    ref = torch.stack([tv(img[i], float(factors[i])) for i in range(12)])
    agree = (mine == ref).float().mean()
    assert agree == 1.0 if op is not A._hue else agree > 0.999
    assert (mine.int() - ref.int()).abs().max() <= 1


def test_blur_matches_torchvision():
    img = _patterned(6, 20, seed=4)
    sigma = torch.linspace(0.1, 1.0, 6)
    mine = A.gaussian_blur3(img, sigma)
    ref = torch.stack([TF.gaussian_blur(img[i], [3, 3], [float(sigma[i])] * 2)
                       for i in range(6)])
    assert (mine.int() - ref.int()).abs().max() <= 1
    assert (mine == ref).float().mean() > 0.99


# ---------------------------------------------------------------- same distributions


def _orientation_ids(out: torch.Tensor, img: torch.Tensor) -> np.ndarray:
    variants = A.orient(img.expand(16, -1, -1, -1), torch.arange(16))
    flat = variants.reshape(16, -1)
    ids = [int(next(i for i in range(16) if torch.equal(o.reshape(-1), flat[i])))
           for o in out]
    # Codes that give the same image (e.g. both flips = a half turn) count as one.
    first = {i: next(j for j in range(16) if torch.equal(flat[i], flat[j])) for i in range(16)}
    return np.array([first[i] for i in ids])


def test_flips_orientation_frequencies_match_per_image():
    img = torch.arange(3 * 8 * 8, dtype=torch.int64).reshape(1, 3, 8, 8).to(torch.uint8)
    many = img.expand(800, -1, -1, -1).contiguous()
    with one_torch_thread():
        batched = _orientation_ids(_batched("flips", many), img)
        per_image = _orientation_ids(_per_image("flips", many), img)
    fb = np.bincount(batched, minlength=16) / 800
    fp = np.bincount(per_image, minlength=16) / 800
    assert len(np.flatnonzero(fb)) == len(np.flatnonzero(fp)) == 8  # all 8 orientations
    assert np.abs(fb - fp).max() < 0.05 and np.abs(fb[fb > 0] - 1 / 8).max() < 0.04


def _bright_area(out: torch.Tensor, threshold: float) -> np.ndarray:
    return (out.float().mean(1) > threshold).float().mean((1, 2)).numpy()


def _summaries(out: torch.Tensor, src: torch.Tensor) -> dict[str, np.ndarray]:
    o, s = out.float(), src.float()
    return {"mean shift": (o.mean((1, 2, 3)) - s.mean((1, 2, 3))).numpy(),
            "contrast ratio": (o.std((1, 2, 3)) / s.std((1, 2, 3))).numpy(),
            "channel spread": (o.std(1).mean((1, 2)) - s.std(1).mean((1, 2))).numpy()}


@pytest.mark.parametrize("preset", ["microscopy", "keras-classic", "stain", "ssl"])
@pytest.mark.slow
def test_geometric_and_colour_statistics_match_per_image(preset):
    src = _patterned(400, 32, seed=5)
    with one_torch_thread():  # the per-image reference fills with black: compare like that
        batched = _batched(preset, src, seed=1, fill="zeros")
        per_image = _per_image(preset, src, seed=1)
    # Scale: the area of the bright square (a quarter of the image before zooming).
    threshold = float(src.float().mean()) + 25
    _close(_bright_area(batched, threshold), _bright_area(per_image, threshold), "area")
    for name, values in _summaries(batched, src).items():
        _close(values, _summaries(per_image, src)[name], name)


@pytest.mark.slow
def test_microscopy_fill_is_reflection_and_zeros_remains_available():
    src = _patterned(64, 32, seed=6)
    reflected = BatchAugment("microscopy")(src, _gen(2))
    black = BatchAugment("microscopy", microscopy_fill="zeros")(src, _gen(2))
    border = lambda x: torch.cat([x[..., 0, :], x[..., -1, :], x[..., :, 0], x[..., :, -1]], -1)  # noqa: E731
    assert (border(black) == 0).float().mean() > 0.1  # zoomed-out images get black edges
    assert (border(reflected) == 0).float().mean() < 0.01


@pytest.mark.slow
def test_randaugment_statistics_match_per_image():
    src = _patterned(600, 32, seed=7)
    with one_torch_thread():
        batched = _batched("randaugment", src, seed=2)
        per_image = _per_image("randaugment", src, seed=2)
    def change(out):  # noqa: E306
        return (out.float() - src.float()).abs().mean((1, 2, 3)).numpy()
    _close(change(batched), change(per_image), "mean |change|")
    unchanged = [float((change(o) == 0).mean()) for o in (batched, per_image)]
    assert abs(unchanged[0] - unchanged[1]) < 0.05  # identity or no-op ops both rounds
    for name, values in _summaries(batched, src).items():
        _close(values, _summaries(per_image, src)[name], name, k=5.0)


# ---------------------------------------------------------------- compiled kernels


@pytest.fixture
def compile_everything(monkeypatch):
    """Every batch through the inductor kernels, as training-sized batches are; the
    process-wide caches are emptied so each test sees its own patches."""
    monkeypatch.setattr(A, "COMPILE_MIN_PIXELS", 1)
    for cache in (A._compiled, A._inductor_works):
        cache.cache_clear()
    yield
    for cache in (A._compiled, A._inductor_works):
        cache.cache_clear()


@pytest.mark.slow
def test_compiled_microscopy_is_the_eager_one_bit_for_bit(compile_everything, monkeypatch):
    if not A._inductor_works():
        pytest.skip("torch.compile does not work here (no C++ compiler?)")
    src = _patterned(70, 24, seed=8)
    for fill in ("reflection", "zeros"):
        aug = BatchAugment("microscopy", microscopy_fill=fill)
        # Odd sizes and a batch of one: the kernels are dynamic in batch size.
        compiled = [aug(src[a:b], _gen(a)) for a, b in ((0, 64), (64, 69), (69, 70))]
        monkeypatch.setattr(A, "COMPILE_MIN_PIXELS", 1 << 40)
        eager = [aug(src[a:b], _gen(a)) for a, b in ((0, 64), (64, 69), (69, 70))]
        monkeypatch.setattr(A, "COMPILE_MIN_PIXELS", 1)
        for c, e in zip(compiled, eager, strict=True):
            assert torch.equal(c, e), fill


@pytest.mark.slow
def test_compiled_stain_colour_is_the_eager_one_within_a_rounding(compile_everything,
                                                                  monkeypatch):
    if not A._inductor_works():
        pytest.skip("torch.compile does not work here (no C++ compiler?)")
    src = _patterned(37, 24, seed=10)
    compiled = BatchAugment("stain")(src, _gen(7))
    monkeypatch.setattr(A, "COMPILE_MIN_PIXELS", 1 << 40)
    eager = BatchAugment("stain")(src, _gen(7))
    diff = (compiled.int() - eager.int()).abs()
    # exp, log and pow fused by inductor may round a last float bit differently
    assert diff.max() <= 1 and (diff == 0).float().mean() > 0.999


def test_stain_shifts_the_colour_balance_mildly_as_microscopy_does():
    src = _patterned(200, 32, seed=11)
    with one_torch_thread():
        stain = _batched("stain", src, seed=3)
        micro = _batched("microscopy", src, seed=3)
    def cast(out):  # noqa: E306 - per-sample change of the channel balance, grey levels
        o, s = out.float().mean((2, 3)), src.float().mean((2, 3))
        return ((o - o.mean(1, keepdim=True)) - (s - s.mean(1, keepdim=True))).abs().mean(1)
    # Nearly every sample's colour moves (flips alone: none), by a few grey levels, of the
    # order of the microscopy jitter's (a density-scale slip made it ten times more).
    assert (cast(stain) > 0.5).float().mean() > 0.9
    assert 0.5 * cast(micro).mean() < cast(stain).mean() < 2 * cast(micro).mean()
    assert cast(stain).max() < 30


def test_small_batches_and_grey_images_never_compile(monkeypatch):
    def refuse(fn):
        raise AssertionError(f"compiled {fn.__name__} for a small batch")
    monkeypatch.setattr(A, "_compiled", refuse)
    BatchAugment("microscopy")(_patterned(8, 16), _gen())
    monkeypatch.setattr(A, "COMPILE_MIN_PIXELS", 1)
    BatchAugment("microscopy")(_patterned(8, 16)[:, :1].contiguous(), _gen())


def test_a_failing_compiler_leaves_the_eager_ops(compile_everything, monkeypatch, caplog):
    src = _patterned(16, 16, seed=9)
    def broken(fn, **kwargs):
        def call(*args, **kw):
            raise RuntimeError("no C++ compiler")
        return call
    monkeypatch.setattr(torch, "compile", broken)
    with caplog.at_level("WARNING"):
        out = BatchAugment("microscopy")(src, _gen(4))
    assert "stays eager" in caplog.text and "no C++ compiler" in caplog.text
    monkeypatch.setattr(A, "COMPILE_MIN_PIXELS", 1 << 40)
    assert torch.equal(out, BatchAugment("microscopy")(src, _gen(4)))


# ---------------------------------------------------------------- contract


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.slow
def test_batched_presets_keep_shape_dtype_and_are_seeded(preset):
    src = _patterned(10, 16)
    aug = BatchAugment(preset)
    a, b = aug(src, _gen(5)), aug(src, _gen(5))
    assert a.shape == src.shape and a.dtype == torch.uint8 and torch.equal(a, b)
    if preset != "none":
        assert not torch.equal(aug(src, _gen(6)), a)
    assert (batch_augmentation(preset) is None) == (preset == "none")


def test_bad_input_is_refused():
    with pytest.raises(MedscopeError, match="unknown augmentation preset 'spin'"):
        BatchAugment("spin")
    with pytest.raises(ValueError, match="uint8"):
        BatchAugment("flips")(torch.zeros(2, 3, 8, 8))
    with pytest.raises(ValueError, match="square"):
        BatchAugment("flips")(torch.zeros(2, 3, 8, 6, dtype=torch.uint8), _gen())


def test_one_channel_images_augment():
    src = _patterned(8, 16)[:, :1].contiguous()
    for preset in PRESETS:
        out = BatchAugment(preset)(src, _gen())
        assert out.shape == src.shape


@needs_cuda
@pytest.mark.parametrize("preset", PRESETS)
def test_cuda_batches_augment_as_on_cpu(preset):
    src = _patterned(32, 32)
    cpu = BatchAugment(preset)(src, _gen(3))
    gpu = BatchAugment(preset)(src.cuda(), _gen(3))
    assert gpu.device.type == "cuda"
    assert (gpu.cpu() == cpu).float().mean() > 0.99
