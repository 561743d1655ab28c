"""The training loop, top-down: ``fit`` runs epochs, each epoch runs steps, and every epoch ends
with validation, a history row, the ``last`` checkpoint (resumable) and, when the monitored
metric improved, the ``best`` checkpoint."""

from __future__ import annotations

import contextlib
import logging
import math
import random
import time
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from medscope.config import TrainConfig
from medscope.data.transforms import Normalize
from medscope.models.transfer import param_groups, set_frozen_bn_eval, unfreeze
from medscope.run import RunDir, atomic_write_csv
from medscope.train.checkpoint import (
    load_checkpoint,
    model_state,
    optimizer_state,
    save_checkpoint,
)

log = logging.getLogger("medscope")

# Subnormal floats cost x86 up to ~100x a normal one, and tiny gradients and AdamW moments drift
# into them once a model is near-certain: a toy fp32 run that learned a single class ran >10x
# slower without flushing them to zero. On the demo the gain is small (bf16 second half 1.09x,
# fp32 12 epochs within noise; benchmarks/denormals.py) and accuracy is identical. Done at
# import because torch's OpenMP threads copy the setting only when they start (first parallel op).
torch.set_flush_denormal(True)

HISTORY_COLUMNS = ["epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy",
                   "val_f1_macro", "lr", "seconds"]


# ---------------------------------------------------------------- device and precision


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

    def autocast(self) -> contextlib.AbstractContextManager:
        if not self.bf16:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def to_input(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def prepare(self, model: nn.Module) -> nn.Module:
        model = model.to(self.device)
        return model.to(memory_format=torch.channels_last) if self.channels_last else model


def select_runtime(device: str = "auto", precision: str = "auto",
                   channels_last: bool | None = None) -> Runtime:
    dev = torch.device(("cuda" if torch.cuda.is_available() else "cpu")
                       if device == "auto" else device)
    if precision == "auto":
        bf16 = torch.cuda.is_bf16_supported() if dev.type == "cuda" else cpu_has_bf16()
    else:
        bf16 = precision == "bf16"
    return Runtime(dev, bf16, bf16 if channels_last is None else channels_last)


def seed_everything(seed: int, deterministic: bool = False) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)


# ---------------------------------------------------------------- optimisation


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """Groups by (backbone | head) x (decay | no decay): the head may learn faster
    (``head_lr_mult``), and biases and norm layers get no weight decay (the timm convention).
    Frozen parameters stay in their group: optimizers skip parameters without a gradient, so
    unfreezing later needs no new optimizer."""
    groups = param_groups(model, cfg.lr, cfg.head_lr_mult, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "sgd":
        opt = torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=True)
    else:
        opt = torch.optim.AdamW(groups, lr=cfg.lr)
    for group in opt.param_groups:
        group.setdefault("initial_lr", group["lr"])
    return opt


def lr_factor(step: int, total_steps: int, warmup_steps: int, schedule: str) -> float:
    """Linear warm-up, then cosine decay to zero (or constant): a pure function of the step,
    so a resumed run follows exactly the same schedule."""
    if warmup_steps and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "none":
        return 1.0
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def set_lr(optimizer: torch.optim.Optimizer, factor: float) -> float:
    for group in optimizer.param_groups:
        group["lr"] = group["initial_lr"] * factor
    return optimizer.param_groups[0]["lr"]


# ---------------------------------------------------------------- the loop


@dataclass
class FitState:
    epoch: int = 0  # epochs completed
    best_score: float | None = None
    best_epoch: int | None = None
    bad_epochs: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)


