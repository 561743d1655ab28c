"""Everything about a run that can be checked without its data, checked before any scan or
decode: a mistake costs the user a second, not a decode of 9,000 images."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch

from medscope.config import PretrainRunConfig, RunConfig
from medscope.core.runtime import Runtime, select_runtime
from medscope.errors import MedscopeError, first_line
from medscope.models import create_model, is_known_model
from medscope.models.registry import check_min_size
from medscope.models.transfer import apply_freeze, check_weights_source
from medscope.run import RunDir

log = logging.getLogger("medscope")


def check_run_config(config: RunConfig, *, resume: bool = False) -> Runtime:
    """Raise ``MedscopeError`` for the first problem found; returns the runtime to train on."""
    if config.data.path is None:
        raise MedscopeError("no training data given: pass --data DIR (or data.path in the config)")
    if not config.data.path.exists():
        raise MedscopeError(f"{config.data.path}: data directory not found")
    for what, path in (("split file", config.data.split_file),
                       ("exclude file", config.data.exclude)):
        if path is not None and not path.is_file():
            raise MedscopeError(f"{path}: {what} not found")
    RunDir(config.out).check_can_start(resume=resume)
    runtime = select_runtime(config.train.device, config.train.precision,
                             config.train.channels_last)
    model = check_model(config)
    check_progressive(config, model)
    check_disk(config, sum(p.numel() for p in model.parameters()))
    if config.model.pretrained:
        check_weights_source(config.model.pretrained, config.model.name)
    if config.train.unfreeze_at is not None and config.train.unfreeze_at > config.train.epochs:
        log.warning("train.unfreeze_at %d is after the last epoch (%d): the frozen layers never "
                    "train", config.train.unfreeze_at, config.train.epochs)
    return runtime


def check_pretrain_config(config: PretrainRunConfig, *, resume: bool = False) -> Runtime:
    """``check_run_config`` for ``medscope pretrain``: its folders, run directory, model (one
    Linear classifier, which becomes the projection head), disk and settings; the runtime."""
    from medscope.models.heads import add_projection_head

    if not config.data.paths:
        raise MedscopeError("no images given: pass --data DIR (repeatable)")
    for folder in config.data.paths:
        if not folder.is_dir():
            raise MedscopeError(f"{folder}: not a folder (pretraining takes folders of images)")
    RunDir(config.out).check_can_start(resume=resume)
    runtime = select_runtime(config.train.device, config.train.precision,
                             config.train.channels_last)
    model = check_model(config)
    with torch.device("meta"):
        add_projection_head(model, config.pretrain.proj_dim, config.pretrain.proj_hidden)
    check_progressive(config, model)
    params = sum(p.numel() for p in model.parameters())
    out = _existing_ancestor(config.out)
    _check_writable(out, f"{config.out}: cannot write the run directory")
    _check_free(out, {"checkpoints": checkpoint_bytes(params, config.train.optimizer,
                                                      config.train.ema is not None)
                      + RUN_FILES_BYTES}, "another --out")
    if config.model.pretrained:
        check_weights_source(config.model.pretrained, config.model.name)
    for key, value, default in (("train.freeze", config.train.freeze, "none"),
                                ("train.unfreeze_at", config.train.unfreeze_at, None),
                                ("train.label_smoothing", config.train.label_smoothing, 0.0)):
        if value != default:
            raise MedscopeError(f"{key} {value}: a classifier's setting, not pretraining's")
    return runtime


def check_model(config: RunConfig | PretrainRunConfig) -> torch.nn.Module:
    """Build the model on the meta device (no memory, no weights) to check its name, kwargs,
    input size and freeze spec."""
    name = config.model.name
    if not is_known_model(name):
        raise MedscopeError(f"unknown model {name!r}; `medscope models` lists the names")
    try:
        with torch.device("meta"):
            # Two classes stand in for the real ones, which are known only after the scan.
            model = create_model(name, num_classes=2, in_chans=config.data.in_chans,
                                 img_size=config.data.img_size, **config.model.kwargs)
    except TypeError as exc:
        raise MedscopeError(f"model.kwargs {config.model.kwargs}: not accepted by {name!r} "
                            f"({exc})") from None
    apply_freeze(model, config.train.freeze)
    return model


def check_progressive(config: RunConfig | PretrainRunConfig, model: torch.nn.Module) -> None:
    """Progressive resizing starts below ``data.img_size`` with a model that takes that size
    (one forward on the meta device: a flatten-to-FC head or a fixed-size ViT refuses it)."""
    side, full = config.train.progressive_from, config.data.img_size
    if side is None:
        return
    if side >= full:
        raise MedscopeError(f"train.progressive_from {side} must be below data.img_size {full}")
    try:
        check_min_size(config.model.name, side)
    except MedscopeError as exc:
        raise MedscopeError(f"train.progressive_from {side}: {exc}") from None
    try:
        with torch.no_grad():
            model(torch.empty(2, config.data.in_chans, side, side, device="meta"))
    except Exception as exc:  # whatever the architecture raises for a size it cannot take
        reason = first_line(exc)
        raise MedscopeError(
            f"train.progressive_from {side}: {config.model.name} cannot take {side} px inputs "
            f"({reason}); progressive resizing needs a model with global pooling, such as "
            "resnet18 or efficientnet_b0") from None
    if config.train.compile:
        log.warning("train.compile with progressive resizing: the model is compiled again for "
                    "each new training side")


# Reports, plots, history and predictions of a run: a generous allowance beside checkpoints.
RUN_FILES_BYTES = 50 * 2**20


def checkpoint_bytes(params: int, optimizer: str, ema: bool = False) -> int:
    """Disk a run's checkpoints take at most: ``best`` (weights) and ``last`` (weights plus the
    optimizer's per-parameter state: AdamW 2 moments, SGD 1 momentum buffer; and the weight
    average with ``train.ema``), each with the previous pair kept while the next is written,
    float32."""
    moments = 2 if optimizer == "adamw" else 1
    return 2 * (params * 4 + params * 4 * (1 + moments + int(ema)))


def cache_bytes(config: RunConfig) -> int:
    """Upper estimate of the decoded-image cache: one uint8 S x S x C array per file found
    under the data folder (a CSV: per line). 0 when the cache is off or the data is an npz."""
    path = config.data.path
    if not config.data.cache or path is None:
        return 0
    per_image = config.data.img_size ** 2 * config.data.in_chans
    if path.is_dir():
        return per_image * sum(len(files) for _, _, files in os.walk(path))
    if path.suffix.lower() == ".csv":
        with open(path, "rb") as fh:
            return per_image * sum(1 for _ in fh)
    return 0


def check_disk(config: RunConfig, params: int) -> None:
    """The run directory can be written and its disk holds the checkpoints (and, when it is
    the same disk, the image cache), before anything is decoded or trained."""
    from medscope.data.cache import default_cache_dir

    out = _existing_ancestor(config.out)
    _check_writable(out, f"{config.out}: cannot write the run directory")
    need = {"checkpoints": checkpoint_bytes(params, config.train.optimizer,
                                                    config.train.ema is not None) + RUN_FILES_BYTES}
    cache_dir = _existing_ancestor(Path(config.data.cache_dir or default_cache_dir()))
    cached = cache_bytes(config)
    if cached and _same_disk(cache_dir, out):
        need["image cache"] = cached
    elif cached:
        _check_free(cache_dir, {"image cache": cached}, "--cache-dir elsewhere or --no-cache")
    _check_free(out, need, "another --out" + (" or --no-cache" if "image cache" in need else ""))


def _check_free(where: Path, need: dict[str, int], hint: str) -> None:
    free = shutil.disk_usage(where).free
    if free < sum(need.values()):
        what = " + ".join(f"{k} ~{_mb(v)}" for k, v in need.items())
        raise MedscopeError(f"{where}: only {_mb(free)} free on this disk, the run needs {what}; "
                            f"free some space or choose {hint}")


def _check_writable(directory: Path, message: str) -> None:
    # A real file, not os.access: that passes read-only mounts' bits for root and misses ACLs.
    try:
        fd, probe = tempfile.mkstemp(dir=directory, prefix=".medscope-write-test-")
    except OSError as exc:
        raise MedscopeError(f"{message} ({directory}: {exc.strerror or exc})") from None
    os.close(fd)
    os.unlink(probe)


def _existing_ancestor(path: Path) -> Path:
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _same_disk(a: Path, b: Path) -> bool:
    return a.stat().st_dev == b.stat().st_dev


def _mb(n: int) -> str:
    return f"{n / 2**30:.1f} GB" if n >= 2**30 else f"{n / 2**20:.0f} MB"
