"""Checkpoints as a file pair: ``NAME.safetensors`` (tensors) + ``NAME.json`` (metadata).

Crash safety: both halves carry the same random ``pair`` id, both are written to temporary files
and fsynced before either is renamed into place, and the pair being replaced is kept as
``NAME-previous`` until the new one is complete. Whatever instant a crash (or ``kill -9``, or a
full disk) strikes, one of the two is a matching, complete pair; ``load_checkpoint`` refuses a
mismatched or damaged one, naming it and the previous one to fall back to.

The metadata holds everything a later consumer needs to rebuild the model and preprocess an
image exactly as in training (architecture, classes, size, channels, normalisation), so predict,
explain, export and serve read it and never re-derive it. No pickle is ever loaded.
"""

from __future__ import annotations

import json
import os
import platform
import uuid
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from medscope.core.runtime import unwrap
from medscope.errors import MedscopeError
from medscope.run import atomic_write_json, fsync_dir, write_synced_temp

MODEL_PREFIX = "model."
OPTIM_PREFIX = "optim."
EXTRA_PREFIX = "extra."  # training state that is not model or optimizer (RNG states)
PAIR_KEY = "medscope_pair"  # the safetensors header entry that must match the JSON's ``pair``
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
    # What one model input covers in the source, in source pixels (``data.scale``): tile_px,
    # stride_px, source_px, mpp, origin. Read by the tiling of large images; None for array data
    # and checkpoints older than it.
    scale: dict[str, Any] | None = None
    mean: list[float]
    std: list[float]
    # Stain normalisation before ``Normalize`` (``data.stain_norm``): ``StainNormalize``'s JSON
    # state (method, L*a*b* mean and std of the training images); None = none.
    stain_norm: dict[str, Any] | None = None
    pretrained: str | None = None
    temperature: float = Field(1.0, gt=0)  # probabilities = softmax(logits / T)
    thresholds: list[float] | None = None  # multi-label decision thresholds, tuned on val
    # "Unlike the training images": the fitted out-of-distribution check (evaluate.ood), plain
    # JSON; absent in checkpoints older than it.
    ood: dict[str, Any] | None = None
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
    pair: str | None = None  # the id shared with the .safetensors half (absent before 0.x)

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
    extra: dict[str, torch.Tensor] | None = None,
) -> None:
    """Write the pair ``stem.safetensors`` + ``stem.json`` so that a crash at any instant leaves
    a complete pair: the new one, or the old one (kept as ``stem-previous``).

    With ``optimizer``, its state goes in too, so training can resume exactly; ``extra``
    tensors (RNG states) are stored under ``extra.``.
    """
    tensors = {MODEL_PREFIX + k: v.detach().cpu().contiguous()
               for k, v in unwrap(model).state_dict().items()}
    pair = uuid.uuid4().hex
    meta_json = {**meta.to_json(), "pair": pair}
    if optimizer is not None:
        state = optimizer.state_dict()
        for idx, pstate in state["state"].items():
            for key, value in pstate.items():
                if torch.is_tensor(value):
                    tensors[f"{OPTIM_PREFIX}{idx}.{key}"] = value.detach().cpu().contiguous()
        meta_json["optimizer_param_groups"] = state["param_groups"]
    tensors.update({EXTRA_PREFIX + k: v.detach().cpu().contiguous()
                    for k, v in (extra or {}).items()})
    # safetensors refuses tensors that share memory; tied weights are cloned apart here.
    tensors = {k: v.clone() for k, v in tensors.items()}
    stem = Path(stem)
    weights, meta_path = stem.with_suffix(".safetensors"), stem.with_suffix(".json")
    tmp_weights = write_synced_temp(weights, save(tensors, metadata={PAIR_KEY: pair}))
    try:
        tmp_meta = write_synced_temp(meta_path, (json.dumps(meta_json, indent=2) + "\n").encode())
    except BaseException:
        tmp_weights.unlink(missing_ok=True)
        raise
    keep_previous(stem)
    # From here to the second rename the pair does not match (a crash leaves ``stem`` refused
    # and ``stem-previous`` good); after it, the new pair is complete.
    os.replace(tmp_weights, weights)
    os.replace(tmp_meta, meta_path)
    fsync_dir(stem.parent)