def fit(
    model: nn.Module,
    train_loader: DataLoader,
    val_loader: DataLoader | None,
    *,
    cfg: TrainConfig,
    normalize: Normalize,
    runtime: Runtime,
    run: RunDir,
    meta: dict[str, Any],
    loss_fn: nn.Module | None = None,
    sampler_generator: torch.Generator | None = None,
    multilabel: bool = False,
    resume: bool = False,
    progress: bool = True,
) -> FitState:
    """Train ``model``; checkpoints and ``history.csv`` go to ``run``. Returns the final state.

    ``multilabel``: targets are N x K 0/1 (``loss_fn`` then BCE), accuracy is exact match."""
    model = runtime.prepare(model)
    normalize = normalize.to(runtime.device)
    loss_fn = (loss_fn or nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)).to(
        runtime.device)  # class weights live on the device
    optimizer = build_optimizer(model, cfg)
    state = _resume(run, model, optimizer) if resume else FitState()
    steps_per_epoch = len(train_loader)
    total_steps = cfg.epochs * steps_per_epoch
    warmup_steps = cfg.warmup_epochs * steps_per_epoch
    higher_is_better = cfg.monitor != "val_loss"

    epochs = tqdm(range(state.epoch, cfg.epochs), desc="epochs", disable=not progress,
                  initial=state.epoch, total=cfg.epochs, unit="ep")
    for epoch in epochs:
        start = time.perf_counter()
        # Seeding per epoch makes shuffling and augmentation independent of resumption.
        torch.manual_seed(cfg.seed + epoch)
        if isinstance(train_loader.generator, torch.Generator):
            train_loader.generator.manual_seed(cfg.seed + epoch)
        if sampler_generator is not None:  # a weighted sampler draws from its own generator
            sampler_generator.manual_seed(cfg.seed + epoch)
        if cfg.unfreeze_at is not None and epoch + 1 >= cfg.unfreeze_at:
            unfreeze(model)  # second phase of two-phase fine-tuning
        model.train()
        set_frozen_bn_eval(model)  # frozen stages keep their running statistics
        train = _train_epoch(model, train_loader, optimizer, loss_fn, normalize, runtime,
                             lambda step, e=epoch: set_lr(optimizer, lr_factor(
                                 e * steps_per_epoch + step, total_steps, warmup_steps,
                                 cfg.scheduler)),
                             progress, desc=f"train {epoch + 1}/{cfg.epochs}",
                             multilabel=multilabel, clip_grad=cfg.clip_grad)
        val = (evaluate_loss(model, val_loader, loss_fn, normalize, runtime, multilabel)
               if val_loader is not None else {})
        row = {"epoch": epoch + 1, "train_loss": train["loss"],
               "train_accuracy": train["accuracy"], "val_loss": val.get("loss"),
               "val_accuracy": val.get("accuracy"), "val_f1_macro": val.get("f1_macro"),
               "lr": optimizer.param_groups[0]["lr"],
               "seconds": round(time.perf_counter() - start, 3)}
        state.history.append(row)
        state.epoch = epoch + 1
        score = row[cfg.monitor] if val else -row["train_loss"]
        improved = state.best_score is None or (
            score > state.best_score if higher_is_better or not val else score < state.best_score)
        if improved:
            state.best_score, state.best_epoch, state.bad_epochs = score, epoch + 1, 0
            save_checkpoint(run.best, model, {**meta, "epoch": epoch + 1,
                                              "val": dict(row)})
        else:
            state.bad_epochs += 1
        _save_last(run, model, optimizer, meta, state)
        _write_history(run, state.history)
        epochs.set_postfix(train_loss=f"{train['loss']:.3f}",
                           val_acc="-" if not val else f"{val['accuracy']:.3f}")
        _say(_epoch_line(row, improved), progress)
        if cfg.early_stopping and state.bad_epochs >= cfg.early_stopping:
            _say(f"early stopping: no improvement of {cfg.monitor} for "
                 f"{cfg.early_stopping} epochs (best epoch {state.best_epoch})", progress)
            break
    return state


