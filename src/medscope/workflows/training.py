"""One training run, top-down: check the config, prepare the data, build the model, ``fit``
with a ``RunWriter``, then calibrate, evaluate and report. Everything lands in the run
directory ``config.out``."""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from medscope.config import PretrainRunConfig, RunConfig, config_to_yaml, load_config
from medscope.core.checkpoint import CheckpointMeta, library_versions, previous_stem
from medscope.core.runtime import Runtime, seed_everything, tune_backends
from medscope.data.balance import class_counts, distribution_line
from medscope.data.prepare import SPLITS, PreparedData, given_splits_of, prepare_data
from medscope.data.scale import training_scale
from medscope.data.stain import fit_stain_reference, stain_normalised_pixels
from medscope.data.transforms import input_normalisation
from medscope.errors import MedscopeError
from medscope.models import create_model
from medscope.models.profile import count_params
from medscope.models.transfer import apply_freeze
from medscope.report.plots import plot_learning_curves
from medscope.run import RunDir, atomic_write_text, read_json
from medscope.tracking import Tracker, flatten, make_tracker
from medscope.train.distributed import DistContext, init_distributed
from medscope.train.engine import (
    Callbacks,
    EpochEnd,
    FitInputs,
    FitState,
    RunWriter,
    build_optimizer,
    fit,
    flush_denormals,
    resume_state,
)
from medscope.train.preflight import check_run_config
from medscope.train.resumable import TrainingInterrupted
from medscope.train.setup import (
    eval_loader,
    ignored_for_multilabel,
    loss_for,
    normalisation_for,
    progressive_sizes,
    train_batch_ops,
    train_loader,
    train_sampler_for,
)
from medscope.workflows.evaluation import calibrate_run, evaluate_run

log = logging.getLogger("medscope")

# What a resumed run may not change: its model, its images and its split.
FIXED_ON_RESUME = ("model.", "data.path", "data.format", "data.img_size", "data.in_chans",
                   "data.multilabel", "data.split_seed", "data.val_fraction",
                   "data.test_fraction", "data.split_file", "data.group_pattern", "data.resplit",
                   "data.stain_norm")


def train_run(config: RunConfig, *, resume: bool = False, progress: bool = True,
              callbacks: Sequence[EpochEnd] = ()) -> RunDir:
    """Train as ``config`` says. With ``resume``, continue the interrupted run in ``config.out``
    from its last checkpoint, on its saved split. ``callbacks`` are called on rank 0 after each
    epoch's checkpoint as ``(model, optimizer, state, row, is_best)``."""
    # --- distributed (torchrun): every rank checks, only rank 0 writes the run dir ---
    dist = init_distributed(config.train.device)  # joined once per process (cv: all folds)
    return _train_run(config, dist, resume=resume, progress=progress,
                      callbacks=callbacks)


