"""A registry of model factories, timm style: ``create_model(name, num_classes, in_chans, ...)``.

Our own definitions (the architectures exactly as the seed studies define them) are registered
here by name; any other name is handed to timm, so every timm architecture works too.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable
from dataclasses import dataclass

import torch.nn as nn

from medscope.config import IN_CHANS
from medscope.errors import MedscopeError
from medscope.models.heads import apply_head_options


@dataclass(frozen=True)
class ModelEntry:
    name: str
    factory: Callable[..., nn.Module]
    default_size: int
    min_size: int
    description: str


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(
    name: str, *, default_size: int = 224, min_size: int = 32, description: str = ""
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator: register ``factory(num_classes, in_chans, **kw) -> nn.Module`` under ``name``."""

    def wrap(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        _REGISTRY[name] = ModelEntry(name, factory, default_size, min_size, description)
        return factory

    return wrap


def own_models() -> dict[str, ModelEntry]:
    """The architectures medscope defines itself (not timm's); ``medscope.models`` imports their
    definition modules, so they are registered whenever the registry is."""
    return dict(_REGISTRY)


def list_models(pattern: str = "*", include_timm: bool = False) -> list[str]:
    """Names matching ``pattern``: our own first, then (optionally) timm's."""
    names = sorted(n for n in own_models() if fnmatch.fnmatch(n, pattern))
    if include_timm:
        import timm

        names += [n for n in timm.list_models(pattern) if n not in _REGISTRY]
    return names


def is_known_model(name: str) -> bool:
    if name in own_models():
        return True
    import timm

    return timm.is_model(name)


def create_model(
    name: str,
    num_classes: int,
    in_chans: int = 3,
    pretrained: str | None = None,
    img_size: int | None = None,
    **kwargs,
) -> nn.Module:
    """Build ``name`` with a ``num_classes`` head for ``in_chans``-channel input.

    ``img_size`` matters to architectures whose layer shapes depend on it (simple_cnn's flatten,
    ViT's position embedding) and is checked against the model's smallest sensible size
    (:func:`min_size`). ``pretrained`` is a local weights file or a hub id; loading is done by
    :func:`medscope.models.transfer.load_pretrained`. ``head_pool=n`` (ResNet family only)
    pools the last feature map to n x n before the classifier; ``flatten_head=True`` (VGG only)
    flattens the last feature map into one Linear, as Keras' VGG16 without its top.
    """
    if num_classes < 2:
        raise MedscopeError(f"num_classes must be at least 2, got {num_classes}")
    if in_chans not in IN_CHANS:  # the set the config and the CLI offer
        raise MedscopeError(f"in_chans must be one of {IN_CHANS}, got {in_chans}")
    head_pool = kwargs.pop("head_pool", None)
    flatten_head = kwargs.pop("flatten_head", False)
    if img_size is not None:
        check_min_size(name, img_size)
    entry = own_models().get(name)
    if entry is not None:
        size = img_size or entry.default_size
        model = entry.factory(num_classes=num_classes, in_chans=in_chans, img_size=size, **kwargs)
    else:
        model = _create_timm(name, num_classes, in_chans, img_size, **kwargs)
    apply_head_options(model, head_pool=head_pool, flatten_head=flatten_head,
                       img_size=img_size or default_size(name))
    if pretrained:
        from medscope.models.transfer import load_pretrained

        load_pretrained(model, pretrained, in_chans=in_chans, architecture=name)
    return model


def default_size(name: str) -> int:
    """The input size the architecture was designed (and usually pretrained) for."""
    entry = own_models().get(name)
    if entry is not None:
        return entry.default_size
    return int(_timm_cfg(name).input_size[-1])


def check_min_size(name: str, img_size: int) -> None:
    """Refuse a side below ``min_size(name)`` with one line."""
    if img_size < min_size(name):
        raise MedscopeError(f"model {name!r} needs images of at least {min_size(name)} px, "
                            f"got {img_size}")


def min_size(name: str) -> int:
    """Smallest sensible square input: below it a layer would get an empty feature map.

    Own models store it in their registry entry. For timm: 75 for Inception-v3 (its stem and
    stride-2 reductions), the patch size for fixed-size transformers (their position embedding
    is built for the requested size), 32 (the usual output stride) for everything else.
    """
    entry = own_models().get(name)
    if entry is not None:
        return entry.min_size
    cfg = _timm_cfg(name)
    declared = getattr(cfg, "min_input_size", None)
    if declared:
        return int(declared[-1])
    if name.startswith("inception"):
        return 75
    if cfg.fixed_input_size:
        patch = re.search(r"patch(\d+)", name)
        return int(patch.group(1)) if patch else 32
    return 32


def _timm_cfg(name: str):
    import timm
    from timm.models import get_pretrained_cfg

    if not timm.is_model(name):
        close = timm.list_models(f"*{name}*")[:5]
        hint = f" (did you mean: {', '.join(close)}?)" if close else ""
        raise MedscopeError(
            f"unknown model {name!r}{hint}; `medscope models` lists the names"
        )
    return get_pretrained_cfg(name)


def _create_timm(name: str, num_classes: int, in_chans: int, img_size: int | None,
                 **kwargs) -> nn.Module:
    import timm

    cfg = _timm_cfg(name)
    # Only fixed-size architectures (ViTs...) take img_size; convnets are size-agnostic and
    # would reject the argument.
    if img_size is not None and cfg.fixed_input_size:
        kwargs.setdefault("img_size", img_size)
    try:
        return timm.create_model(name, pretrained=False, num_classes=num_classes,
                                 in_chans=in_chans, **kwargs)
    except TypeError as e:
        raise MedscopeError(f"model {name!r} does not accept these options: {e}") from e
