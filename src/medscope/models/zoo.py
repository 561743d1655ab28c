"""The zoo table behind ``medscope models``: name, source, params, GMACs, sizes."""

from __future__ import annotations

import fnmatch
from typing import Any

import torch

from medscope.errors import MedscopeError
from medscope.models.profile import count_params, gmacs
from medscope.models.registry import create_model, default_size, list_models, min_size

# The architectures of the seed lectures and studies that timm provides as they were published.
CLASSIC_TIMM = (
    "resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
    "vgg16", "vgg16_bn", "inception_v3", "densenet121", "densenet161",
    "mobilenetv2_100", "mobilenetv3_large_100", "efficientnet_b0", "vit_small_patch16_224",
)


def zoo_names(pattern: str = "*") -> list[tuple[str, str]]:
    """(name, source) pairs: our own models and the classic timm ones; with a pattern other
    than ``*``, every matching timm name too."""
    own = [(n, "medscope") for n in list_models(pattern)]
    timm_names = [n for n in CLASSIC_TIMM if fnmatch.fnmatch(n, pattern)]
    if pattern not in ("", "*"):
        import timm

        timm_names += [n for n in timm.list_models(pattern) if n not in timm_names]
    taken = {n for n, _ in own}
    return own + [(n, "timm") for n in timm_names if n not in taken]


def zoo_table(img_size: int = 224, pattern: str = "*", num_classes: int = 1000,
              in_chans: int = 3) -> list[dict[str, Any]]:
    """One row per model: name, source ('medscope'|'timm'), params, gmacs (at ``img_size``;
    None when the model cannot take that size), default_size, min_size, note (why gmacs is
    missing, else '').

    Models are built on the meta device: no weights are allocated, so this is fast.
    """
    rows = []
    for name, source in zoo_names(pattern or "*"):
        row: dict[str, Any] = {"name": name, "source": source, "params": None, "gmacs": None,
                               "default_size": None, "min_size": None, "note": ""}
        try:
            row["default_size"], row["min_size"] = default_size(name), min_size(name)
            fits = img_size >= row["min_size"]
            with torch.device("meta"):
                try:
                    model = create_model(name, num_classes, in_chans=in_chans,
                                         img_size=img_size if fits else None)
                except MedscopeError as e:  # e.g. vit_seed at a size not divisible by 8
                    fits, row["note"] = False, str(e)
                    model = create_model(name, num_classes, in_chans=in_chans)
            row["params"] = count_params(model)
            if fits:
                row["gmacs"] = round(gmacs(model, img_size, in_chans), 3)
            elif not row["note"]:
                row["note"] = f"below min size {row['min_size']}"
        except Exception as e:  # noqa: BLE001 - an exotic timm name must not sink the table
            row["note"] = f"{type(e).__name__}: {str(e).splitlines()[0][:80]}"
        rows.append(row)
    return rows
