"""Model size and cost: parameter counts and multiply-accumulates.

MACs come from PyTorch's built-in ``FlopCounterMode`` (FLOPs / 2). Like the published figures
it counts convolutions, matmuls and attention, not BN/activations/pooling. It also runs on the
``meta`` device, so the cost of VGG-16 can be measured without allocating its 138M weights.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (all of them, or only those with ``requires_grad``)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def gmacs(model: nn.Module, img_size: int, in_chans: int = 3) -> float:
    """Giga multiply-accumulates of one forward pass on a single ``img_size``² image."""
    param = next(model.parameters())
    x = torch.zeros(1, in_chans, img_size, img_size, device=param.device, dtype=param.dtype)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        model.train(was_training)
    return counter.get_total_flops() / 2 / 1e9


def state_dict_mb(model: nn.Module) -> float:
    """Size of the weights file (parameters + buffers) in MB, as safetensors would store it."""
    return sum(t.numel() * t.element_size() for t in model.state_dict().values()) / 1e6
