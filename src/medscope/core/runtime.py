"""Device, precision and inference over a loader: what training and inference both need.

Nothing here changes process-wide state at import, so inference code (predict, explain, serve)
can import it without carrying training side effects."""

from __future__ import annotations

import contextlib
import random
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader

from medscope.errors import MedscopeError


@cache
def cpu_has_bf16() -> bool:
    """AVX512-BF16 or AMX: bf16 autocast is then about 2x faster than fp32 on CPU."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    bf16: bool
    channels_last: bool
    fp16: bool = False  # CUDA only; training then scales the loss (torch.amp.GradScaler)

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.fp16:
            return torch.autocast(self.device.type, dtype=torch.float16)
        if not self.bf16:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    @property
    def pin_memory(self) -> bool:
        """Page-locked host batches let the copy to a GPU overlap compute (non_blocking)."""
        return self.device.type == "cuda"

    def grad_scaler(self) -> torch.amp.GradScaler:
        """fp16 gradients underflow without loss scaling; a disabled scaler passes through."""
        return torch.amp.GradScaler(self.device.type, enabled=self.fp16)

    def to_input(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def prepare(self, model: nn.Module) -> nn.Module:
        model = model.to(self.device)
        return model.to(memory_format=torch.channels_last) if self.channels_last else model

    def describe(self) -> str:
        amp = "fp16 autocast + grad scaler" if self.fp16 else "bf16 autocast" if self.bf16 \
            else "fp32"
        return (f"device {self.device}, {amp}"
                f"{', channels_last' if self.channels_last else ''}")


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` picks CUDA when present; anything else must name a device this machine has."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise MedscopeError(f"--device {device!r}: not a device name; use auto, cpu, cuda "
                            "or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise MedscopeError(f"--device {device}: this machine has no CUDA GPU "
                                "(use --device cpu or auto)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise MedscopeError(f"--device {device}: only {torch.cuda.device_count()} CUDA "
                                "device(s) here")
    elif dev.type not in ("cpu", "mps"):
        raise MedscopeError(f"--device {device}: unsupported; use auto, cpu, cuda or cuda:N")
    return dev


def select_runtime(device: str = "auto", precision: str = "auto",
                   channels_last: bool | None = None) -> Runtime:
    dev = resolve_device(device)
    if precision == "fp16":
        if dev.type != "cuda":
            # CPU fp16 autocast is slow and its gradients need scaling: refuse, do not degrade.
            raise MedscopeError(f"--precision fp16 needs a CUDA GPU (device here: {dev}); "
                                "use --precision bf16 or fp32")
        return Runtime(dev, False, True if channels_last is None else channels_last, fp16=True)
    if precision == "auto":
        bf16 = torch.cuda.is_bf16_supported() if dev.type == "cuda" else cpu_has_bf16()
    elif precision in ("bf16", "fp32"):
        bf16 = precision == "bf16"
    else:
        raise MedscopeError(f"--precision {precision!r}: use auto, fp32, bf16 or fp16")
    if channels_last is None:
        # oneDNN's convolutions and pooling run faster NHWC on CPU in fp32 too (AVX2 EPYC,
        # fp32: training 1.05-1.49x, inference 1.13-2.14x; benchmarks/layout_cpu.py).
        channels_last = bf16 or dev.type == "cpu"
    return Runtime(dev, bf16, channels_last)


def tune_backends(runtime: Runtime, deterministic: bool) -> None:
    """cuDNN autotuning pays off when input shapes are fixed, as in training (one image size,
    full batches); it picks algorithms nondeterministically, so not for deterministic runs.
    Process-wide: called when training starts, never at import."""
    if runtime.device.type == "cuda":
        torch.backends.cudnn.benchmark = not deterministic


def seed_everything(seed: int, deterministic: bool = False) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)


def epoch_seed(seed: int, epoch: int) -> int:
    """A seed per (run seed, epoch) pair. ``seed + epoch`` would make seed s epoch e repeat
    seed s+1 epoch e-1; hashing the pair through SeedSequence keeps runs independent."""
    return int(np.random.SeedSequence([seed % 2**32, epoch]).generate_state(1, np.uint64)[0]
               % 2**63)


@torch.no_grad()
def predict_logits(model: nn.Module, loader: DataLoader, normalize: nn.Module,
                   runtime: Runtime) -> tuple[torch.Tensor, torch.Tensor]:
    """(float32 logits, labels) over a whole loader, model in eval mode."""
    model.eval()
    outs, targets = [], []
    for images, labels in loader:
        with runtime.autocast():
            logits = model(normalize(runtime.to_input(images)))
        outs.append(logits.float().cpu())
        targets.append(labels)
    return torch.cat(outs), torch.cat(targets)


def unwrap(model: nn.Module) -> nn.Module:
    """The plain model inside DDP and/or ``torch.compile`` wrappers (what checkpoints hold)."""
    while True:
        inner = getattr(model, "_orig_mod", None) or getattr(model, "module", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner
