"""Stain and colour: the HED-space jitter of the ``stain`` augmentation preset, and Reinhard
colour normalisation as a small ``nn.Module`` with a JSON state.

**HED jitter** (Tellez et al. 2019, "Quantifying the effects of data augmentation and stain
color normalization in convolutional neural networks for computational pathology"): RGB is
taken to optical density ``-log(max(rgb, 1e-6))`` and unmixed into haematoxylin, eosin and DAB
with Ruifrok and Johnston's matrix (scikit-image's ``hed_from_rgb``), each stain channel is
scaled by alpha in [1 - sigma, 1 + sigma] and shifted by beta in [-sigma, sigma] per sample,
and mixed back. All of it is linear in log-RGB, so a sample's whole jitter is one 3x3 matrix
and an offset applied to ``log(rgb)``: one log, one batched 3x3 product and one exp per pixel.
Two departures from scikit-image's ``rgb2hed``/``hed2rgb``, both seen to matter:
beta is in optical-density units, not in ``rgb2hed``'s (densities divided by -log(1e-6) =
13.8): there sigma 0.05 shifts densities by up to 0.69, and DeFungi patches came out purple,
pink or green, far beyond the mild "HED-light" changes of the paper; and the stain densities
are not clamped at 0: with the clamp even alpha = 1, beta = 0 would move every pixel outside
the H-E-D cone (much of a non-H&E micrograph, DeFungi's included) the same way, a colour bias
the test images never see; without it the jitter is centred on the identity.

**Reinhard normalisation** (Reinhard et al. 2001, as used for H&E by HistomicsTK, StainTools
and torchstain): each image's per-channel mean and standard deviation in CIE L*a*b* (D65) are
mapped onto a reference's, fitted on training images (``fit_stain_reference``). Written here
rather than taken from torchstain (1.4.1, which has it): torchstain normalises one image at a
time, collects the statistics with ``torch.tensor([...])`` of Python floats and converts with
``masked_scatter_`` (neither traces into one ONNX graph), truncates its output to uint8 and
keeps its reference in tensor attributes; this module works on whole batches with ops the
dynamo exporter turns into a fixed graph, and its state is a few floats (checkpoint metadata,
never a pickle). tests/data/test_stain.py checks it against torchstain's where installed.

Macenko normalisation is not built: it needs a per-image eigen-decomposition (no ONNX op; a
closed-form 3x3 solver would do) and masked percentiles of angles and concentrations.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from medscope.errors import MedscopeError

# Ruifrok & Johnston's stain vectors (rows: haematoxylin, eosin, DAB), as scikit-image.
RGB_FROM_HED = ((0.65, 0.70, 0.29), (0.07, 0.99, 0.11), (0.27, 0.57, 0.78))
_LOG_FLOOR = 1e-6  # rgb2hed's floor before the log: 0 would be infinite optical density

# The stain preset's colour draws: HED sigma (Tellez's "HED-light"), brightness and contrast
# factors in [1 - x, 1 + x] (as the microscopy preset's jitter), gamma log-uniform in
# [exp(-x), exp(x)] (symmetric: darkening and brightening mid-tones equally often).
STAIN_SIGMA = 0.05
BRIGHTNESS, CONTRAST, LOG_GAMMA = 0.15, 0.15, 0.2

# sRGB (D65) -> CIE XYZ, and the D65 white point.
_XYZ_FROM_RGB = ((0.412453, 0.357580, 0.180423), (0.212671, 0.715160, 0.072169),
                 (0.019334, 0.119193, 0.950227))
_WHITE = (0.950456, 1.0, 1.088754)
_DELTA = 6.0 / 29.0
_GREY = torch.tensor([0.2989, 0.587, 0.114]).view(1, 3, 1, 1)  # torchvision's grey weights

METHODS = ("reinhard",)
STATE_KEYS = ("method", "mean", "std")


# ---------------------------------------------------------------- HED jitter


def _uniform(shape: tuple[int, ...], low: float, high: float,
             g: torch.Generator | None) -> torch.Tensor:
    return torch.empty(shape).uniform_(low, high, generator=g)


def hed_jitter_matrices(alpha: torch.Tensor, beta: torch.Tensor
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample ``(mix (N, 3, 3), offset (N, 3))`` such that ``log(rgb') = log(rgb) @ mix +
    offset`` is: stain densities ``s = -log(rgb) @ hed_from_rgb``, ``s * alpha + beta`` per
    stain channel (beta in optical-density units), back through ``rgb_from_hed`` (no clamp)."""
    rgb_from_hed = torch.tensor(RGB_FROM_HED, dtype=torch.float64)
    hed_from_rgb = torch.linalg.inv(rgb_from_hed)
    # log(rgb') = -(s * alpha + beta) @ R = log(rgb) @ (H diag(alpha) R) - beta @ R
    mix = hed_from_rgb @ torch.diag_embed(alpha.double()) @ rgb_from_hed
    offset = -beta.double() @ rgb_from_hed
    return mix.float(), offset.float()


def draw_stain_jitter(n: int, generator: torch.Generator | None, sigma: float = STAIN_SIGMA
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The stain preset's per-sample colour parameters, drawn on the CPU in a fixed order
    (alpha N x 3, beta N x 3, brightness, contrast, log-gamma): ``(mix, offset, factors)``
    with ``factors`` N x 3 = brightness, contrast, gamma. ``generator`` None: torch's global
    one (the per-image reference pipeline)."""
    alpha = _uniform((n, 3), 1 - sigma, 1 + sigma, generator)
    beta = _uniform((n, 3), -sigma, sigma, generator)
    brightness = _uniform((n,), 1 - BRIGHTNESS, 1 + BRIGHTNESS, generator)
    contrast = _uniform((n,), 1 - CONTRAST, 1 + CONTRAST, generator)
    gamma = _uniform((n,), -LOG_GAMMA, LOG_GAMMA, generator).exp()
    mix, offset = hed_jitter_matrices(alpha, beta)
    return mix, offset, torch.stack([brightness, contrast, gamma], 1)


def stain_colour(images: torch.Tensor, mix: torch.Tensor, offset: torch.Tensor,
                 factors: torch.Tensor) -> torch.Tensor:
    """uint8 (N, C, H, W) -> uint8: the HED jitter (3 channels only: one grey channel has no
    stains), then brightness, contrast (towards the sample's mean grey, as torchvision's) and
    gamma, clamped after each, in float with one rounding at the end."""
    n, c = images.shape[:2]
    x = images.float() / 255.0
    if c == 3:
        log_rgb = torch.log(x.clamp_min(_LOG_FLOOR))
        # log_rgb @ mix per pixel, elementwise (no bf16 under autocast, as _mix)
        mixed = (log_rgb.unsqueeze(2) * mix.view(n, 3, 3, 1, 1)).sum(1)
        x = torch.exp(mixed + offset.view(n, 3, 1, 1))
    brightness, contrast, gamma = (factors[:, i].view(n, 1, 1, 1) for i in range(3))
    x = (x * brightness).clamp(0.0, 1.0)
    grey = x if c == 1 else (x * _GREY.to(x.device)).sum(1, keepdim=True)
    mean = grey.mean(dim=(1, 2, 3), keepdim=True)
    x = (x * contrast + mean * (1 - contrast)).clamp(0.0, 1.0)
    return (x.pow(gamma) * 255.0).round().to(torch.uint8)



# ---------------------------------------------------------------- CIE L*a*b*


def _f(t: torch.Tensor) -> torch.Tensor:
    return torch.where(t > _DELTA ** 3, t.clamp_min(_DELTA ** 3).pow(1.0 / 3.0),
                       t / (3 * _DELTA ** 2) + 4.0 / 29.0)


def _f_inv(t: torch.Tensor) -> torch.Tensor:
    return torch.where(t > _DELTA, t ** 3, 3 * _DELTA ** 2 * (t - 4.0 / 29.0))


def _mix(x: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    # (N, 3, H, W) channels times a 3 x 3 matrix (out = matrix @ pixel) as products and sums:
    # a conv or matmul would run in bf16 under the autocast of bf16 training and inference
    # (errors of a grey level or more), elementwise ops stay float32.
    return (x.unsqueeze(1) * matrix.view(1, 3, 3, 1, 1)).sum(2)


def rgb_to_lab(rgb: torch.Tensor, xyz_from_rgb: torch.Tensor) -> torch.Tensor:
    """sRGB on the 0-1 scale (N, 3, H, W) -> CIE L*a*b* (D65): L in [0, 100]."""
    linear = torch.where(rgb > 0.04045, ((rgb.clamp_min(0.04045) + 0.055) / 1.055) ** 2.4,
                         rgb / 12.92)
    fx, fy, fz = _f(_mix(linear, xyz_from_rgb)).unbind(1)  # the white folded into the matrix
    return torch.stack([116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)], 1)


def lab_to_rgb(lab: torch.Tensor, rgb_from_xyz: torch.Tensor) -> torch.Tensor:
    """CIE L*a*b* (D65) -> sRGB on the 0-1 scale, clipped to the gamut."""
    light, a, b = lab.unbind(1)
    fy = (light + 16.0) / 116.0
    xyz = _f_inv(torch.stack([fy + a / 500.0, fy, fy - b / 200.0], 1))
    linear = _mix(xyz, rgb_from_xyz).clamp(0.0, 1.0)
    return torch.where(linear > 0.0031308,
                       1.055 * linear.clamp_min(0.0031308) ** (1 / 2.4) - 0.055, linear * 12.92)


def _xyz_matrices() -> tuple[torch.Tensor, torch.Tensor]:
    xyz_from_rgb = torch.tensor(_XYZ_FROM_RGB, dtype=torch.float64)
    white = torch.tensor(_WHITE, dtype=torch.float64).view(3, 1)
    to_xyz = xyz_from_rgb / white  # XYZ relative to the white point
    return to_xyz.float(), torch.linalg.inv(to_xyz).float()


# ---------------------------------------------------------------- Reinhard


class StainNormalize(nn.Module):
    """Reinhard colour normalisation of a batch: uint8 or float pixels on the 0-255 scale
    (N, 3, H, W) -> float32 on the 0-255 scale, each image's L*a*b* channel means and
    standard deviations replaced by the reference's. Put it before ``Normalize`` (which
    takes either dtype on that scale); where uint8 is needed (the batch augmentation), round
    its output."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.method = "reinhard"
        to_xyz, from_xyz = _xyz_matrices()
        self.register_buffer("ref_mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("ref_std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("to_xyz", to_xyz)
        self.register_buffer("from_xyz", from_xyz)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        lab = rgb_to_lab(pixels.float() / 255.0, self.to_xyz)
        mean = lab.mean(dim=(2, 3), keepdim=True)
        std = ((lab - mean) ** 2).mean(dim=(2, 3), keepdim=True).sqrt().clamp_min(1e-3)
        lab = (lab - mean) / std * self.ref_std + self.ref_mean
        return lab_to_rgb(lab, self.from_xyz) * 255.0

    def state(self) -> dict[str, Any]:
        """The JSON-serialisable state: ``{"method", "mean", "std"}`` (lists of floats)."""
        return {"method": self.method, "mean": self.ref_mean.flatten().tolist(),
                "std": self.ref_std.flatten().tolist()}

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> StainNormalize:
        """The module of a state written by ``state()`` or ``fit_stain_reference``."""
        if not isinstance(state, Mapping) or set(state) != set(STATE_KEYS):
            raise MedscopeError(f"stain_norm state: expected the keys {', '.join(STATE_KEYS)}, "
                                f"got {sorted(state) if isinstance(state, Mapping) else state!r}")
        if state["method"] not in METHODS:
            raise MedscopeError(f"stain_norm method {state['method']!r}: one of "
                                f"{', '.join(METHODS)}")
        mean, std = _three_floats(state, "mean"), _three_floats(state, "std")
        if min(std) <= 0:
            raise MedscopeError(f"stain_norm std {std}: every value must be positive")
        return cls(mean, std)


def _three_floats(state: Mapping[str, Any], key: str) -> list[float]:
    values = state[key]
    ok = (isinstance(values, Sequence) and len(values) == 3
          and all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
                  for v in values))
    if not ok:
        raise MedscopeError(f"stain_norm {key} {values!r}: expected 3 finite numbers")
    return [float(v) for v in values]


