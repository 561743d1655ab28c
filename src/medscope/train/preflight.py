"""Everything about a run that can be checked without its data, checked before any scan or
decode: a mistake costs the user a second, not a decode of 9,000 images."""

from __future__ import annotations

import logging

import torch

from medscope.config import RunConfig
from medscope.errors import MedscopeError
from medscope.models import create_model, is_known_model
from medscope.models.transfer import apply_freeze, check_weights_source
from medscope.run import RunDir
from medscope.train.runtime import Runtime, select_runtime

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
    check_model(config)
    if config.model.pretrained:
        check_weights_source(config.model.pretrained)
    if config.train.unfreeze_at is not None and config.train.unfreeze_at > config.train.epochs:
        log.warning("train.unfreeze_at %d is after the last epoch (%d): the frozen layers never "
                    "train", config.train.unfreeze_at, config.train.epochs)
    return runtime


def check_model(config: RunConfig) -> None:
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
