"""The training loop, top-down: ``fit`` runs epochs, each epoch runs steps, and every epoch ends
with validation, a history row and the ``on_epoch_end`` callbacks; ``RunWriter`` is the one
that writes a run directory's ``last`` checkpoint (resumable), ``best`` checkpoint and history."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from medscope.config import TrainConfig
from medscope.core.checkpoint import (
    CheckpointMeta,
    checkpoint_problem,
    extra_state,
    load_checkpoint,
    model_state,
    previous_stem,
    restore_optimizer,
    save_checkpoint,
)
from medscope.core.runtime import Runtime, epoch_seed, predict_logits, unwrap
from medscope.data.transforms import Normalize
from medscope.errors import MedscopeError
from medscope.models.transfer import param_groups, set_frozen_bn_eval, unfreeze
from medscope.run import RunDir, atomic_write_csv
from medscope.train.distributed import DistContext
from medscope.train.ema import ema_tensors, load_ema, make_ema, split_ema, update_ema
from medscope.train.resumable import (
    CheckpointClock,
    EpochPosition,
    StopRequest,
    TrainingInterrupted,
    capture_rng,
    restore_rng,
    stop_on_signals,
)

log = logging.getLogger("medscope")

# Second key of the augmentation generator's per-epoch seed (any constant other than a rank).
AUGMENT_STREAM = 0x617567

HISTORY_COLUMNS = ["epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy",
                   "val_f1_macro", "lr", "seconds"]


class TrainingDiverged(MedscopeError):
    """The loss became NaN or infinite; the checkpoints of earlier epochs are untouched."""


def flush_denormals() -> None:
    """Subnormal floats cost x86 up to ~100x a normal one, and tiny gradients and AdamW moments
    drift into them once a model is near-certain: a toy fp32 run that learned a single class ran
    >10x slower without flushing them to zero. On the demo the gain is small (bf16 second half
    1.09x, fp32 12 epochs within noise; benchmarks/denormals.py) and accuracy is identical.
    Process-wide, so called when training starts (before the model is built: torch's OpenMP
    threads copy the setting only when they start), never at import."""
    torch.set_flush_denormal(True)


# ---------------------------------------------------------------- optimisation


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """Groups by (backbone | head) x (decay | no decay): the head may learn faster
    (``head_lr_mult``), and biases and norm layers get no weight decay (the timm convention).
    Frozen parameters stay in their group: optimizers skip parameters without a gradient, so
    unfreezing later needs no new optimizer."""
    groups = param_groups(model, cfg.lr, cfg.head_lr_mult, weight_decay=cfg.weight_decay)
    fused = {"fused": True} if fused_optimizer_applies(model) else {}
    if cfg.optimizer == "sgd":
        opt = torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=True, **fused)
    elif cfg.optimizer == "adam":
        opt = torch.optim.Adam(groups, lr=cfg.lr, **fused)
    else:
        opt = torch.optim.AdamW(groups, lr=cfg.lr, **fused)
    for group in opt.param_groups:
        group.setdefault("initial_lr", group["lr"])
    return opt


def fused_optimizer_applies(model: nn.Module) -> bool:
    """torch's fused optimizer kernels (one pass over all parameters) run on CPU and CUDA
    float parameters: on CPU an AdamW step of resnet18 takes 8 ms instead of the 15-22 ms of
    the per-tensor loop torch picks there. (They need the state in each parameter's memory
    layout: ``restore_optimizer`` puts it back so on resume.)"""
    params = list(model.parameters())
    return bool(params) and all(p.is_floating_point() and p.device.type in ("cpu", "cuda")
                                for p in params)


def lr_factor(step: int, total_steps: int, warmup_steps: int, schedule: str) -> float:
    """The LR of ``step`` as a fraction of the peak: a pure function of the step, so a resumed
    run follows exactly the same schedule. cosine/none: linear warm-up, then cosine decay to
    zero (or constant); onecycle: ``one_cycle_factor``."""
    if schedule == "onecycle":
        return one_cycle_factor(step, total_steps, warmup_steps)
    if warmup_steps and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "none":
        return 1.0
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


# torch's OneCycleLR defaults (div_factor, final_div_factor) and fastai's pct_start.
ONE_CYCLE_DIV, ONE_CYCLE_FINAL_DIV, ONE_CYCLE_PCT = 25.0, 1e4, 0.25


def one_cycle_factor(step: int, total_steps: int, rise_steps: int) -> float:
    """Smith's one-cycle as ``torch.optim.lr_scheduler.OneCycleLR`` (cosine annealing) draws
    it: up from 1/25 of the peak over ``rise_steps`` (0: a quarter of the run), then down to
    1/25 x 1/10,000 of it at the last step."""
    low, end = 1 / ONE_CYCLE_DIV, 1 / (ONE_CYCLE_DIV * ONE_CYCLE_FINAL_DIV)
    peak_at = (rise_steps or ONE_CYCLE_PCT * total_steps) - 1
    last = total_steps - 1
    if step <= peak_at:
        start, stop, frac = low, 1.0, step / max(peak_at, 1)
    else:
        start, stop, frac = 1.0, end, (step - peak_at) / max(last - peak_at, 1)
    return stop + (start - stop) / 2 * (math.cos(math.pi * min(frac, 1.0)) + 1)


def set_lr(optimizer: torch.optim.Optimizer, factor: float) -> float:
    for group in optimizer.param_groups:
        group["lr"] = group["initial_lr"] * factor
    return optimizer.param_groups[0]["lr"]


# ---------------------------------------------------------------- the loop


@dataclass
class FitState:
    """What changes while training runs; a resumable ``last`` checkpoint keeps all of it."""

    epoch: int = 0  # epochs completed
    best_score: float | None = None
    best_epoch: int | None = None
    bad_epochs: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    stopped_early: bool = False  # a resumed run that stopped early does not train on
    grad_scaler: dict[str, Any] | None = None  # fp16 loss scale (plain numbers: JSON)
    position: EpochPosition | None = None  # set in a mid-epoch checkpoint
    rng: dict[str, torch.Tensor] | None = None  # every RNG's state when saved (tensors)
    ema_weights: dict[str, torch.Tensor] | None = None  # a resumed run's weight average
    ema: Any = None  # while fitting with train.ema: the average (timm ModelEmaV3), validated

    def validated(self, model: nn.Module) -> nn.Module:
        """The model that is validated and saved as ``best``: the weight average if any."""
        return self.ema.module if self.ema is not None else model

    def to_json(self) -> dict[str, Any]:
        return {"best_score": self.best_score, "best_epoch": self.best_epoch,
                "bad_epochs": self.bad_epochs, "history": self.history,
                "stopped_early": self.stopped_early, "grad_scaler": self.grad_scaler,
                "position": self.position.to_json() if self.position else None}


# Called after every epoch with (model, optimizer, state, history row, improved): where
# checkpoints and history are written. DDP runs it on rank 0 only; CV points it at a fold dir.
EpochEnd = Callable[[nn.Module, torch.optim.Optimizer, FitState, dict[str, Any], bool], None]
# Called mid-epoch (``--checkpoint-every``, SIGINT/SIGTERM) to write the resumable ``last``.
Checkpoint = Callable[[nn.Module, torch.optim.Optimizer, FitState], None]


# What augments a uint8 training batch on the device, drawing from the generator it is given.
Augment = Callable[[torch.Tensor, torch.Generator], torch.Tensor]
# How many of a training batch's outputs are right, for the history's train_accuracy:
# (model outputs, targets) -> count (classification: ``n_correct``).
Correct = Callable[[torch.Tensor, torch.Tensor], int]


@dataclass(frozen=True, eq=False)
class FitInputs:
    """What ``fit`` trains with; none of it changes while training runs (``FitState`` holds
    what does). ``model`` is already on ``runtime``'s device.

    ``loss_fn``: None for cross-entropy with ``cfg.label_smoothing``; ``optimizer``: None for
    ``build_optimizer(model, cfg)``; ``sampler_generator``: a weighted sampler's own generator
    (re-seeded every epoch and saved with the loader's).
    ``multilabel``: targets are N x K 0/1 (``loss_fn`` then BCE), accuracy is exact match.
    ``dist``: under torchrun, ``model`` is DDP-wrapped and ``val_loader`` holds this rank's
    shard; training metrics are averaged and validation logits gathered over the ranks.
    ``augment``: batched augmentation of the uint8 training batches on the device, drawing from
    a generator reseeded every epoch; ``mix``: MixUp/CutMix of the normalised batch after it.
    ``train_size``: the side training batches are resized to in each epoch (from 0; None: as
    loaded), for progressive resizing.
    ``views``: each training image is augmented this many times independently per step, the
    copies stacked batch after batch (2: the two views of a contrastive objective, image i's
    at rows i and N + i); ``correct``: what the train_accuracy column counts (None: argmax
    hits, or exact match for multi-label). Self-supervised pretraining passes both with its
    own ``loss_fn`` and no ``val_loader``; the loop is the same."""

    model: nn.Module
    train_loader: DataLoader
    val_loader: DataLoader | None
    cfg: TrainConfig
    normalize: Normalize
    runtime: Runtime
    loss_fn: nn.Module | None = None
    optimizer: torch.optim.Optimizer | None = None
    sampler_generator: torch.Generator | None = None
    augment: Augment | None = None
    mix: Callable | None = None
    train_size: Callable[[int], int | None] | None = None
    multilabel: bool = False
    dist: DistContext = field(default_factory=DistContext)
    progress: bool = True
    views: int = 1
    correct: Correct | None = None


@dataclass(frozen=True)
class Callbacks:
    """Where a fit's results go (``fit`` itself writes nothing): ``on_epoch_end`` after every
    epoch, ``on_checkpoint`` to write ``last`` mid-epoch (every ``cfg.checkpoint_every``
    minutes, and when SIGINT/SIGTERM asks training to stop, after the step in progress)."""

    on_epoch_end: Sequence[EpochEnd] = ()
    on_checkpoint: Checkpoint | None = None


def fit(inputs: FitInputs, state: FitState | None = None,
        callbacks: Callbacks = Callbacks()) -> FitState:
    """Train ``inputs.model`` from ``state`` (epoch 0 when None) to ``cfg.epochs``, telling
    ``callbacks``; returns the final state."""
    with stop_on_signals(enabled=not inputs.dist.enabled) as stop:
        return _Loop(_concrete(inputs), state or FitState(), callbacks, stop).run()


def _concrete(inputs: FitInputs) -> FitInputs:
    """``inputs`` with the defaults of loss, optimizer and accuracy count filled in and the
    normalisation and loss on the device (class weights live there)."""
    device = inputs.runtime.device
    loss_fn = inputs.loss_fn or nn.CrossEntropyLoss(label_smoothing=inputs.cfg.label_smoothing)
    multilabel = inputs.multilabel
    return replace(inputs, normalize=inputs.normalize.to(device), loss_fn=loss_fn.to(device),
                   optimizer=inputs.optimizer or build_optimizer(inputs.model, inputs.cfg),
                   correct=inputs.correct or (lambda out, y: n_correct(out, y, multilabel)))


class _Loop:
    """One ``fit`` under way: its inputs, the state it advances, and what it keeps while it
    runs (the fp16 loss scaler, the RNG generators, the checkpoint clock, the stop request)."""

    def __init__(self, inputs: FitInputs, state: FitState, callbacks: Callbacks,
                 stop: StopRequest) -> None:
        self.inputs, self.state, self.callbacks, self.stop = inputs, state, callbacks, stop
        self.scaler = inputs.runtime.grad_scaler()
        if state.grad_scaler and self.scaler.is_enabled():
            self.scaler.load_state_dict(state.grad_scaler)
        self.steps_per_epoch = len(inputs.train_loader)
        # Augmentation draws from its own stream, reseeded every epoch; a mid-epoch checkpoint
        # keeps its state with the loader's and sampler's.
        self.aug_generator = torch.Generator()
        self.generators = (inputs.train_loader.generator, inputs.sampler_generator,
                           self.aug_generator)
        self.clock = CheckpointClock(inputs.cfg.checkpoint_every
                                     if callbacks.on_checkpoint else None)
        self.resume_at, state.position = state.position, None
        if self.resume_at is None:
            self.restore_rng()  # epochs re-seed torch; Python and NumPy need this
        state.ema = make_ema(inputs.model, inputs.cfg)
        load_ema(state.ema, state.ema_weights)
        state.ema_weights = None

    def run(self) -> FitState:
        cfg, state = self.inputs.cfg, self.state
        last_epoch = state.epoch if state.stopped_early else cfg.epochs
        epochs = tqdm(range(state.epoch, last_epoch), desc="epochs",
                      disable=not self.inputs.progress, initial=state.epoch, total=cfg.epochs,
                      unit="ep")
        for epoch in epochs:
            start = time.perf_counter()
            self._begin_epoch(epoch)
            resume_at = (self.resume_at if self.resume_at and self.resume_at.epoch == epoch
                         else None)
            train = self.inputs.dist.mean(_train_epoch(self, epoch=epoch, resume_at=resume_at,
                                                       batch_ops=self._batch_ops(epoch)))
            val = self._validate()
            row, improved = self._record(epoch, train, val, start)
            self._end_epoch(row, improved)
            epochs.set_postfix(train_loss=f"{train['loss']:.3f}",
                               val_acc="-" if not val else f"{val['accuracy']:.3f}")
            if self._stops_after(row, improved):
                break
        return state

    def _begin_epoch(self, epoch: int) -> None:
        """Seeding per epoch makes shuffling and augmentation independent of resumption."""
        inputs, loader = self.inputs, self.inputs.train_loader
        seed = epoch_seed(inputs.cfg.seed, epoch)
        torch.manual_seed(seed)
        if isinstance(loader.generator, torch.Generator):
            loader.generator.manual_seed(seed)
        if inputs.sampler_generator is not None:  # a weighted sampler draws from its own
            inputs.sampler_generator.manual_seed(seed)
        if inputs.dist.rank:  # other augmentation draws on each rank; rank 0: the usual ones
            seed = epoch_seed(seed, inputs.dist.rank)
            torch.manual_seed(seed)
        # Augmentation draws from its own stream: the same whatever else uses torch's RNG.
        self.aug_generator.manual_seed(epoch_seed(seed, AUGMENT_STREAM))
        if hasattr(loader.sampler, "set_epoch"):  # distributed samplers shuffle by epoch
            loader.sampler.set_epoch(epoch)
        if inputs.cfg.unfreeze_at is not None and epoch + 1 >= inputs.cfg.unfreeze_at:
            unfreeze(unwrap(inputs.model))  # second phase of two-phase fine-tuning
        inputs.model.train()
        set_frozen_bn_eval(unwrap(inputs.model))  # frozen stages keep their running statistics

    def _batch_ops(self, epoch: int) -> BatchOps:
        inputs = self.inputs
        size = inputs.train_size(epoch) if inputs.train_size else None
        return BatchOps(inputs.augment, self.aug_generator, inputs.mix, size, inputs.views)

    def _validate(self) -> dict[str, float]:
        """The validated model's loss, accuracy and macro F1; {} without a validation split."""
        i = self.inputs
        if i.val_loader is None:
            return {}
        return evaluate_loss(self.state.validated(i.model), i.val_loader, i.loss_fn,
                             i.normalize, i.runtime, i.multilabel, i.dist)

    def _record(self, epoch: int, train: dict[str, float], val: dict[str, float],
                start: float) -> tuple[dict[str, Any], bool]:
        """The epoch's history row, and whether it becomes ``best``; the state advanced."""
        cfg, state = self.inputs.cfg, self.state
        state.grad_scaler = self._scaler_state()
        row = {"epoch": epoch + 1, "train_loss": train["loss"],
               "train_accuracy": train["accuracy"], "val_loss": val.get("loss"),
               "val_accuracy": val.get("accuracy"), "val_f1_macro": val.get("f1_macro"),
               "lr": self.inputs.optimizer.param_groups[0]["lr"],
               "seconds": round(time.perf_counter() - start, 3)}
        state.history.append(row)
        state.epoch = epoch + 1
        state.rng = capture_rng(self.generators)
        score = row[cfg.monitor] if val else -row["train_loss"]
        improved = _improves(score, row, state, cfg.monitor != "val_loss" or not val)
        if improved:
            state.best_score, state.best_epoch, state.bad_epochs = score, epoch + 1, 0
        else:
            state.bad_epochs += 1
        state.stopped_early = bool(cfg.early_stopping and state.bad_epochs >= cfg.early_stopping)
        return row, improved

    def _end_epoch(self, row: dict[str, Any], improved: bool) -> None:
        for callback in self.callbacks.on_epoch_end:
            callback(self.inputs.model, self.inputs.optimizer, self.state, row, improved)
        self.clock.reset()

    def _stops_after(self, row: dict[str, Any], improved: bool) -> bool:
        """Says how the epoch went; raises if a signal asked to stop; True to stop early."""
        cfg, state, progress = self.inputs.cfg, self.state, self.inputs.progress
        _say(_epoch_line(row, improved, cfg.epochs, state.history), progress)
        if self.stop:  # a signal during validation: this epoch's ``last`` is already written
            raise TrainingInterrupted(f"training stopped by {self.stop.describe()} after epoch "
                                      f"{row['epoch']}; its checkpoint is complete",
                                      self.stop.signum)
        if state.stopped_early:
            _say(f"early stopping: no improvement of {cfg.monitor} for "
                 f"{cfg.early_stopping} epochs (best epoch {state.best_epoch})", progress)
        return state.stopped_early

    # ---- what a training step calls back

    def set_step_lr(self, epoch: int, step: int) -> None:
        """The LR of ``step`` of ``epoch`` (a pure function of the global step)."""
        cfg, per_epoch = self.inputs.cfg, self.steps_per_epoch
        set_lr(self.inputs.optimizer, lr_factor(epoch * per_epoch + step, cfg.epochs * per_epoch,
                                                cfg.warmup_epochs * per_epoch, cfg.scheduler))

    def restore_rng(self) -> None:
        restore_rng(self.state.rng, self.generators)

    def after_update(self, epoch: int, step: int) -> None:
        """After a step that updated the weights: the weight average follows."""
        update_ema(self.state.ema, self.inputs.model, epoch * self.steps_per_epoch + step + 1)

    def after_step(self, pos: EpochPosition) -> None:
        """After each step: mid-epoch ``last`` when due or asked to stop, then stop if asked."""
        save, stop = self.callbacks.on_checkpoint, self.stop
        if not (self.clock.due() or stop) or save is None:
            if stop:
                raise TrainingInterrupted(_stopped(stop, pos, self.steps_per_epoch, False),
                                          stop.signum)
            return
        self.state.position, self.state.rng = pos, capture_rng(self.generators)
        self.state.grad_scaler = self._scaler_state()
        save(self.inputs.model, self.inputs.optimizer, self.state)
        self.state.position = None
        self.clock.reset()
        if stop:
            raise TrainingInterrupted(_stopped(stop, pos, self.steps_per_epoch, True),
                                      stop.signum)

    def _scaler_state(self) -> dict[str, Any] | None:
        return self.scaler.state_dict() if self.scaler.is_enabled() else None


def _improves(score: float, row: dict[str, Any], state: FitState,
              higher_is_better: bool) -> bool:
    """Whether this epoch becomes ``best``. A tie of validation accuracy or F1 goes to the lower
    validation loss: on a saturated validation split (1.000 for many epochs) the checkpoint
    would otherwise stay at the first epoch to reach it, however much training followed."""
    if state.best_score is None:
        return True
    if score != state.best_score:
        return score > state.best_score if higher_is_better else score < state.best_score
    best = next((r for r in state.history if r["epoch"] == state.best_epoch), None)
    return (higher_is_better and row.get("val_loss") is not None and best is not None
            and best.get("val_loss") is not None and row["val_loss"] < best["val_loss"])


@dataclass
class BatchOps:
    """What happens to a training batch between the loader and the model."""

    augment: Augment | None = None
    generator: torch.Generator | None = None
    mix: Callable | None = None
    size: int | None = None  # progressive resizing: this epoch's side
    views: int = 1  # independently augmented copies of each image (contrastive pretraining)

    def __call__(self, images: torch.Tensor, labels: torch.Tensor, normalize: Normalize,
                 runtime: Runtime) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 batch from the loader -> (model input, targets) on the device: repeated
        ``views`` times (each copy then draws its own augmentation), augmented on uint8 where
        it is, normalised to float, resized (progressive resizing; normalising is per-channel
        affine, so before or after is the same), then mixed (MixUp/CutMix blend floats)."""
        images = images.to(runtime.device, non_blocking=True)
        labels = labels.to(runtime.device, non_blocking=True)
        if self.views > 1:
            images = images.repeat(self.views, 1, 1, 1)
            labels = labels.repeat(self.views, *([1] * (labels.ndim - 1)))
        if self.augment is not None:
            images = self.augment(images, self.generator)
        images = normalize(runtime.to_input(images))
        if self.size is not None and images.shape[-2:] != (self.size, self.size):
            images = runtime.to_input(F.interpolate(images, size=(self.size, self.size),
                                                    mode="bilinear", antialias=True))
        if self.mix is not None:
            images, labels = self.mix(images, labels)
        return images, labels


def _train_epoch(loop: _Loop, *, epoch: int, resume_at: EpochPosition | None,
                 batch_ops: BatchOps) -> dict[str, float]:
    """One epoch's training loss and accuracy; from ``resume_at`` (a mid-epoch checkpoint's
    position) when given."""
    inputs = loop.inputs
    pos = resume_at or EpochPosition(epoch)
    bar = tqdm(inputs.train_loader, desc=f"train {epoch + 1}/{inputs.cfg.epochs}",
               disable=not inputs.progress, leave=False, unit="batch")
    batches = iter(bar)
    # Resuming mid-epoch: the batches already trained on are loaded and dropped, so the loader
    # and its workers stand exactly where they stood; then every RNG is put back as saved.
    for _ in range(pos.step):
        next(batches)
    if resume_at is not None:
        loop.restore_rng()
    for step, (images, labels) in enumerate(batches, start=pos.step):
        loop.set_step_lr(epoch, step)
        images, labels = batch_ops(images, labels, inputs.normalize, inputs.runtime)
        with inputs.runtime.autocast():
            logits = inputs.model(images)
        loss = inputs.loss_fn(logits.float(), labels)
        if _skips(loss, pos, step, inputs.cfg.nan_policy):
            loop.after_step(pos)
            continue
        _update(loop, loss)
        loop.after_update(epoch, step)
        pos.add(loss.item(), inputs.correct(logits.detach(), labels), len(labels))
        pos.step = step + 1
        bar.set_postfix(loss=f"{pos.metrics()['loss']:.3f}")
        loop.after_step(pos)
    if pos.skipped:
        log.warning("epoch %d: %d of %d batches skipped for a NaN/Inf loss", epoch + 1,
                    pos.skipped, len(inputs.train_loader))
    return pos.metrics()


def _skips(loss: torch.Tensor, pos: EpochPosition, step: int, nan_policy: str) -> bool:
    """True when a NaN/Inf loss's batch is skipped (``--nan-policy skip-batch``; ``pos``
    counts it); raises ``TrainingDiverged`` for one under the default policy."""
    if torch.isfinite(loss):
        return False
    epoch = pos.epoch
    if nan_policy == "skip-batch":
        pos.skipped, pos.step = pos.skipped + 1, step + 1
        log.warning("training loss %s in epoch %d, step %d: batch skipped (--nan-policy "
                    "skip-batch)", loss.item(), epoch + 1, step + 1)
        return True
    raise TrainingDiverged(
        f"training loss became {loss.item()} in epoch {epoch + 1}, step {step + 1}; "
        f"checkpoints of epochs 1-{epoch} are kept. Lower --lr or set --clip-grad, "
        "then continue with --resume" if epoch else
        f"training loss became {loss.item()} in epoch 1, step {step + 1}; lower --lr "
        "or set --clip-grad (e.g. 1.0) and start again")


def _update(loop: _Loop, loss: torch.Tensor) -> None:
    """Backward and one optimizer step, through the fp16 loss scaler (a no-op otherwise)."""
    optimizer, scaler, clip_grad = loop.inputs.optimizer, loop.scaler, loop.inputs.cfg.clip_grad
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if clip_grad:
        scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
        torch.nn.utils.clip_grad_norm_(loop.inputs.model.parameters(), clip_grad)
    scaler.step(optimizer)
    scaler.update()


def _stopped(stop: StopRequest, pos: EpochPosition, steps: int, saved: bool) -> str:
    where = f"in epoch {pos.epoch + 1} after step {pos.step} of {steps}"
    return (f"training stopped by {stop.describe()} {where}; "
            + ("the last checkpoint holds this step" if saved
               else "no mid-epoch checkpoint was written"))


def n_correct(logits: torch.Tensor, labels: torch.Tensor, multilabel: bool) -> int:
    """Multi-class: argmax hits (soft MixUp/CutMix targets count by their argmax);
    multi-label: rows whose every label is right at threshold 0.5."""
    if multilabel:
        return int(((logits > 0) == (labels > 0.5)).all(1).sum().item())
    hard = labels.argmax(1) if labels.ndim == 2 else labels
    return int((logits.argmax(1) == hard).sum().item())


def evaluate_loss(model, loader, loss_fn, normalize, runtime, multilabel: bool = False,
                  dist: DistContext | None = None) -> dict[str, float]:
    """Loss, accuracy and macro F1 over ``loader``; with ``dist``, over all ranks' shards."""
    from sklearn.metrics import f1_score

    logits, labels = gathered_logits(model, loader, normalize, runtime, dist or DistContext())
    pred = (logits > 0).int() if multilabel else logits.argmax(1)
    truth = labels.int() if multilabel else labels
    return {"loss": float(loss_fn(logits.to(runtime.device), labels.to(runtime.device))),
            "accuracy": n_correct(logits, labels, multilabel) / max(len(labels), 1),
            "f1_macro": float(f1_score(truth, pred, average="macro", zero_division=0))}


