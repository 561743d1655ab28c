"""Checkpoints as a file pair: ``NAME.safetensors`` (tensors) + ``NAME.json`` (metadata).

The metadata holds everything a later consumer needs to rebuild the model and preprocess an
image exactly as in training (architecture, classes, size, channels, normalisation), so predict,
explain, export and serve read it and never re-derive it. No pickle is ever loaded.
"""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from medscope.errors import MedscopeError
from medscope.run import atomic_write_bytes, atomic_write_json

MODEL_PREFIX = "model."
OPTIM_PREFIX = "optim."
FORMAT = "medscope-checkpoint/1"


class CheckpointMeta(BaseModel):
    """The JSON half of a checkpoint: everything needed to rebuild the model and preprocess an
    image as in training. One schema, read by ``read_meta`` and written by ``save_checkpoint``;
    keys written by a newer medscope are kept (``extra="allow"``) so old code can still load."""

    model_config = ConfigDict(extra="allow", protected_namespaces=())

    format: str = FORMAT
    model: str
    model_kwargs: dict[str, Any] = Field(default_factory=dict)
    classes: list[str]
    multilabel: bool = False  # sigmoid per class instead of softmax
    img_size: int
    in_chans: int
    resize: str = "squash"  # whole image resized to a square, no crop
    mean: list[float]
    std: list[float]
    pretrained: str | None = None
    temperature: float = Field(1.0, gt=0)  # probabilities = softmax(logits / T)
    thresholds: list[float] | None = None  # multi-label decision thresholds, tuned on val
    # Refer-to-expert: the confidence below which an image goes to a person, fitted on the
    # validation split to reach ``target_accuracy``; null = sought but unreachable, absent =
    # never fitted (an older checkpoint).
    target_accuracy: float | None = None
    selective_threshold: float | None = None
    versions: dict[str, str] = Field(default_factory=dict)
    # Training state: which epoch these weights are from and, in ``last``, how to resume.
    epoch: int | None = None
    val: dict[str, Any] | None = None
    fit_state: dict[str, Any] | None = None
    optimizer_param_groups: list[dict[str, Any]] | None = None

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def selective_fitted(self) -> bool:
        return "selective_threshold" in self.model_fields_set

    def to_json(self) -> dict[str, Any]:
        out = self.model_dump(mode="json", exclude_none=True)
        if self.selective_fitted:
            out["selective_threshold"] = self.selective_threshold
        return {**out, "num_classes": self.num_classes}


def library_versions() -> dict[str, str]:
    import timm

    import medscope

    return {"medscope": medscope.__version__, "torch": torch.__version__,
            "timm": timm.__version__, "python": platform.python_version()}


def save_checkpoint(
    stem: Path,
    model: nn.Module,
    meta: CheckpointMeta,
    optimizer: torch.optim.Optimizer | None = None,
) -> None:
    """Write ``stem.safetensors`` then ``stem.json`` (the JSON last: its presence means complete).

    With ``optimizer``, its state goes in too, so training can resume exactly.
    """
    tensors = {MODEL_PREFIX + k: v.detach().cpu().contiguous()
               for k, v in _unwrap(model).state_dict().items()}
    meta_json = meta.to_json()
    if optimizer is not None:
        state = optimizer.state_dict()
        for idx, pstate in state["state"].items():
            for key, value in pstate.items():
                if torch.is_tensor(value):
                    tensors[f"{OPTIM_PREFIX}{idx}.{key}"] = value.detach().cpu().contiguous()
        meta_json["optimizer_param_groups"] = state["param_groups"]
    # safetensors refuses tensors that share memory; tied weights are cloned apart here.
    tensors = {k: v.clone() for k, v in tensors.items()}
    stem = Path(stem)
    atomic_write_bytes(stem.with_suffix(".safetensors"), save(tensors))
    atomic_write_json(stem.with_suffix(".json"), meta_json)


def read_meta(stem: Path) -> CheckpointMeta:
    """The validated metadata of a checkpoint; one line naming the file for anything wrong."""
    path = _stem(stem).with_suffix(".json")
    if not path.is_file():
        raise MedscopeError(f"{path}: checkpoint file not found")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise MedscopeError(f"{path}: not valid JSON ({exc.msg})") from None
    if not isinstance(raw, dict):
        raise MedscopeError(f"{path}: checkpoint metadata must be a JSON object")
    try:
        return CheckpointMeta.model_validate(raw)
    except ValidationError as exc:
        missing = [".".join(map(str, e["loc"])) for e in exc.errors() if e["type"] == "missing"]
        if missing:
            raise MedscopeError(f"{path}: checkpoint metadata lacks {', '.join(missing)} "
                                "(not a medscope checkpoint, or damaged)") from None
        err = exc.errors()[0]
        raise MedscopeError(f"{path}: bad checkpoint metadata: "
                            f"{'.'.join(map(str, err['loc']))}: {err['msg']}") from None


def write_meta(stem: Path, meta: CheckpointMeta) -> None:
    """Rewrite only the JSON half (e.g. a temperature fitted after training)."""
    atomic_write_json(_stem(stem).with_suffix(".json"), meta.to_json())


def load_checkpoint(stem: Path) -> tuple[dict[str, torch.Tensor], CheckpointMeta]:
    """(all tensors, metadata) of a checkpoint pair; ``stem`` may name either file or neither."""
    stem = _stem(stem)
    weights = stem.with_suffix(".safetensors")
    if not weights.is_file():
        raise MedscopeError(f"{weights}: checkpoint file not found")
    meta = read_meta(stem)
    try:
        tensors = load_file(str(weights))
    except (SafetensorError, OSError) as exc:
        raise MedscopeError(f"{weights}: not a valid safetensors file ({exc})") from None
    return tensors, meta


def _stem(stem: Path | str) -> Path:
    stem = Path(stem)
    return stem.with_suffix("") if stem.suffix in (".safetensors", ".json") else stem


def model_state(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k[len(MODEL_PREFIX):]: v for k, v in tensors.items() if k.startswith(MODEL_PREFIX)}


def optimizer_state(tensors: dict[str, torch.Tensor], meta: CheckpointMeta) -> dict[str, Any]:
    """Rebuild ``optimizer.state_dict()`` from the flattened tensors and the JSON param groups."""
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith(OPTIM_PREFIX):
            idx, name = key[len(OPTIM_PREFIX):].split(".", 1)
            state.setdefault(int(idx), {})[name] = value
    return {"state": state, "param_groups": meta.optimizer_param_groups}


def _unwrap(model: nn.Module) -> nn.Module:
    # DistributedDataParallel / torch.compile wrap the real module.
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)