def _train_epoch(model, loader, optimizer, loss_fn, normalize, runtime, set_step_lr, progress,
                 desc, multilabel: bool = False, clip_grad: float | None = None
                 ) -> dict[str, float]:
    total_loss, correct, seen = 0.0, 0, 0
    bar = tqdm(loader, desc=desc, disable=not progress, leave=False, unit="batch")
    for step, (images, labels) in enumerate(bar):
        set_step_lr(step)
        images = normalize(runtime.to_input(images))
        labels = labels.to(runtime.device, non_blocking=True)
        with runtime.autocast():
            logits = model(images)
        loss = loss_fn(logits.float(), labels)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss became {loss.item()} at step {step}; lower the lr")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if clip_grad:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
        optimizer.step()
        total_loss += loss.item() * len(labels)
        correct += n_correct(logits.detach(), labels, multilabel)
        seen += len(labels)
        bar.set_postfix(loss=f"{total_loss / seen:.3f}")
    return {"loss": total_loss / max(seen, 1), "accuracy": correct / max(seen, 1)}


def n_correct(logits: torch.Tensor, labels: torch.Tensor, multilabel: bool) -> int:
    """Multi-class: argmax hits (soft MixUp/CutMix targets count by their argmax);
    multi-label: rows whose every label is right at threshold 0.5."""
    if multilabel:
        return int(((logits > 0) == (labels > 0.5)).all(1).sum().item())
    hard = labels.argmax(1) if labels.ndim == 2 else labels
    return int((logits.argmax(1) == hard).sum().item())


@torch.no_grad()
def predict_logits(model: nn.Module, loader: DataLoader, normalize: Normalize,
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


def evaluate_loss(model, loader, loss_fn, normalize, runtime, multilabel: bool = False
                  ) -> dict[str, float]:
    from sklearn.metrics import f1_score

    logits, labels = predict_logits(model, loader, normalize, runtime)
    pred = (logits > 0).int() if multilabel else logits.argmax(1)
    truth = labels.int() if multilabel else labels
    return {"loss": float(loss_fn(logits.to(runtime.device), labels.to(runtime.device))),
            "accuracy": n_correct(logits, labels, multilabel) / max(len(labels), 1),
            "f1_macro": float(f1_score(truth, pred, average="macro", zero_division=0))}


# ---------------------------------------------------------------- persistence


def _save_last(run: RunDir, model, optimizer, meta, state: FitState) -> None:
    save_checkpoint(run.last, model, {**meta, "epoch": state.epoch, "fit_state": {
        "best_score": state.best_score, "best_epoch": state.best_epoch,
        "bad_epochs": state.bad_epochs, "history": state.history}}, optimizer=optimizer)


def _resume(run: RunDir, model: nn.Module, optimizer: torch.optim.Optimizer) -> FitState:
    tensors, meta = load_checkpoint(run.last)
    model.load_state_dict(model_state(tensors))
    optimizer.load_state_dict(optimizer_state(tensors, meta))
    fs = meta["fit_state"]
    return FitState(epoch=meta["epoch"], best_score=fs["best_score"],
                    best_epoch=fs["best_epoch"], bad_epochs=fs["bad_epochs"],
                    history=fs["history"])


def _write_history(run: RunDir, history: list[dict[str, Any]]) -> None:
    atomic_write_csv(run.history, HISTORY_COLUMNS,
                     ([_fmt(row.get(c)) for c in HISTORY_COLUMNS] for row in history))


def _fmt(value: Any) -> Any:
    if value is None:
        return ""
    return f"{value:.6g}" if isinstance(value, float) else value


def _say(line: str, progress: bool) -> None:
    # Above live progress bars a line must go through tqdm, or the bars garble it.
    if progress:
        tqdm.write(line)
    else:
        log.info(line)


def _epoch_line(row: dict[str, Any], improved: bool) -> str:
    val = ("" if row["val_loss"] is None else
           f"  val loss {row['val_loss']:.4f} acc {row['val_accuracy']:.4f} "
           f"f1 {row['val_f1_macro']:.4f}")
    mark = "  *best*" if improved else ""
    return (f"epoch {row['epoch']:3d}  train loss {row['train_loss']:.4f} "
            f"acc {row['train_accuracy']:.4f}{val}  lr {row['lr']:.2e}  "
            f"{row['seconds']:.1f}s{mark}")