def evenly_drawn(pixels: np.ndarray, max_images: int, seed: int) -> np.ndarray:
    """At most ``max_images`` of N images drawn evenly at random (seeded), in their order: the
    pick of ``transforms.channel_stats`` (data sets are often ordered by class)."""
    if len(pixels) <= max_images:
        return pixels
    return pixels[np.sort(np.random.default_rng(seed).choice(len(pixels), max_images,
                                                             replace=False))]


def stain_normalised_pixels(pixels: np.ndarray, state: Mapping[str, Any], chunk: int = 256,
                            max_images: int | None = None, seed: int = 0) -> np.ndarray:
    """N x S x S x 3 uint8 images normalised by ``state``, rounded back to uint8: what the
    ``Normalize`` statistics of a stain-normalised run are computed on (``channel_stats``).
    With ``max_images``, only that many drawn as ``channel_stats`` draws them."""
    norm = StainNormalize.from_state(state)
    if max_images is not None:
        pixels = evenly_drawn(pixels, max_images, seed)
    out = np.empty_like(pixels)
    with torch.no_grad():
        for start in range(0, len(pixels), chunk):
            batch = torch.from_numpy(np.ascontiguousarray(pixels[start:start + chunk]))
            done = norm(batch.permute(0, 3, 1, 2)).round().clamp(0, 255).to(torch.uint8)
            out[start:start + chunk] = done.permute(0, 2, 3, 1).numpy()
    return out