def gathered_logits(model: nn.Module, loader: DataLoader, normalize: Normalize,
                    runtime: Runtime, dist: DistContext) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, labels) of the whole split in dataset order when each rank's ``loader`` holds
    its ``dist.shard``; the plain model predicts (no DDP collectives: shards may differ by one
    batch), with rank 0's buffers so that every rank evaluates the model rank 0 saves."""
    net = unwrap(model)
    dist.sync_buffers(net)
    logits, labels = predict_logits(net, loader, normalize, runtime)
    return dist.gather_shards(logits), dist.gather_shards(labels)


# ---------------------------------------------------------------- persistence


class RunWriter:
    """The ``on_epoch_end`` callback of a run directory: ``best`` when the monitored metric
    improved, then ``last`` (resumable, with optimizer state) and ``history.csv``."""

    def __init__(self, run: RunDir, meta: CheckpointMeta) -> None:
        self.run, self.meta = run, meta

    def __call__(self, model: nn.Module, optimizer: torch.optim.Optimizer, state: FitState,
                 row: dict[str, Any], improved: bool) -> None:
        model = unwrap(model)  # checkpoints hold the plain model's parameter names
        if improved:
            save_checkpoint(self.run.best, state.validated(model),
                            self.meta.model_copy(update={"epoch": state.epoch, "val": dict(row)}))
        self.save_last(model, optimizer, state)
        atomic_write_csv(self.run.history, HISTORY_COLUMNS,
                         ([_fmt(r.get(c)) for c in HISTORY_COLUMNS] for r in state.history))

    def save_last(self, model: nn.Module, optimizer: torch.optim.Optimizer, state: FitState
                  ) -> None:
        """The resumable ``last``: weights, optimizer, loop state, RNG states and (mid-epoch)
        the position in the epoch, and the weight average with ``train.ema``. Also the
        ``on_checkpoint`` of ``fit``."""
        last = self.meta.model_copy(update={"epoch": state.epoch, "fit_state": state.to_json()})
        save_checkpoint(self.run.last, unwrap(model), last, optimizer=optimizer,
                        extra={**(state.rng or {}), **ema_tensors(state.ema)})


