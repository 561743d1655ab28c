"""Self-supervised pretraining, top-down: check the config, find and check the images (no
labels), decode them once, build the backbone with SimCLR's projection head, ``fit`` on the
training engine (two augmented views per image, NT-Xent), then the loss curve and the report.
The run directory has a training run's layout: ``checkpoints/best`` is the backbone that
``medscope train --pretrained RUN`` fine-tunes (its projection head left out).

``best`` is the latest epoch's weights, not the lowest loss's: the contrastive loss is measured
on fresh random views each epoch and on no held-out data, so it ranks nothing; the schedule
(cosine to zero) ends where it means to. No validation split: every image is for learning.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, DistributedSampler

from medscope.config import PretrainRunConfig, config_to_yaml, load_pretrain_config
from medscope.core.checkpoint import CheckpointMeta, library_versions
from medscope.core.runtime import Runtime, seed_everything, tune_backends
from medscope.data.augment import batch_augmentation
from medscope.data.cache import decode_images
from medscope.data.dataset import PixelDataset
from medscope.data.prepare import cache_dir
from medscope.data.sources import Sample
from medscope.data.transforms import Normalize
from medscope.data.unlabeled import check_one_kind, scan_unlabeled
from medscope.errors import MedscopeError
from medscope.models import create_model
from medscope.models.heads import add_projection_head
from medscope.models.profile import count_params
from medscope.report.pretrain import render_pretrain_report
from medscope.run import RunDir, atomic_write_csv, atomic_write_json, atomic_write_text
from medscope.tracking import Tracker, flatten, make_tracker
from medscope.train.contrastive import NTXentLoss, partner_hits
from medscope.train.distributed import DistContext, init_distributed
from medscope.train.engine import (
    Callbacks,
    FitInputs,
    FitState,
    RunWriter,
    build_optimizer,
    fit,
    flush_denormals,
    resume_state,
)
from medscope.train.preflight import check_pretrain_config
from medscope.train.resumable import TrainingInterrupted
from medscope.train.setup import normalisation_for, progressive_sizes
from medscope.workflows.training import check_distributed, remove_previous_pairs

log = logging.getLogger("medscope")

# What a resumed pretraining may not change: its network, its images and its objective.
FIXED_ON_RESUME = ("model.", "data.paths", "data.img_size", "data.in_chans", "pretrain.")


@dataclass
class UnlabeledImages:
    samples: list[Sample]  # the readable ones, in pixel order
    pixels: np.ndarray  # N x S x S x C uint8
    source_size: tuple[int, int]  # (width, height) every image had on disk
    colour: str  # 'grey' or 'colour'


def pretrain_run(config: PretrainRunConfig, *, resume: bool = False,
                 progress: bool = True) -> RunDir:
    """Pretrain as ``config`` says into the run directory ``config.out``; with ``resume``,
    continue the interrupted run there from its last checkpoint. Under torchrun every rank
    trains and rank 0 writes, as ``train`` does."""
    dist = init_distributed(config.train.device)
    runtime = dist.runtime_for(check_pretrain_config(config, resume=resume))
    check_distributed(config, dist)
    tracker = make_tracker(config.track if dist.is_main else None)
    flush_denormals()
    run = RunDir(config.out)
    continuing = resume and run.has_partial_run()
    dist.barrier()  # every rank has checked the run dir before rank 0 creates it
    if dist.is_main:
        run.prepare_new(resume=resume)
        atomic_write_text(run.config, config_to_yaml(config))
        tracker.start(run.root, config.model_dump(mode="json"))
    else:
        logging.getLogger("medscope").setLevel(logging.WARNING)  # rank 0 tells the story
    try:
        _pretrain(config, run, runtime, tracker, dist, continuing=continuing,
                  progress=progress and dist.is_main)
    except TrainingInterrupted as exc:
        tracker.end("KILLED")
        raise TrainingInterrupted(f"{exc}; continue with: medscope pretrain --resume "
                                  f"{run.root}", exc.signum) from None
    except BaseException as exc:
        tracker.end("KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
        raise
    tracker.end()
    dist.barrier()  # returns once rank 0 has written the report
    return run


def _pretrain(config: PretrainRunConfig, run: RunDir, runtime: Runtime, tracker: Tracker,
              dist: DistContext, *, continuing: bool, progress: bool) -> None:
    """Images, model, fit, then (rank 0) the curve, the report and metrics.json (last: it
    marks the run finished). Seeding first: the model's initial weights draw from torch's RNG."""
    seed_everything(config.train.seed, config.train.deterministic)
    tune_backends(runtime, config.train.deterministic)
    images = prepare_unlabeled(config, run, dist, progress)
    model, meta = _built_model(config, images, runtime)
    optimizer = build_optimizer(model, config.train)
    state = resume_state(run.last, model, optimizer) if continuing else FitState()
    model = dist.wrap_ddp(model)
    if config.train.compile:
        model = torch.compile(model)
    inputs = _fit_inputs(config, images, model, optimizer, meta, runtime, dist, progress)
    state = fit(inputs, state, _callbacks(run, meta, tracker, dist))
    if dist.is_main:
        metrics = _summary(config, images, state)
        render_pretrain_report(run, metrics, state.history)
        atomic_write_json(run.metrics, metrics)
        remove_previous_pairs(run)


def prepare_unlabeled(config: PretrainRunConfig, run: RunDir, dist: DistContext,
                      progress: bool) -> UnlabeledImages:
    """Find the images, check they are one kind, decode them once (rank 0 first, filling the
    disk cache the other ranks then read); unreadable files go to bad_files.csv."""
    samples = scan_unlabeled(config.data.paths)
    size, colour = check_one_kind(samples)
    dc = config.data
    if not dist.is_main:
        dist.barrier()
    decoded = decode_images(samples, dc.img_size, dc.in_chans, strict=dc.strict,
                            max_bad_fraction=dc.max_bad_fraction, progress=progress,
                            cache_dir=cache_dir(config))
    if dist.is_main:
        dist.barrier()
        if decoded.bad:
            atomic_write_csv(run.bad_files, ["file", "reason"],
                             ((str(p), reason) for p, reason in decoded.bad))
    kept = [samples[i] for i in decoded.kept]
    if len(kept) < 2:
        raise MedscopeError(f"{config.data.paths[0]}: {len(kept)} readable image(s); "
                            "contrastive pretraining needs at least 2")
    log.info("pretraining images: %d (%s, %dx%d px on disk) from %s", len(kept), colour,
             *size, ", ".join(map(str, config.data.paths)))
    return UnlabeledImages(kept, decoded.pixels, size, colour)


def _built_model(config: PretrainRunConfig, images: UnlabeledImages, runtime: Runtime
                 ) -> tuple[nn.Module, CheckpointMeta]:
    """The network with its classifier turned into the projection head, on the device, and
    the metadata its checkpoints carry (what it was pretrained on, in ``pretraining``)."""
    pc, dc = config.pretrain, config.data
    model = create_model(config.model.name, num_classes=pc.proj_dim, in_chans=dc.in_chans,
                         pretrained=config.model.pretrained, img_size=dc.img_size,
                         **config.model.kwargs)
    add_projection_head(model, pc.proj_dim, pc.proj_hidden)
    mean, std = normalisation_for(config, model, images.pixels)
    meta = CheckpointMeta(model=config.model.name, model_kwargs=config.model.kwargs, classes=[],
                          img_size=dc.img_size, in_chans=dc.in_chans, mean=mean, std=std,
                          pretrained=config.model.pretrained, versions=library_versions(),
                          pretraining=pretraining_record(config, images))
    log.info("model %s + projection head %d-%d: %.2fM parameters; %s", config.model.name,
             pc.proj_hidden, pc.proj_dim, count_params(model) / 1e6, runtime.describe())
    return runtime.prepare(model), meta


def pretraining_record(config: PretrainRunConfig, images: UnlabeledImages) -> dict[str, Any]:
    """What the checkpoint says it was pretrained on and how (``meta.pretraining``)."""
    pc = config.pretrain
    return {"objective": pc.objective, "images": len(images.samples),
            "image_size": config.data.img_size, "source_size": list(images.source_size),
            "colour": images.colour, "epochs": config.train.epochs,
            "batch_size": config.train.batch_size, "temperature": pc.temperature,
            "proj_dim": pc.proj_dim, "proj_hidden": pc.proj_hidden,
            "augment": config.data.augment, "data": [str(p) for p in config.data.paths]}


def _fit_inputs(config: PretrainRunConfig, images: UnlabeledImages, model: nn.Module,
                optimizer: torch.optim.Optimizer, meta: CheckpointMeta, runtime: Runtime,
                dist: DistContext, progress: bool) -> FitInputs:
    """Two views of each image per step, NT-Xent on their projections, no validation."""
    n, seed, batch = len(images.pixels), config.train.seed, config.train.batch_size
    sampler = (DistributedSampler(range(n), num_replicas=dist.world_size, rank=dist.rank,
                                  shuffle=True, seed=seed) if dist.enabled else None)
    per_rank = len(sampler) if sampler is not None else n
    # The ragged last batch is dropped: fewer negatives make its loss easier and noisier.
    loader = DataLoader(PixelDataset(images.pixels, np.zeros(n, dtype=np.int64)),
                        batch_size=batch, shuffle=sampler is None, sampler=sampler,
                        drop_last=per_rank > batch, generator=torch.Generator().manual_seed(seed),
                        num_workers=config.data.num_workers, pin_memory=runtime.pin_memory)
    return FitInputs(model, loader, None, cfg=config.train, normalize=Normalize(meta.mean,
                     meta.std), runtime=runtime, loss_fn=NTXentLoss(config.pretrain.temperature),
                     optimizer=optimizer, augment=batch_augmentation(config.data.augment),
                     train_size=progressive_sizes(config), dist=dist, progress=progress,
                     views=2, correct=partner_hits)


def _callbacks(run: RunDir, meta: CheckpointMeta, tracker: Tracker, dist: DistContext
               ) -> Callbacks:
    """Rank 0 saves every epoch as ``best`` (see the module docstring) and ``last``; every
    rank then waits, so none starts an epoch before rank 0 saved the last."""
    writer = RunWriter(run, meta)

    def save(model, optimizer, state, row, _improved) -> None:
        writer(model, optimizer, state, row, True)
        tracker.log_epoch(row["epoch"], row)

    return Callbacks(on_epoch_end=[*([save] if dist.is_main else []), lambda *_: dist.barrier()],
                     on_checkpoint=writer.save_last if dist.is_main else None)


def _summary(config: PretrainRunConfig, images: UnlabeledImages, state: FitState
             ) -> dict[str, Any]:
    """metrics.json of a pretraining run: the last epoch's loss and partner accuracy."""
    last = state.history[-1] if state.history else {}
    return {"kind": "pretraining", "model": config.model.name,
            **pretraining_record(config, images),
            "epochs_done": state.epoch, "final_loss": last.get("train_loss"),
            "final_partner_accuracy": last.get("train_accuracy"),
            "train_seconds": round(sum(r["seconds"] for r in state.history), 1)}


def resume_pretrain_config(out: Path | str, overrides: dict[str, Any] | None = None
                           ) -> PretrainRunConfig:
    """The saved config of the pretraining in ``out`` with ``overrides`` applied (each change
    logged); changing its network, images or objective is refused."""
    run = RunDir(out)
    if not run.config.is_file():
        raise MedscopeError(f"{run.root}: nothing to resume (no config.yaml)")
    overrides = {k: v for k, v in (overrides or {}).items() if k != "out"}
    saved = load_pretrain_config(run.config)
    config = load_pretrain_config(run.config, overrides)
    a, b = flatten(saved.model_dump(mode="json")), flatten(config.model_dump(mode="json"))
    for key in sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k)):
        if key.startswith(FIXED_ON_RESUME):
            raise MedscopeError(f"{run.root}: cannot change {key} when resuming (it would no "
                                "longer be the same run); start a new run with another --out")
        log.info("resuming with %s: %s -> %s", key, a.get(key), b.get(key))
    return config.model_copy(update={"out": run.root})
