"""Checkpoints as a file pair: ``NAME.safetensors`` (tensors) + ``NAME.json`` (metadata).

The metadata holds everything a later consumer needs to rebuild the model and preprocess an
image exactly as in training (architecture, classes, size, channels, normalisation), so predict,
explain, export and serve read it and never re-derive it. No pickle is ever loaded.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from medscope.errors import MedscopeError
from medscope.run import atomic_write_bytes, atomic_write_json

MODEL_PREFIX = "model."
OPTIM_PREFIX = "optim."


def save_checkpoint(
    stem: Path,
    model: nn.Module,
    meta: dict[str, Any],
    optimizer: torch.optim.Optimizer | None = None,
) -> None:
    """Write ``stem.safetensors`` then ``stem.json`` (the JSON last: its presence means complete).

    With ``optimizer``, its state goes in too, so training can resume exactly.
    """
    tensors = {MODEL_PREFIX + k: v.detach().cpu().contiguous()
               for k, v in _unwrap(model).state_dict().items()}
    meta = dict(meta)
    if optimizer is not None:
        state = optimizer.state_dict()
        for idx, pstate in state["state"].items():
            for key, value in pstate.items():
                if torch.is_tensor(value):
                    tensors[f"{OPTIM_PREFIX}{idx}.{key}"] = value.detach().cpu().contiguous()
        meta["optimizer_param_groups"] = state["param_groups"]
    # safetensors refuses tensors that share memory; tied weights are cloned apart here.
    tensors = {k: v.clone() for k, v in tensors.items()}
    stem = Path(stem)
    atomic_write_bytes(stem.with_suffix(".safetensors"), save(tensors))
    atomic_write_json(stem.with_suffix(".json"), meta)


def load_checkpoint(stem: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(all tensors, metadata) of a checkpoint pair; ``stem`` may name either file or neither."""
    stem = Path(stem)
    if stem.suffix in (".safetensors", ".json"):
        stem = stem.with_suffix("")
    weights, meta_path = stem.with_suffix(".safetensors"), stem.with_suffix(".json")
    for path in (weights, meta_path):
        if not path.is_file():
            raise MedscopeError(f"{path}: checkpoint file not found")
    try:
        tensors = load_file(str(weights))
    except (SafetensorError, OSError) as exc:
        raise MedscopeError(f"{weights}: not a valid safetensors file ({exc})") from None
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as exc:
        raise MedscopeError(f"{meta_path}: not valid JSON ({exc.msg})") from None
    return tensors, meta


def model_state(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k[len(MODEL_PREFIX):]: v for k, v in tensors.items() if k.startswith(MODEL_PREFIX)}


def optimizer_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    """Rebuild ``optimizer.state_dict()`` from the flattened tensors and the JSON param groups."""
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith(OPTIM_PREFIX):
            idx, name = key[len(OPTIM_PREFIX):].split(".", 1)
            state.setdefault(int(idx), {})[name] = value
    return {"state": state, "param_groups": meta["optimizer_param_groups"]}


def _unwrap(model: nn.Module) -> nn.Module:
    # DistributedDataParallel / torch.compile wrap the real module.
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)
