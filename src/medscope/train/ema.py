"""Exponential moving average of the weights (``train.ema``): timm's ``ModelEmaV3`` keeps the
average of every parameter and buffer; medscope validates it, saves it as ``best`` and
evaluates it, and keeps it in the resumable ``last`` so that a resumed run averages on as if
it had never stopped."""

from __future__ import annotations

import torch
import torch.nn as nn
from timm.utils.model_ema import ModelEmaV3

from medscope.config import TrainConfig
from medscope.core.runtime import unwrap

EMA_PREFIX = "ema."  # beside the RNG states in a checkpoint's ``extra.`` tensors
# timm's warm-up power for runs of thousands (not millions) of steps: the decay reaches 0.99
# after ~460 steps and 0.999 after ~10,000, so early averages do not hold the random init.
WARMUP_POWER = 3 / 4


def make_ema(model: nn.Module, cfg: TrainConfig) -> ModelEmaV3 | None:
    """The averaged copy of ``model`` (unwrapped from DDP/compile) when ``cfg.ema`` is set."""
    if cfg.ema is None:
        return None
    # fp32 whatever the training precision: bf16 cannot hold (1 - decay) * delta.
    return ModelEmaV3(unwrap(model), decay=cfg.ema, use_warmup=cfg.ema_warmup,
                      warmup_power=WARMUP_POWER, dtype=torch.float32)


def update_ema(ema: ModelEmaV3 | None, model: nn.Module, step: int) -> None:
    """Average in the weights after optimizer step ``step`` (counted from 1 over the run; the
    warm-up decay is a function of it, so resuming changes nothing)."""
    if ema is not None:
        ema.update(unwrap(model), step=step)


def ema_tensors(ema: ModelEmaV3 | None) -> dict[str, torch.Tensor]:
    """The average's state as checkpoint ``extra`` tensors (empty without EMA)."""
    if ema is None:
        return {}
    return {EMA_PREFIX + k: v for k, v in ema.module.state_dict().items()}


def split_ema(extra: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor],
                                                        dict[str, torch.Tensor]]:
    """A checkpoint's ``extra`` tensors -> (RNG states, EMA state with its prefix removed)."""
    ema = {k[len(EMA_PREFIX):]: v for k, v in extra.items() if k.startswith(EMA_PREFIX)}
    rest = {k: v for k, v in extra.items() if not k.startswith(EMA_PREFIX)}
    return rest, ema


def load_ema(ema: ModelEmaV3 | None, state: dict[str, torch.Tensor] | None) -> None:
    """Put a resumed run's average back (None/empty: the average starts from the weights, as
    when a run without EMA is resumed with it)."""
    if ema is not None and state:
        ema.module.load_state_dict(state)
