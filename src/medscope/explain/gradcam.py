"""Class-activation heat maps for one image, computed by captum on the predictor's own model.

``gradcam`` is captum's ``LayerGradCam``; ``occlusion`` is captum's ``Occlusion``; captum has
no Grad-CAM++, so ``gradcam++`` is a short own implementation on the same layer (one forward
hook, one ``autograd.grad``). The target layer is found per architecture (``target_layer``);
a ViT's last block gives tokens, which are viewed as the patch grid for the duration of the call.
Everything runs in fp32 (no autocast) on the predictor's model, with gradients enabled only
locally, and every hook is removed before returning.
"""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from medscope.errors import MedscopeError

METHODS = ("gradcam", "gradcam++", "occlusion")


def heatmap(predictor: Any, image: np.ndarray, target: int | str | None = None,
            method: str = "gradcam", layer: str | None = None) -> np.ndarray:
    """S x S float32 heat map in [0, 1] of ``image`` (S x S x C uint8, as ``read_image``
    returns) for class ``target`` (index or name; None = the predicted class)."""
    if method not in METHODS:
        raise MedscopeError(f"unknown explain method {method!r} (one of {', '.join(METHODS)})")
    model = predictor.model
    x = model_input(predictor, image)
    with torch.enable_grad():
        if target is None:
            with torch.no_grad():
                target = int(model(x).argmax(1)[0])
        index = class_index(predictor.classes, target)
        if method == "occlusion":
            raw = _occlusion(model, x, index)
        else:
            with _spatial_layer(model, target_layer(model, layer), x) as spatial:
                raw = (_gradcam(model, spatial, x, index) if method == "gradcam"
                       else _gradcam_plus_plus(model, spatial, x, index))
    return _to_unit_map(raw.detach().float(), x.shape[-2:])


def model_input(predictor: Any, image: np.ndarray) -> torch.Tensor:
    """1 x C x S x S normalised fp32 input on the predictor's device."""
    size, chans = predictor.img_size, predictor.in_chans
    if image.shape != (size, size, chans) or image.dtype != np.uint8:
        raise MedscopeError(f"image of shape {image.shape} {image.dtype}: expected "
                            f"{size}x{size}x{chans} uint8 (as read_image returns)")
    batch = torch.from_numpy(np.array(image, copy=True)).permute(2, 0, 1)[None]
    with torch.no_grad():
        return predictor.normalize(predictor.runtime.to_input(batch)).float()


def class_index(classes: list[str], target: int | str) -> int:
    if isinstance(target, str) and not target.lstrip("-").isdigit():
        if target not in classes:
            raise MedscopeError(f"unknown class {target!r} (one of {', '.join(classes)})")
        return classes.index(target)
    index = int(target)
    if not 0 <= index < len(classes):
        raise MedscopeError(f"class index {index} out of range (0..{len(classes) - 1})")
    return index


# ---------------------------------------------------------------- target layer


def target_layer(model: nn.Module, layer_name: str | None = None) -> nn.Module:
    """The layer whose activations a CAM weighs: ``layer_name`` if given; for a ViT the last
    block (its tokens as they enter attention, ``norm1``); else the last module whose output
    is a spatial (H x W > 1) feature map, i.e. the last conv stage of a CNN (a global pool's
    1 x 1 output is not spatial)."""
    if layer_name:
        return _named_layer(model, layer_name)
    blocks = getattr(model, "blocks", None)
    if hasattr(model, "patch_embed") and isinstance(blocks, nn.Sequential) and len(blocks):
        # The last block's *output* patch tokens never reach a class-token head (no attention
        # follows), so their gradient is zero; its input tokens do, through its attention.
        return getattr(blocks[-1], "norm1", blocks[-1])
    return _last_spatial_module(model)


def _named_layer(model: nn.Module, name: str) -> nn.Module:
    names = [n for n, _ in model.named_modules() if n]
    if name not in names:
        tops = [n for n in names if "." not in n]
        raise MedscopeError(f"unknown layer {name!r} (layers include: {', '.join(tops)}; "
                            "nested ones by dotted name, e.g. "
                            f"{next((n for n in reversed(names) if '.' in n), tops[-1])})")
    return model.get_submodule(name)


def _last_spatial_module(model: nn.Module) -> nn.Module:
    # Forward hooks fire as modules finish, so an enclosing stage comes after its last child:
    # the last spatial output found is the outermost module producing it (e.g. ``layer4``).
    finished: list[tuple[nn.Module, torch.Size]] = []
    handles = [m.register_forward_hook(
        lambda mod, _i, out: finished.append((mod, out.shape)) if torch.is_tensor(out) else None)
        for name, m in model.named_modules() if name]
    size, chans = _input_size(model)
    param = next(model.parameters())
    try:
        with torch.no_grad():
            model(torch.zeros(1, chans, size, size, device=param.device, dtype=param.dtype))
    finally:
        for h in handles:
            h.remove()
    spatial = [m for m, shape in finished if len(shape) == 4 and shape[-1] * shape[-2] > 1]
    if not spatial:
        raise MedscopeError(f"{type(model).__name__}: no layer with a spatial output; "
                            "name one with --layer")
    return spatial[-1]


def _input_size(model: nn.Module) -> tuple[int, int]:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    chans, size, _ = cfg.get("input_size", (3, 224, 224))
    return int(size), int(chans)