def fit_stain_reference(pixels: np.ndarray, method: str = "reinhard", max_images: int = 2000,
                        seed: int = 0, chunk: int = 256) -> dict[str, Any]:
    """The reference of ``method`` fitted on N x S x S x 3 uint8 training images: the mean
    over images of each image's L*a*b* channel means and of its standard deviations (at most
    ``max_images`` drawn evenly at random, seeded, as ``channel_stats``: sets are often
    ordered by class). Returns ``StainNormalize``'s JSON state."""
    if method not in METHODS:
        raise MedscopeError(f"data.stain_norm {method!r}: one of {', '.join(METHODS)}")
    if pixels.ndim != 4 or pixels.shape[-1] != 3 or pixels.dtype != np.uint8 or not len(pixels):
        raise MedscopeError(f"stain_norm needs N x S x S x 3 uint8 RGB images (data.in_chans "
                            f"3), got {pixels.dtype} {pixels.shape}")
    pixels = evenly_drawn(pixels, max_images, seed)
    to_xyz, _ = _xyz_matrices()
    means, stds = [], []
    for start in range(0, len(pixels), chunk):  # a float L*a*b* copy is 12x the uint8 one
        batch = torch.from_numpy(np.ascontiguousarray(pixels[start:start + chunk]))
        lab = rgb_to_lab(batch.permute(0, 3, 1, 2).float() / 255.0, to_xyz).double()
        means.append(lab.mean(dim=(2, 3)))
        stds.append(lab.std(dim=(2, 3), correction=0))
    return {"method": method, "mean": torch.cat(means).mean(0).tolist(),
            "std": torch.cat(stds).mean(0).clamp_min(1e-3).tolist()}