def resume_state(stem: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> FitState:
    """Load model and optimizer from a ``last`` checkpoint; the loop state to continue from.
    A damaged ``last`` (a crash while it was written) falls back to the previous one, saying
    so; when neither is usable, one line names both."""
    stem = _usable_last(Path(stem))
    tensors, meta = load_checkpoint(stem)
    model.load_state_dict(model_state(tensors))
    restore_optimizer(optimizer, tensors, meta)
    fs = meta.fit_state or {}
    rng, ema = split_ema(extra_state(tensors))
    return FitState(epoch=meta.epoch or 0, best_score=fs.get("best_score"),
                    best_epoch=fs.get("best_epoch"), bad_epochs=fs.get("bad_epochs", 0),
                    history=fs.get("history", []),
                    stopped_early=fs.get("stopped_early", False),
                    grad_scaler=fs.get("grad_scaler"),
                    position=EpochPosition.from_json(fs.get("position")),
                    rng=rng or None, ema_weights=ema or None)


def _usable_last(stem: Path) -> Path:
    problem = checkpoint_problem(stem)
    if problem is None:
        return stem
    prev = previous_stem(stem)
    if checkpoint_problem(prev) is not None:
        raise MedscopeError(f"{problem}; no previous good checkpoint to fall back to "
                            f"({prev.name}.*); delete {stem.parent} to start again")
    log.warning("%s; resuming from the previous checkpoint %s instead", problem,
                prev.with_suffix(".safetensors"))
    return prev


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


def _epoch_line(row: dict[str, Any], improved: bool, epochs: int,
                history: list[dict[str, Any]]) -> str:
    val = ("" if row["val_loss"] is None else
           f"  val loss {row['val_loss']:.4f} acc {row['val_accuracy']:.4f} "
           f"f1 {row['val_f1_macro']:.4f}")
    left = epochs - row["epoch"]
    # From the latest epochs: the first may include warming up, and a resumed run's earlier
    # epochs may have run on another machine.
    recent = [r["seconds"] for r in history[-3:]]
    eta = f"  eta {duration_text(left * sum(recent) / len(recent))}" if left > 0 else ""
    mark = "  *best*" if improved else ""
    return (f"epoch {row['epoch']:3d}/{epochs}  train loss {row['train_loss']:.4f} "
            f"acc {row['train_accuracy']:.4f}{val}  lr {row['lr']:.2e}  "
            f"{row['seconds']:.1f}s{eta}{mark}")


def duration_text(seconds: float) -> str:
    """12s, 4m05s, 2h07m: what a person reads at a glance."""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