class _PatchGrid(nn.Identity):
    """Where a ViT block's patch tokens pass as an N x D x h x w map, so CAMs can hook them."""


@contextlib.contextmanager
def _spatial_layer(model: nn.Module, layer: nn.Module, x: torch.Tensor
                   ) -> Iterator[nn.Module]:
    """``layer`` itself when its output is N x C x H x W; for N x T x D tokens a temporary
    ``_PatchGrid`` through which the patch tokens (minus class/prefix tokens) flow as a grid."""
    shapes: list[torch.Size] = []
    probe = layer.register_forward_hook(lambda _m, _i, out: shapes.append(out.shape))
    try:
        with torch.no_grad():
            model(x)
    finally:
        probe.remove()
    if len(shapes[0]) == 4:
        yield layer
        return
    if len(shapes[0]) != 3:
        raise MedscopeError(f"layer {type(layer).__name__} gives output {tuple(shapes[0])}; "
                            "need N x C x H x W or N x tokens x D")
    tokens = shapes[0][1]
    side = math.isqrt(tokens - int(getattr(model, "num_prefix_tokens", 0)))
    prefix = tokens - side * side
    grid = _PatchGrid()

    def through_grid(_m, _i, out: torch.Tensor) -> torch.Tensor:
        n, _, d = out.shape
        patches = grid(out[:, prefix:].transpose(1, 2).reshape(n, d, side, side))
        return torch.cat([out[:, :prefix], patches.flatten(2).transpose(1, 2)], 1)

    handle = layer.register_forward_hook(through_grid)
    try:
        yield grid
    finally:
        handle.remove()


# ---------------------------------------------------------------- methods


def _gradcam(model: nn.Module, layer: nn.Module, x: torch.Tensor, index: int) -> torch.Tensor:
    from captum.attr import LayerGradCam

    return LayerGradCam(model, layer).attribute(x, target=index, relu_attributions=True)


def _gradcam_plus_plus(model: nn.Module, layer: nn.Module, x: torch.Tensor,
                       index: int) -> torch.Tensor:
    # Chattopadhyay et al. 2018, closed form with the exponential of the class score:
    # alpha = g^2 / (2 g^2 + sum(A) g^3), weight_k = sum(alpha * relu(g)).
    acts: list[torch.Tensor] = []
    handle = layer.register_forward_hook(lambda _m, _i, out: acts.append(out))
    try:
        score = model(x)[:, index].sum()
    finally:
        handle.remove()
    (grad,) = torch.autograd.grad(score, acts[0])
    a = acts[0].detach()
    g2, g3 = grad.pow(2), grad.pow(3)
    denom = 2 * g2 + a.sum((2, 3), keepdim=True) * g3
    alpha = g2 / torch.where(denom != 0, denom, torch.ones_like(denom))
    weights = (alpha * F.relu(grad)).sum((2, 3), keepdim=True)
    return F.relu((weights * a).sum(1, keepdim=True))


def _occlusion(model: nn.Module, x: torch.Tensor, index: int) -> torch.Tensor:
    from captum.attr import Occlusion

    size = x.shape[-1]
    window = max(2, size // 8)
    with torch.no_grad():
        attr = Occlusion(model).attribute(
            x, sliding_window_shapes=(x.shape[1], window, window),
            strides=(x.shape[1], max(1, window // 2), max(1, window // 2)),
            baselines=0.0, target=index, perturbations_per_eval=16)
    return F.relu(attr.sum(1, keepdim=True))


def _to_unit_map(raw: torch.Tensor, size: torch.Size) -> np.ndarray:
    """1 x 1 x h x w attribution -> S x S float32 in [0, 1] (all zeros if nothing positive)."""
    heat = F.interpolate(raw, size=tuple(size), mode="bilinear", align_corners=False)[0, 0]
    heat = heat.clamp_min(0)
    peak = float(heat.max())
    heat = heat / peak if peak > 0 else torch.zeros_like(heat)
    return heat.cpu().numpy().astype(np.float32)


# ---------------------------------------------------------------- overlay


def overlay_png(image: np.ndarray, heat: np.ndarray, alpha: float = 0.45) -> bytes:
    """PNG bytes of ``image`` (S x S x C uint8) under the colour-mapped ``heat`` (S x S, 0-1)."""
    from matplotlib import colormaps
    from PIL import Image

    return _png(Image.fromarray(overlay_pixels(image, heat, alpha, colormaps["jet"])))


def overlay_pixels(image: np.ndarray, heat: np.ndarray, alpha: float = 0.45,
                   cmap: Any = None) -> np.ndarray:
    """S x S x 3 uint8 blend of the image (grey -> RGB) and the colour-mapped heat map."""
    if cmap is None:
        from matplotlib import colormaps

        cmap = colormaps["jet"]
    if heat.shape != image.shape[:2]:
        raise MedscopeError(f"heat map {heat.shape} does not match image {image.shape[:2]}")
    rgb = np.repeat(image, 3, axis=2) if image.shape[2] == 1 else image[..., :3]
    colour = cmap(np.clip(heat, 0, 1))[..., :3] * 255.0
    return np.clip((1 - alpha) * rgb + alpha * colour, 0, 255).astype(np.uint8)


def _png(img: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()
