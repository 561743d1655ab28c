"""One training run, top-down: check the config, prepare the data, build the model, ``fit``
with a ``RunWriter``, then evaluate. Everything lands in the run directory ``config.out``."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from medscope.config import RunConfig, config_to_yaml, load_config
from medscope.data.balance import class_counts, distribution_line
from medscope.data.prepare import SPLITS, PreparedData, prepare_data
from medscope.data.transforms import Normalize
from medscope.errors import MedscopeError
from medscope.evaluate.evaluator import calibrate_run, evaluate_run
from medscope.models import create_model
from medscope.models.profile import count_params
from medscope.models.transfer import apply_freeze
from medscope.report.plots import plot_learning_curves
from medscope.run import RunDir, atomic_write_text, read_json
from medscope.tracking import Tracker, flatten, make_tracker
from medscope.train.checkpoint import CheckpointMeta, library_versions
from medscope.train.engine import (
    FitState,
    RunWriter,
    build_optimizer,
    fit,
    flush_denormals,
    resume_state,
)
from medscope.train.preflight import check_run_config
from medscope.train.runtime import Runtime, seed_everything
from medscope.train.setup import (
    balanced_sampler_for,
    eval_loader,
    ignored_for_multilabel,
    loss_for,
    normalisation_for,
    train_loader,
)

log = logging.getLogger("medscope")

# What a resumed run may not change: its model, its images and its split.
FIXED_ON_RESUME = ("model.", "data.path", "data.format", "data.img_size", "data.in_chans",
                   "data.multilabel", "data.split_seed", "data.val_fraction",
                   "data.test_fraction", "data.split_file")


def train_run(config: RunConfig, *, resume: bool = False, progress: bool = True) -> RunDir:
    """Train as ``config`` says. With ``resume``, continue the interrupted run in ``config.out``
    from its last checkpoint, on its saved split."""
    runtime = check_run_config(config, resume=resume)
    tracker = make_tracker(config.track)  # a bad spec or missing package fails before any work
    flush_denormals()
    run = RunDir(config.out)
    run.prepare_new(resume=resume)
    continuing = resume and run.has_partial_run()
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
        _train(config, run, runtime, tracker, continuing=continuing, progress=progress)
    except BaseException as exc:
        tracker.end("KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
        raise
    tracker.log_final(read_json(run.metrics), [run.report, run.metrics])
    tracker.end()
    return run


def _train(config: RunConfig, run: RunDir, runtime: Runtime, tracker: Tracker, *,
           continuing: bool, progress: bool) -> None:
    seed_everything(config.train.seed, config.train.deterministic)

    data = prepare_data(config, run, progress=progress)
    classes, multilabel = data.source.classes, data.source.multilabel
    _log_data(data)
    if multilabel:
        for setting in ignored_for_multilabel(config):
            log.warning("multi-label run: ignoring %s", setting)

    model = create_model(config.model.name, num_classes=len(classes),
                         in_chans=config.data.in_chans, pretrained=config.model.pretrained,
                         img_size=config.data.img_size, **config.model.kwargs)
    freeze = apply_freeze(model, config.train.freeze)
    if config.train.freeze != "none":
        log.info("freeze %s: %d parameter tensors frozen, %d trainable%s", freeze.spec,
                 freeze.frozen, freeze.trainable,
                 f" (all trainable from epoch {config.train.unfreeze_at})"
                 if config.train.unfreeze_at else "")
    mean, std = normalisation_for(config, model, data.pixels["train"])
    meta = CheckpointMeta(model=config.model.name, model_kwargs=config.model.kwargs,
                          classes=classes, multilabel=multilabel,
                          img_size=config.data.img_size, in_chans=config.data.in_chans,
                          mean=mean, std=std, pretrained=config.model.pretrained,
                          versions=library_versions())
    log.info("model %s: %.2fM parameters; %s", config.model.name, count_params(model) / 1e6,
             runtime.describe())
    model = runtime.prepare(model)
    optimizer = build_optimizer(model, config.train)
    state = resume_state(run.last, model, optimizer) if continuing else FitState()
    sampler, sampler_generator = balanced_sampler_for(config, data)
    state = fit(model, train_loader(config, data, sampler),
                eval_loader(data, "val", config.train.batch_size), cfg=config.train,
                normalize=Normalize(mean, std), runtime=runtime,
                loss_fn=loss_for(config, data.labels("train"), len(classes), multilabel),
                optimizer=optimizer, state=state,
                on_epoch_end=[RunWriter(run, meta),
                              lambda _m, _o, _s, row, _i: tracker.log_epoch(row["epoch"], row)],
                sampler_generator=sampler_generator, multilabel=multilabel, progress=progress)
    log.info("best epoch %s (%s %.4f)", state.best_epoch, config.train.monitor, state.best_score)
    plot_learning_curves(state.history, run.learning_curves)
    calibrate_run(run, data, target_accuracy=config.train.target_accuracy,
                  precision=config.train.precision, device=config.train.device)
    evaluate_run(run, data=data, precision=config.train.precision, device=config.train.device,
                 progress=progress)


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


def _log_data(data: PreparedData) -> None:
    classes = data.source.classes
    per_split = {k: class_counts(data.labels(k), len(classes)) for k in SPLITS}
    log.info("classes (train/val/test): %s", ", ".join(
        f"{c} {'/'.join(str(per_split[k][i]) for k in SPLITS)}" for i, c in enumerate(classes)))
    log.info("training class distribution: %s",
             distribution_line(data.labels("train"), classes))