def previous_stem(stem: Path) -> Path:
    """Where the pair replaced by the latest save of ``stem`` is kept."""
    stem = _stem(stem)
    return stem.with_name(stem.name + "-previous")


def keep_previous(stem: Path) -> None:
    """Hard-link (copy where links are refused) the current complete pair to ``stem-previous``;
    a damaged current pair is not kept over a good previous one."""
    stem = _stem(stem)
    if checkpoint_problem(stem) is not None:
        return
    prev = previous_stem(stem)
    for suffix in (".safetensors", ".json"):
        src, dst = stem.with_suffix(suffix), prev.with_suffix(suffix)
        tmp = dst.with_name(f".{dst.name}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            os.link(src, tmp)
        except OSError:
            import shutil

            shutil.copyfile(src, tmp)
        os.replace(tmp, dst)


def checkpoint_problem(stem: Path) -> str | None:
    """Why the pair at ``stem`` cannot be used (None when it is complete and matching); reads
    only the JSON and the safetensors header."""
    try:
        _check_pair(_stem(stem))
    except MedscopeError as exc:
        return str(exc)
    return None


def _check_pair(stem: Path) -> CheckpointMeta:
    weights = stem.with_suffix(".safetensors")
    if not weights.is_file():
        raise MedscopeError(f"{weights}: checkpoint file not found")
    meta = read_meta(stem)
    header = safetensors_metadata(weights)
    if meta.pair is not None and header.get(PAIR_KEY) != meta.pair:
        raise MedscopeError(f"{weights}: does not belong to {stem.with_suffix('.json').name} "
                            "(a save was interrupted between the two files)")
    return meta


def safetensors_metadata(path: Path) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors header; a damaged header is one line naming it."""
    try:
        with open(path, "rb") as fh:
            size = int.from_bytes(fh.read(8), "little")
            if not 2 <= size <= 100 * 2**20:
                raise ValueError(f"header length {size}")
            header = json.loads(fh.read(size))
        if not isinstance(header, dict):
            raise ValueError("header is not a JSON object")
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise MedscopeError(f"{path}: not a valid safetensors file (damaged or truncated: "
                            f"{exc})") from None
    return dict(header.get("__metadata__") or {})


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
    """(all tensors, metadata) of a checkpoint pair; ``stem`` may name either file or neither.
    A damaged or mismatched pair is one line naming it and the previous good pair, if kept."""
    stem = _stem(stem)
    try:
        meta = _check_pair(stem)
        weights = stem.with_suffix(".safetensors")
        try:
            tensors = load_file(str(weights))
        except (SafetensorError, OSError, ValueError) as exc:
            raise MedscopeError(f"{weights}: not a valid safetensors file (damaged or truncated:"
                                f" {exc})") from None
    except MedscopeError as exc:
        prev = previous_stem(stem)
        if prev.with_suffix(".json").is_file() and checkpoint_problem(prev) is None:
            raise MedscopeError(f"{exc}; the previous good checkpoint is kept as "
                                f"{prev.with_suffix('.safetensors')}") from None
        raise
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


def restore_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor],
                      meta: CheckpointMeta) -> None:
    """Load the optimizer state of a checkpoint, each per-parameter tensor back in its
    parameter's memory layout: the file holds them contiguous, and torch's fused optimizers
    read state and parameter as flat memory, so a channels_last weight beside a contiguous
    moment would pair the wrong elements (a resumed run would drift)."""
    optimizer.load_state_dict(optimizer_state(tensors, meta))
    for group in optimizer.param_groups:
        for param in group["params"]:
            state = optimizer.state.get(param, {})
            for key, value in state.items():
                if (torch.is_tensor(value) and value.shape == param.shape
                        and value.stride() != param.stride()):
                    state[key] = torch.empty_like(param, dtype=value.dtype).copy_(value)


def extra_state(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k[len(EXTRA_PREFIX):]: v for k, v in tensors.items() if k.startswith(EXTRA_PREFIX)}
