"""Augmentation of whole uint8 batches (N, C, H, W) at once, on the device the batch is on.

The presets draw the same distributions as the per-image torchvision v2 pipelines in
``transforms.augmentation`` (kept as the reference and for the plain-PyTorch benchmark), but a
batch costs a handful of tensor ops instead of a Python call chain per image:

- flips and 90° rotations: the 8 orientations of a square, one gather per orientation group;
- ``microscopy``: the orientation folded into the affine (translate ±5 % in whole pixels as
  ``v2.RandomAffine`` rounds it, scale 0.9-1.1), one ``affine_grid`` + ``grid_sample`` (nearest)
  per batch; colour jitter with a per-sample factor and a per-sample order of the four ops
  (as ``v2.ColorJitter``, with its uint8 truncation after each op); 3x3 Gaussian blur with a
  per-sample sigma on the 20 % drawn;
- ``stain``: the microscopy geometry and blur; instead of its colour jitter, the HED-space
  stain jitter of Tellez et al. 2019 with brightness, contrast and gamma, per-sample
  parameters, one float pass (``stain.stain_colour``; compiled like the jitter on large CPU
  batches). No JPEG-quality step: not built (an 8x8 block DCT round trip would be two batched
  matmuls and a rounding, but its cost is unmeasured);
- ``keras-classic``: shear (degrees) x zoom x horizontal flip as one grid per batch;
- ``randaugment``: each of the two rounds draws an op and a sign per sample; the samples that
  drew the same (op, sign) are augmented together by torchvision's own RandAugment op;
- ``ssl``: the strong views of contrastive pretraining (SimCLR's recipe, with the 90° turns
  microscopy allows): a random resized crop (8-100 % of the area, aspect 3/4-4/3, bilinear;
  up to 10 draws per sample as torchvision retries, else the whole image), the 8
  orientations, colour jitter 0.4/0.4/0.4/0.1 on 80 %, grey on 20 % (RGB), 3x3 blur on 50 %.

Random parameters are drawn on the CPU from the ``generator`` given (the loop reseeds it every
epoch), so a batch augments identically on CPU and GPU and a resumed run repeats its epochs.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torchvision.transforms.v2 import RandAugment

from medscope.data.stain import draw_stain_jitter, stain_colour
from medscope.data.transforms import PRESETS, SSL_CROP_SCALE
from medscope.errors import MedscopeError

# The microscopy affine fill: "zeros" is v2.RandomAffine's black; "reflection" continues the
# field of view (see MICROSCOPY_FILL in docs/speed.md for why it matters).
MICROSCOPY_FILL = "reflection"

log = logging.getLogger(__name__)

_GRAY = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale weights


class BatchAugment:
    """``augment(images, generator)``: uint8 (N, C, H, W) -> augmented uint8, same device."""

    def __init__(self, preset: str, microscopy_fill: str | None = None) -> None:
        if preset not in PRESETS:
            raise MedscopeError(f"unknown augmentation preset {preset!r} "
                                f"(one of {', '.join(PRESETS)})")
        self.preset = preset
        self.microscopy_fill = microscopy_fill or MICROSCOPY_FILL
        self._randaugment = RandAugment() if preset == "randaugment" else None

    def __repr__(self) -> str:
        return f"BatchAugment({self.preset!r})"

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None
                 ) -> torch.Tensor:
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"expected a uint8 N x C x H x W batch, got {images.dtype} "
                             f"{tuple(images.shape)}")
        if self.preset == "none" or len(images) == 0:
            return images
        g = generator if generator is not None else torch.default_generator
        if self.preset == "flips":
            return orient(images, random_orientations(len(images), g))
        if self.preset == "microscopy":
            return self._microscopy(images, g)
        if self.preset == "keras-classic":
            return self._keras_classic(images, g)
        if self.preset == "stain":
            return self._stain(images, g)
        if self.preset == "ssl":
            return self._ssl(images, g)
        return self._randaugment_batch(images, g)

    # ------------------------------------------------------------ presets

    def _microscopy(self, images: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        out = self._microscopy_geometry(images, g)
        out = color_jitter(out, 0.15, 0.15, 0.15, 0.03, g)
        return _random_blur(out, g)

    def _stain(self, images: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        # The microscopy geometry and blur around a colour step that models the slide rather
        # than the camera: stain amounts (HED jitter), lamp (brightness, gamma), contrast.
        out = self._microscopy_geometry(images, g)
        mix, offset, factors = (t.to(out.device) for t in draw_stain_jitter(len(out), g))
        colour = _compiled(stain_colour) if _compiles(out) else stain_colour
        return _random_blur(colour(out, mix, offset, factors), g)

    def _ssl(self, images: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        # Two views of one image must share little but what the image is: crops that may not
        # overlap, and colour changed enough that hue and brightness alone cannot pair them.
        n, c, h, w = images.shape
        _require_square(h, w, self.preset)
        out = orient(random_resized_crop(images, SSL_CROP_SCALE, g),
                     random_orientations(n, g))
        jittered = (torch.rand(n, generator=g) < 0.8).nonzero().squeeze(1)
        if len(jittered):
            idx = jittered.to(out.device)
            out[idx] = color_jitter(out[idx], 0.4, 0.4, 0.4, 0.1, g)
        grey = (torch.rand(n, generator=g) < 0.2).nonzero().squeeze(1)
        if c == 3 and len(grey):
            idx = grey.to(out.device)
            out[idx] = _gray(out[idx].float()).expand(-1, 3, -1, -1).to(torch.uint8)
        return _random_blur(out, g, p=0.5, sigma=(0.1, 2.0))

    def _microscopy_geometry(self, images: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        n, _, h, w = images.shape
        _require_square(h, w, self.preset)
        orientation = random_orientations(n, g)
        tx = _uniform(n, -0.05 * w, 0.05 * w, g).round()  # v2.RandomAffine: whole pixels
        ty = _uniform(n, -0.05 * h, 0.05 * h, g).round()
        scale = _uniform(n, 0.9, 1.1, g)
        theta = inverse_affine(scale, torch.zeros(n), tx, ty)
        theta = _compose_orientation(theta, orientation)
        warp_fn = _compiled(warp) if _compiles(images) else warp
        return warp_fn(images, theta, padding=self.microscopy_fill)

    def _keras_classic(self, images: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        n = len(images)
        shear = _uniform(n, -0.2, 0.2, g)  # degrees, as Keras 2 reads shear_range
        scale = _uniform(n, 0.8, 1.2, g)
        hflip = torch.rand(n, generator=g) < 0.5
        theta = inverse_affine(scale, shear, torch.zeros(n), torch.zeros(n))
        # The flip comes after the affine: it mirrors the output grid, i.e. theta's x column.
        theta[:, :, 0] *= torch.where(hflip, -1.0, 1.0).unsqueeze(1)
        return warp(images, theta, padding="zeros")  # compiled measured no steady gain

    def _randaugment_batch(self, images: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        ra = self._randaugment
        space = list(ra._AUGMENTATION_SPACE.items())
        n, _, h, w = images.shape
        out = images.clone()
        for _ in range(ra.num_ops):
            ops = torch.randint(len(space), (n,), generator=g)
            negative = torch.rand(n, generator=g) <= 0.5
            for op in ops.unique().tolist():
                name, (magnitudes_fn, signed) = space[op]
                magnitudes = magnitudes_fn(ra.num_magnitude_bins, h, w)
                for neg in ((False, True) if signed and magnitudes is not None else (None,)):
                    chosen = (ops == op) if neg is None else (ops == op) & (negative == neg)
                    if not chosen.any():
                        continue
                    magnitude = 0.0 if magnitudes is None else float(magnitudes[ra.magnitude])
                    if neg:
                        magnitude = -magnitude
                    idx = chosen.nonzero().squeeze(1).to(out.device)
                    out[idx] = ra._apply_image_or_video_transform(
                        out[idx], name, magnitude, interpolation=ra.interpolation,
                        fill=ra._fill)
        return out


def _random_blur(images: torch.Tensor, g: torch.Generator, p: float = 0.2,
                 sigma: tuple[float, float] = (0.1, 1.0)) -> torch.Tensor:
    """v2.RandomApply([GaussianBlur(3, sigma=sigma)], p=p), in place."""
    blurred = torch.rand(len(images), generator=g) < p
    if blurred.any():
        idx = blurred.nonzero().squeeze(1).to(images.device)
        sigma = _uniform(len(idx), *sigma, g)
        images[idx] = gaussian_blur3(images[idx], sigma)
    return images


def batch_augmentation(preset: str) -> BatchAugment | None:
    """The batched augmentation of a preset, or None for ``none``."""
    aug = BatchAugment(preset)
    return None if preset == "none" else aug


# ---------------------------------------------------------------- resized crop

_CROP_RATIO = (3 / 4, 4 / 3)
_CROP_TRIES = 10


def random_resized_crop(images: torch.Tensor, scale: tuple[float, float],
                        g: torch.Generator) -> torch.Tensor:
    """v2.RandomResizedCrop(scale, ratio 3/4-4/3) back to each image's own size, per sample:
    area and log-aspect drawn up to 10 times until the crop fits (else the whole image), the
    position uniform; bilinear, rounded back to uint8. In continuous coordinates (torchvision
    rounds the crop to whole pixels first: a sub-pixel difference)."""
    n, _, h, w = images.shape
    area = torch.empty(n, _CROP_TRIES).uniform_(*scale, generator=g)
    log_ratio = torch.empty(n, _CROP_TRIES).uniform_(*[math.log(r) for r in _CROP_RATIO],
                                                     generator=g)
    cw, ch = (area * log_ratio.exp()).sqrt(), (area / log_ratio.exp()).sqrt()
    fits = (cw <= 1) & (ch <= 1)
    first = fits.to(torch.int64).argmax(1, keepdim=True)
    any_fit = fits.any(1)
    cw = torch.where(any_fit, cw.gather(1, first).squeeze(1), torch.ones(n))
    ch = torch.where(any_fit, ch.gather(1, first).squeeze(1), torch.ones(n))
    # grid_sample's coordinates run from -1 to 1: the crop's centre lies within 1 - its size.
    cx = (torch.rand(n, generator=g) * 2 - 1) * (1 - cw)
    cy = (torch.rand(n, generator=g) * 2 - 1) * (1 - ch)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = cw, cx, ch, cy
    grid = F.affine_grid(theta.to(images.device), [n, 1, h, w], align_corners=False)
    out = F.grid_sample(images.float(), grid, mode="bilinear", padding_mode="border",
                        align_corners=False)
    return out.round_().clamp_(0, 255).to(torch.uint8)


# ---------------------------------------------------------------- orientation


def random_orientations(n: int, g: torch.Generator) -> torch.Tensor:
    """Per sample (hflip, vflip, k quarter turns) as v2 flips (p 0.5 each) then RandomRot90
    draw them, coded as ``4 * (2 * hflip + vflip) + k``."""
    hflip = torch.rand(n, generator=g) < 0.5
    vflip = torch.rand(n, generator=g) < 0.5
    k = torch.randint(0, 4, (n,), generator=g)
    return 4 * (2 * hflip.long() + vflip.long()) + k


def orient(images: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """Apply each sample's orientation code with one gather over the batch (the source pixel
    of every output pixel comes from a table of the 8 orientations)."""
    n, c, h, w = images.shape
    _require_square(h, w, "flips")
    index = _orientation_table(h, images.device)[codes.to(images.device)]  # (n, h * w)
    return images.reshape(n, c, h * w).gather(2, index.unsqueeze(1).expand(n, c, h * w)
                                              ).view(n, c, h, w)


@functools.lru_cache(maxsize=8)
def _orientation_table(size: int, device: torch.device) -> torch.Tensor:
    # Row ``code``: the flat source index of each output pixel, from the very ops the
    # per-image preset runs (flip -1, flip -2, rot90), applied to the index image itself.
    base = torch.arange(size * size).view(size, size)
    rows = []
    for code in range(16):  # 2 x 2 flips x 4 quarter turns
        x = base
        if code // 8:
            x = x.flip(-1)
        if (code // 4) % 2:
            x = x.flip(-2)
        if code % 4:
            x = torch.rot90(x, code % 4, dims=(-2, -1))
        rows.append(x.reshape(-1))
    return torch.stack(rows).to(device)


def _orientation_matrices(codes: torch.Tensor) -> torch.Tensor:
    """(N, 2, 2) maps from an oriented image's centred (x, y) to the source image's: hflip
    reads x at -x, vflip y at -y, a quarter turn (torch.rot90 k=1) reads (x, y) at (-y, x)."""
    hflip, vflip, k = codes // 8, (codes // 4) % 2, codes % 4
    flip = torch.zeros(len(codes), 2, 2)
    flip[:, 0, 0] = 1 - 2 * hflip.float()
    flip[:, 1, 1] = 1 - 2 * vflip.float()
    quarter = torch.tensor([[0.0, -1.0], [1.0, 0.0]])
    turns = torch.stack([torch.linalg.matrix_power(quarter, int(t)) for t in range(4)])
    return flip @ turns[k]


def _compose_orientation(theta: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    # The affine reads the oriented image at theta(p); the oriented image reads the source at
    # D(q): the composite reads the source at D(theta(p)), linear part and translation alike.
    return _orientation_matrices(codes) @ theta


# ---------------------------------------------------------------- affine


def inverse_affine(scale: torch.Tensor, shear_x_deg: torch.Tensor, tx: torch.Tensor,
                   ty: torch.Tensor) -> torch.Tensor:
    """(N, 2, 3) inverse affine matrices in centred pixel coordinates, as torchvision's
    ``_get_inverse_affine_matrix`` builds them for angle 0, shear (sx, 0) about the centre:
    output pixel p reads the input at (1/s) [[1, tan sx], [0, 1]] (p - t)."""
    n = len(scale)
    tan = torch.tan(torch.deg2rad(shear_x_deg.double())).float()
    linear = torch.zeros(n, 2, 2)
    linear[:, 0, 0] = 1.0
    linear[:, 0, 1] = tan
    linear[:, 1, 1] = 1.0
    linear = linear / scale.view(n, 1, 1)
    shift = -(linear @ torch.stack([tx, ty], 1).unsqueeze(2))
    return torch.cat([linear, shift], 2)


def warp(images: torch.Tensor, theta: torch.Tensor, padding: str = "zeros") -> torch.Tensor:
    """Resample each uint8 image at its own inverse affine ``theta`` (N, 2, 3; centred pixel
    coordinates), nearest neighbour; ``padding`` outside the image: ``zeros`` (torchvision's
    fill 0) or ``reflection`` (about the edge, as grid_sample's). The source pixel of every
    output pixel is computed as ``grid_sample(mode="nearest", align_corners=False)`` would,
    then read with one gather on the uint8 batch (no float copy of the images)."""
    n, c, h, w = images.shape
    device = images.device
    theta = theta.to(device)
    # Pixel-centre coordinates about the image centre, as torchvision's _affine_grid.
    xs = torch.linspace((1.0 - w) * 0.5, (w - 1.0) * 0.5, w, device=device)
    ys = torch.linspace((1.0 - h) * 0.5, (h - 1.0) * 0.5, h, device=device)
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    t = theta.view(n, 2, 3, 1, 1)
    px = t[:, 0, 0] * xx + t[:, 0, 1] * yy + t[:, 0, 2]
    py = t[:, 1, 0] * xx + t[:, 1, 1] * yy + t[:, 1, 2]
    ix, iy = px + (w - 1) * 0.5, py + (h - 1) * 0.5  # source column and row, continuous
    if padding == "reflection":
        ix, iy = _reflect(ix, w), _reflect(iy, h)
    ix, iy = ix.round(), iy.round()  # round half to even, as grid_sample's nearest
    inside = (ix >= 0) & (ix <= w - 1) & (iy >= 0) & (iy <= h - 1)
    flat = (iy.clamp(0, h - 1) * w + ix.clamp(0, w - 1)).long().view(n, 1, h * w)
    out = images.reshape(n, c, h * w).gather(2, flat.expand(n, c, h * w)).view(n, c, h, w)
    if padding == "zeros":
        out = out * inside.unsqueeze(1)
    elif padding != "reflection":
        raise ValueError(f"padding {padding!r}: zeros or reflection")
    return out


def _reflect(coord: torch.Tensor, size: int) -> torch.Tensor:
    # Reflect about the outer edges -0.5 and size - 0.5 (grid_sample, align_corners=False).
    period = 2 * size
    t = (coord + 0.5).remainder(period)
    return torch.where(t < size, t, period - t) - 0.5


# ---------------------------------------------------------------- colour


def color_jitter(images: torch.Tensor, brightness: float, contrast: float, saturation: float,
                 hue: float, g: torch.Generator) -> torch.Tensor:
    """v2.ColorJitter per sample: factors uniform in [1 - x, 1 + x] (hue in [-hue, hue]), the
    four ops in a random order per sample; on uint8 each op truncates back to integers."""
    n = len(images)
    device = images.device
    order = torch.argsort(torch.rand(n, 4, generator=g), 1)  # a random permutation per row
    factors = [_uniform(n, 1 - brightness, 1 + brightness, g),
               _uniform(n, 1 - contrast, 1 + contrast, g),
               _uniform(n, 1 - saturation, 1 + saturation, g),
               _uniform(n, -hue, hue, g)]
    factors = [f.to(device) for f in factors]
    order = order.to(device)
    if _compiles(images):
        return _fused_jitter(images, order, torch.stack(factors, 1))
    x = images.float()
    for slot in range(4):
        for op in range(4):
            idx = (order[:, slot] == op).nonzero().squeeze(1)
            if len(idx):
                x[idx] = _JITTER_OPS[op](x[idx], factors[op][idx])
    return x.to(torch.uint8)


def _blend(x: torch.Tensor, other: torch.Tensor | None, ratio: torch.Tensor) -> torch.Tensor:
    # torchvision's _blend on uint8: x * r + other * (1 - r), clamped, truncated to integers
    # (other None: black, whose term is exactly 0). In place after the first product: the
    # same values with fewer full-batch temporaries.
    r = ratio.view(-1, 1, 1, 1)
    out = x * r
    if other is not None:
        out.add_(other * (1 - r))
    return out.clamp_(0, 255).trunc_()


def _gray(x: torch.Tensor) -> torch.Tensor:
    if x.shape[1] == 1:
        return x
    r, g, b = x.unbind(1)
    return (r * _GRAY[0] + g * _GRAY[1] + b * _GRAY[2]).unsqueeze(1).floor_()


def _brightness(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    return _blend(x, None, f)


def _contrast(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    return _blend(x, _gray(x).mean(dim=(1, 2, 3), keepdim=True), f)


def _saturation(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    return x if x.shape[1] == 1 else _blend(x, _gray(x), f)


def _hue(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """torchvision's adjust_hue (RGB -> HSV, shift H, back, truncated to uint8) in closed form:
    a hue shift keeps each pixel's max and min channel, and channel c of the result is
    ``max - (max - min) * clamp(min(k, 4 - k), 0, 1)`` with ``k = (n_c + 6 h) mod 6``,
    n = 5, 3, 1 for r, g, b (a third of torchvision's tensor passes)."""
    if x.shape[1] == 1:
        return x
    r, g, b = x.unbind(1)
    maxc, minc = x.amax(1), x.amin(1)
    delta = maxc - minc
    safe = torch.where(delta > 0, delta, torch.ones_like(delta))
    # Which channel is the max picks the sector's numerator and offset: one division, not
    # one per sector (the hue op is the costliest of the jitter).
    is_r, is_g = maxc == r, maxc == g
    num = torch.where(is_r, g - b, torch.where(is_g, b - r, r - g))
    offset = torch.where(is_r, 0.0, torch.where(is_g, 2.0, 4.0))
    h6 = num.div_(safe).add_(offset).add_(6.0 * f.view(-1, 1, 1))
    n = torch.tensor([5.0, 3.0, 1.0], device=x.device).view(1, 3, 1, 1)
    k = (n + h6.unsqueeze(1)).remainder_(6.0)
    ramp = torch.minimum(k, 4.0 - k).clamp_(0.0, 1.0)
    out = maxc.unsqueeze(1) - delta.unsqueeze(1) * ramp
    return out.mul_(255.999 / 255.0).trunc_()  # torchvision's float -> uint8 conversion


_JITTER_OPS = (_brightness, _contrast, _saturation, _hue)


def _blend_slot(images: torch.Tensor, op: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """One slot of the jitter, uint8 in and out, for every sample whose op there is a blend
    (brightness, contrast, saturation); samples whose op is the hue pass through. Written
    for inductor, which fuses it into a reduction and one pass over the uint8 batch (the
    eager ops make about ten over a float copy four times its size); exact, because every
    op truncates to integers in [0, 255]."""
    x, op = images.float(), op.view(-1, 1, 1, 1)
    fb, fc, fs = (factors[:, i].view(-1, 1, 1, 1) for i in range(3))
    gray = _gray(x)
    blended = torch.where(op == 0, x * fb, torch.where(
        op == 1, x * fc + gray.mean(dim=(1, 2, 3), keepdim=True) * (1 - fc),
        x * fs + gray * (1 - fs)))
    return torch.where(op == 3, x, blended.clamp(0, 255).trunc()).to(torch.uint8)


def _hue_uint8(images: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    return _hue(images.float(), f).to(torch.uint8)


def _fused_jitter(images: torch.Tensor, order: torch.Tensor, factors: torch.Tensor
                  ) -> torch.Tensor:
    """``color_jitter``'s values with compiled kernels. Samples are sorted by the slot of
    their hue op so each slot's hue samples are one contiguous slice (no gather), and the
    output is put back in the input's order."""
    hue_slot = (order == 3).to(torch.int64).argmax(1)
    perm = torch.argsort(hue_slot, stable=True)
    ends = torch.bincount(hue_slot, minlength=4).cumsum(0).tolist()
    x = images.index_select(0, perm)
    order, factors = order[perm], factors[perm]
    for slot in range(4):
        x = _compiled(_blend_slot)(x, order[:, slot], factors)
        start, end = (ends[slot - 1] if slot else 0), ends[slot]
        if end > start:
            x[start:end] = _compiled(_hue_uint8)(x[start:end], factors[start:end, 3])
    return x.index_select(0, torch.argsort(perm))


def gaussian_blur3(images: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """v2.GaussianBlur(kernel_size=3) with one sigma per sample: reflect padding, a separable
    normalised kernel, rounded back to uint8."""
    n, c, h, w = images.shape
    x = torch.tensor([-1.0, 0.0, 1.0])
    k1 = torch.exp(-0.5 * (x.view(1, 3) / sigma.view(-1, 1)) ** 2)
    k1 = k1 / k1.sum(1, keepdim=True)
    k2 = (k1.unsqueeze(2) * k1.unsqueeze(1)).to(images.device)  # (n, 3, 3)
    weight = k2.repeat_interleave(c, 0).unsqueeze(1)  # one depthwise kernel per (sample, chan)
    padded = F.pad(images.float().reshape(1, n * c, h, w), (1, 1, 1, 1), mode="reflect")
    out = F.conv2d(padded, weight, groups=n * c).reshape(n, c, h, w)
    return out.round_().clamp_(0, 255).to(torch.uint8)


# ---------------------------------------------------------------- compiled kernels

# Below this many pixels per batch the warp and the jitter stay eager: compiling stalls the
# first batch 2-20 s (inductor's disk cache warm or cold), which only training-sized batches
# pay back (64 x 112 x 112 is 800k pixels: the warp and jitter go from ~45 to ~15 ms).
COMPILE_MIN_PIXELS = 1 << 19


def _compiles(images: torch.Tensor) -> bool:
    """Whether this batch goes through inductor kernels (the warp and the colour jitter of
    ``microscopy``): a large enough 3-channel CPU batch (on a GPU the eager ops are already
    fast), in a process where compiling works."""
    n, c, h, w = images.shape
    return (images.device.type == "cpu" and c == 3 and n * h * w >= COMPILE_MIN_PIXELS
            and _inductor_works())


@functools.cache
def _compiled(fn: Callable) -> Callable:
    # dynamic: one kernel for every batch size and side (last batch, progressive resizing).
    return torch.compile(fn, dynamic=True)


@functools.cache
def _inductor_works() -> bool:
    """Compiles and checks a probe once per process: no C++ compiler (or any backend
    failure) keeps the eager ops, which give the same values."""
    log.info("compiling the augmentation kernels (inductor; seconds each, cached on disk "
             "for later runs)")
    probe, shift = torch.arange(96, dtype=torch.uint8).view(2, 3, 4, 4), torch.zeros(2)
    try:
        ok = torch.equal(_compiled(_hue_uint8)(probe, shift), _hue_uint8(probe, shift))
    except Exception as exc:  # noqa: BLE001 - any backend failure means: stay eager
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        log.warning("augmentation stays eager: torch.compile failed (%s)", first_line)
        return False
    if not ok:
        log.warning("augmentation stays eager: the compiled kernel disagreed with the eager ops")
    return ok


# ---------------------------------------------------------------- helpers


def _uniform(n: int, low: float, high: float, g: torch.Generator) -> torch.Tensor:
    return torch.empty(n).uniform_(low, high, generator=g)


def _require_square(h: int, w: int, preset: str) -> None:
    if h != w:
        raise ValueError(f"augmentation {preset!r} rotates by 90 degrees: images must be "
                         f"square, got {h} x {w}")