def _train_run(config: RunConfig, dist: DistContext, *, resume: bool, progress: bool,
               callbacks: Sequence[EpochEnd] = ()) -> RunDir:
    runtime = dist.runtime_for(check_run_config(config, resume=resume))
    check_distributed(config, dist)
    tracker = make_tracker(config.track if dist.is_main else None)
    progress = progress and dist.is_main
    flush_denormals()
    run = RunDir(config.out)
    continuing = resume and run.has_partial_run()
    dist.barrier()  # every rank has checked the run dir before rank 0 creates it
    if not dist.is_main:
        logging.getLogger("medscope").setLevel(logging.WARNING)  # rank 0 tells the story
        _train(config, run, runtime, tracker, continuing=continuing, progress=False, dist=dist)
        dist.barrier()  # returns once rank 0 has evaluated: the run dir is complete everywhere
        return run
    # --- end distributed ---
    run.prepare_new(resume=resume)
    if resume and run.config.is_file():
        for change in _differences(load_config(run.config), config):
            if not change.startswith("data.split_file"):
                log.info("resuming with %s", change)
    if resume and not continuing:
        log.info("%s: no epoch finished before the interruption; starting from epoch 1",
                 run.root)
    if resume and run.splits.is_file():
        config = config.model_copy(update={"data": config.data.model_copy(
            update={"split_file": run.splits})})
    atomic_write_text(run.config, config_to_yaml(config))
    tracker.start(run.root, config.model_dump(mode="json"))
    try:
        _train(config, run, runtime, tracker, continuing=continuing, progress=progress,
               dist=dist, callbacks=callbacks)
    except TrainingInterrupted as exc:
        tracker.end("KILLED")
        raise TrainingInterrupted(f"{exc}; continue with: medscope train --resume {run.root}",
                                  exc.signum) from None
    except BaseException as exc:
        tracker.end("KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
        raise
    tracker.log_final(read_json(run.metrics), [run.report, run.metrics])
    tracker.end()
    dist.barrier()
    return run


def _train(config: RunConfig, run: RunDir, runtime: Runtime, tracker: Tracker, *,
           continuing: bool, progress: bool, dist: DistContext | None = None,
           callbacks: Sequence[EpochEnd] = ()) -> None:
    """Fit (every rank), then calibrate, evaluate and report (rank 0, on the whole splits).
    Keep the steps in this order: after seeding, the model's initial weights draw from
    torch's RNG, so a run repeats exactly only when the same draws come first."""
    dist = dist or DistContext()
    seed_everything(config.train.seed, config.train.deterministic)
    tune_backends(runtime, config.train.deterministic)
    data = _prepare_data_ranked(config, run, dist, progress)
    _log_data(data, config)
    model, meta = _built_model(config, data, runtime)
    optimizer = build_optimizer(model, config.train)
    state = resume_state(run.last, model, optimizer) if continuing else FitState()
    model = _compiled(dist.wrap_ddp(model), config.train.compile)
    inputs = _fit_inputs(config, data, model, optimizer, meta, runtime, dist, progress)
    state = fit(inputs, state, _run_callbacks(run, meta, tracker, dist, callbacks))
    if dist.is_main:
        _calibrate_evaluate_report(config, run, data, state, progress)


def _built_model(config: RunConfig, data: PreparedData, runtime: Runtime
                 ) -> tuple[nn.Module, CheckpointMeta]:
    """The model to train, frozen as ``train.freeze`` says and on ``runtime``'s device, and
    the metadata its checkpoints carry (classes, input size, normalisation)."""
    classes = data.source.classes
    model = create_model(config.model.name, num_classes=len(classes),
                         in_chans=config.data.in_chans, pretrained=config.model.pretrained,
                         img_size=config.data.img_size, **config.model.kwargs)
    freeze = apply_freeze(model, config.train.freeze)
    if config.train.freeze != "none":
        log.info("freeze %s: %d parameter tensors frozen, %d trainable%s", freeze.spec,
                 freeze.frozen, freeze.trainable,
                 f" (all trainable from epoch {config.train.unfreeze_at})"
                 if config.train.unfreeze_at else "")
    mean, std, stain_norm = _input_normalisation_of(config, model, data.pixels["train"])
    meta = CheckpointMeta(model=config.model.name, model_kwargs=config.model.kwargs,
                          classes=classes, multilabel=data.source.multilabel,
                          img_size=config.data.img_size, in_chans=config.data.in_chans,
                          mean=mean, std=std, stain_norm=stain_norm,
                          pretrained=config.model.pretrained,
                          scale=_scale_of(data, config.data.mpp), versions=library_versions())
    log.info("model %s: %.2fM parameters; %s", config.model.name, count_params(model) / 1e6,
             runtime.describe())
    return runtime.prepare(model), meta


def _input_normalisation_of(config: RunConfig, model: nn.Module, train_pixels: Any
                            ) -> tuple[list[float], list[float], dict[str, Any] | None]:
    """``(mean, std, stain_norm state or None)``: with ``data.stain_norm``, its reference fitted
    on the training images, and ``Normalize``'s statistics (from scratch) measured on them
    stain-normalised, as the model will see them."""
    if config.data.stain_norm == "none":
        return (*normalisation_for(config, model, train_pixels), None)
    seed = config.train.seed
    state = fit_stain_reference(train_pixels, config.data.stain_norm, seed=seed)
    log.info("stain normalisation %s: training images' L*a*b* means %s, stds %s",
             state["method"], _rounded(state["mean"]), _rounded(state["std"]))
    normalised = stain_normalised_pixels(train_pixels, state, max_images=2000, seed=seed)
    return (*normalisation_for(config, model, normalised), state)


def _rounded(values: Sequence[float]) -> str:
    return "/".join(f"{v:.2f}" for v in values)


def _scale_of(data: PreparedData, mpp: float | None) -> dict[str, Any] | None:
    """The training scale recorded in the checkpoint (``data.scale``); logged once."""
    root = data.source.root if data.source.kind != "npz" else None
    scale = training_scale(root, data.samples["train"], mpp)
    if scale is None:
        return None
    log.info("training scale: one input covers %d source px (%s)%s", scale.tile_px,
             scale.origin, f", stride {scale.stride_px}" if scale.stride_px else "")
    return scale.model_dump(exclude_none=True)


def _fit_inputs(config: RunConfig, data: PreparedData, model: nn.Module,
                optimizer: torch.optim.Optimizer, meta: CheckpointMeta, runtime: Runtime,
                dist: DistContext, progress: bool) -> FitInputs:
    """What ``fit`` trains with: this rank's loaders, sampler, batch operations and loss."""
    sampler, sampler_generator = train_sampler_for(config, data, dist)
    _log_distributed(config, dist)
    augment, mix = train_batch_ops(config, data)
    val_shard = dist.shard(len(data.samples["val"])) if dist.enabled else None
    return FitInputs(
        model, train_loader(config, data, sampler, pin_memory=runtime.pin_memory),
        eval_loader(data, "val", config.train.batch_size, shard=val_shard,
                    pin_memory=runtime.pin_memory),
        cfg=config.train, normalize=input_normalisation(meta.mean, meta.std, meta.stain_norm),
        runtime=runtime,
        loss_fn=loss_for(config, data.labels("train"), len(meta.classes), meta.multilabel),
        optimizer=optimizer, sampler_generator=sampler_generator, augment=augment, mix=mix,
        train_size=progressive_sizes(config), multilabel=meta.multilabel, dist=dist,
        progress=progress)


def _run_callbacks(run: RunDir, meta: CheckpointMeta, tracker: Tracker, dist: DistContext,
                   callbacks: Sequence[EpochEnd]) -> Callbacks:
    """Rank 0 writes the run directory and the tracker, then the caller's ``callbacks``; every
    rank then waits for the others, so no rank starts an epoch before rank 0 saved the last."""
    writer = RunWriter(run, meta)
    writers = [writer,
               lambda _m, _o, _s, row, _i: tracker.log_epoch(row["epoch"], row), *callbacks]
    return Callbacks(
        on_epoch_end=[*(writers if dist.is_main else []), lambda *_: dist.barrier()],
        on_checkpoint=writer.save_last if dist.is_main else None)


def _calibrate_evaluate_report(config: RunConfig, run: RunDir, data: PreparedData,
                               state: FitState, progress: bool) -> None:
    """The workflow after fitting: learning curves, calibration on validation, evaluation on
    test (metrics and report), then the checkpoints' crash-safety copies go."""
    log.info("best epoch %s (%s %.4f)", state.best_epoch, config.train.monitor, state.best_score)
    plot_learning_curves(state.history, run.learning_curves)
    calibrate_run(run, data, target_accuracy=config.train.target_accuracy,
                  precision=config.train.precision, device=config.train.device)
    evaluate_run(run, data=data, precision=config.train.precision, device=config.train.device,
                 progress=progress)
    remove_previous_pairs(run)


def remove_previous_pairs(run: RunDir) -> None:
    """A finished run's checkpoints are complete: the pairs kept against a crash mid-save go."""
    for stem in (run.best, run.last):
        for suffix in (".safetensors", ".json"):
            previous_stem(stem).with_suffix(suffix).unlink(missing_ok=True)


# ---------------------------------------------------------------- distributed (torchrun)


def check_distributed(config: RunConfig | PretrainRunConfig, dist: DistContext) -> None:
    if dist.enabled and config.train.unfreeze_at is not None:
        # DDP syncs only the parameters that were trainable when it wrapped the model.
        raise MedscopeError(f"train.unfreeze_at {config.train.unfreeze_at}: not supported "
                            "under torchrun yet; run the two phases as two runs")
    # Both act on one rank's timing or loss alone, while DDP steps all ranks together.
    if dist.enabled and config.train.checkpoint_every is not None:
        raise MedscopeError("--checkpoint-every: not supported under torchrun yet (checkpoints "
                            "are written at the end of each epoch)")
    if dist.enabled and config.train.nan_policy == "skip-batch":
        raise MedscopeError("--nan-policy skip-batch: not supported under torchrun (a batch "
                            "skipped on one rank would stall the others); use stop")


def _prepare_data_ranked(config: RunConfig, run: RunDir, dist: DistContext, progress: bool
                         ) -> PreparedData:
    """Rank 0 scans, splits, writes splits.csv and decodes into the disk cache; the other ranks
    then read its split and memory-map the cache (writing their copies of the split aside)."""
    if dist.is_main:
        data = prepare_data(config, run, progress=progress)
        dist.barrier()
        return data
    dist.barrier()
    same_split = config.model_copy(update={"data": config.data.model_copy(
        update={"split_file": run.splits})})
    with tempfile.TemporaryDirectory(prefix=f"medscope-rank{dist.rank}-") as scratch:
        return prepare_data(same_split, RunDir(scratch), progress=False,
                            given_splits=given_splits_of(run))


def _compiled(model: nn.Module, compile_model: bool) -> nn.Module:
    return torch.compile(model) if compile_model else model


def _log_distributed(config: RunConfig, dist: DistContext) -> None:
    if dist.enabled:
        batch = config.train.batch_size
        log.info("distributed: %d processes (%s); global batch %d = %d per rank x %d; "
                 "lr %g as given (linear scaling rule: lr x %d for the same per-image "
                 "step, see README)", dist.world_size, dist.backend, batch * dist.world_size,
                 batch, dist.world_size, config.train.lr, dist.world_size)


def resume_config(out: Path | str, overrides: dict[str, Any] | None = None
                  ) -> tuple[RunConfig, list[str]]:
    """The saved config of the run in ``out`` with only ``overrides`` (options the user gave
    explicitly) applied; returns it and one line per changed setting. Changing the model, the
    images or the split of a run half-trained is refused."""
    run = RunDir(out)
    if not run.config.is_file():
        raise MedscopeError(f"{run.root}: nothing to resume (no config.yaml)")
    saved = load_config(run.config)
    overrides = {k: v for k, v in (overrides or {}).items() if k != "out"}
    given_data = overrides.get("data.path")
    if given_data is not None and saved.data.path is not None and \
            Path(given_data).resolve() == saved.data.path.resolve():
        del overrides["data.path"]  # the same folder, however it was spelt
    config = load_config(run.config, overrides)
    changes = _differences(saved, config)
    fixed = [c for c in changes if c.split(":")[0].startswith(FIXED_ON_RESUME)]
    if fixed:
        raise MedscopeError(f"{run.root}: cannot change {fixed[0]} when resuming (it would no "
                            "longer be the same run); start a new run with another --out")
    return config.model_copy(update={"out": run.root}), changes


def _differences(before: RunConfig, after: RunConfig) -> list[str]:
    a, b = flatten(before.model_dump(mode="json")), flatten(after.model_dump(mode="json"))
    return [f"{k}: {a.get(k)} -> {b.get(k)}" for k in sorted(a.keys() | b.keys())
            if a.get(k) != b.get(k)]


def _log_data(data: PreparedData, config: RunConfig) -> None:
    """The class counts per split, and the settings a multi-label run ignores."""
    classes = data.source.classes
    per_split = {k: class_counts(data.labels(k), len(classes)) for k in SPLITS}
    log.info("classes (train/val/test): %s", ", ".join(
        f"{c} {'/'.join(str(per_split[k][i]) for k in SPLITS)}" for i, c in enumerate(classes)))
    log.info("training class distribution: %s",
             distribution_line(data.labels("train"), classes))
    if data.source.multilabel:
        for setting in ignored_for_multilabel(config):
            log.warning("multi-label run: ignoring %s", setting)
