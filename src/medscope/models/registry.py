"""A registry of model factories, timm style: ``create_model(name, num_classes, in_chans, ...)``.

Our own definitions (the architectures exactly as the seed studies define them) are registered
here by name; any other name is handed to timm, so every timm architecture works too.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from dataclasses import dataclass

import torch.nn as nn

from medscope.errors import MedscopeError


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
    """The architectures medscope defines itself (not timm's)."""
    _load_builtin()
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
    ViT's position embedding). ``pretrained`` is a local weights file or a hub id; loading is done
    by :mod:`medscope.models.transfer`.
    """
    if num_classes < 2:
        raise MedscopeError(f"num_classes must be at least 2, got {num_classes}")
    if in_chans not in (1, 3):
        raise MedscopeError(f"in_chans must be 1 or 3, got {in_chans}")
    entry = own_models().get(name)
    if entry is not None:
        size = img_size or entry.default_size
        if size < entry.min_size:
            raise MedscopeError(f"model {name!r} needs images of at least {entry.min_size} px, "
                                f"got {size}")
        model = entry.factory(num_classes=num_classes, in_chans=in_chans, img_size=size, **kwargs)
    else:
        model = _create_timm(name, num_classes, in_chans, **kwargs)
    if pretrained:
        from medscope.models.transfer import load_pretrained

        load_pretrained(model, pretrained, in_chans=in_chans)
    return model


def _create_timm(name: str, num_classes: int, in_chans: int, **kwargs) -> nn.Module:
    import timm

    if not timm.is_model(name):
        close = timm.list_models(f"*{name}*")[:5]
        hint = f" (did you mean: {', '.join(close)}?)" if close else ""
        raise MedscopeError(
            f"unknown model {name!r}{hint}; `medscope models` lists the names"
        )
    return timm.create_model(name, pretrained=False, num_classes=num_classes,
                             in_chans=in_chans, **kwargs)


def _load_builtin() -> None:
    # Importing the definition modules runs their @register_model decorators.
    from medscope.models import classic  # noqa: F401
