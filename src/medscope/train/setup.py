"""The choices a training run makes from its config: loss, normalisation statistics and the
data loaders. Kept apart from the loop so cross-validation and distributed training build
exactly the same pieces."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler, Sampler, Subset

from medscope.config import RunConfig
from medscope.data.augment import BatchAugment, batch_augmentation
from medscope.data.balance import balanced_sampler, class_weights, sample_weights
from medscope.data.dataset import PixelDataset
from medscope.data.prepare import PreparedData
from medscope.data.transforms import batch_mixing, channel_stats
from medscope.train.distributed import DistContext, DistributedWeightedSampler

log = logging.getLogger("medscope")


def loss_for(config: RunConfig, targets: np.ndarray, num_classes: int, multilabel: bool
             ) -> torch.nn.Module:
    """Cross-entropy (BCE per class for multi-label), with inverse-frequency class weights when
    ``data.balance`` is 'weights'."""
    weights = (class_weights(targets, num_classes) if config.data.balance == "weights"
               else None)
    if multilabel:
        return torch.nn.BCEWithLogitsLoss(pos_weight=weights)
    return torch.nn.CrossEntropyLoss(weight=weights,
                                     label_smoothing=config.train.label_smoothing)


def ignored_for_multilabel(config: RunConfig) -> list[str]:
    """Settings a multi-label run does not apply (the CLI warns about each)."""
    ignored = []
    if config.data.mixup or config.data.cutmix:
        ignored.append("data.mixup/data.cutmix (class mixing assumes one label per image)")
    if config.train.label_smoothing:
        ignored.append("train.label_smoothing (BCE targets stay 0/1)")
    return ignored


def normalisation_for(config: RunConfig, model: torch.nn.Module, train_pixels: np.ndarray
                      ) -> tuple[list[float], list[float]]:
    """Pretrained weights expect their own statistics; from scratch, the training set's."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    if config.model.pretrained and "mean" in cfg:
        mean, std = list(cfg["mean"]), list(cfg["std"])
        if config.data.in_chans == 1:
            mean, std = [float(np.mean(mean))], [float(np.mean(std))]
        return mean, std
    return channel_stats(train_pixels, seed=config.train.seed)


def train_loader(config: RunConfig, data: PreparedData, sampler: Sampler | None = None,
                 pin_memory: bool = False) -> DataLoader:
    """Shuffled (or ``sampler``-drawn) uint8 batches; the loop augments and mixes them on the
    device (``train_batch_ops``). The loader's generator is re-seeded every epoch by the loop.
    ``pin_memory`` when batches go to a GPU (the copies are then non-blocking)."""
    targets = data.labels("train")
    per_epoch = len(sampler) if sampler is not None else len(targets)
    return DataLoader(
        PixelDataset(data.pixels["train"], targets),
        batch_size=config.train.batch_size, shuffle=sampler is None, sampler=sampler,
        drop_last=_drop_last(per_epoch, config.train.batch_size),
        generator=torch.Generator().manual_seed(config.train.seed),
        num_workers=config.data.num_workers, pin_memory=pin_memory)


def train_batch_ops(config: RunConfig, data: PreparedData
                    ) -> tuple[BatchAugment | None, Callable | None]:
    """(batched augmentation or None, MixUp/CutMix mixer or None) of the training batches."""
    mix = None if data.source.multilabel else batch_mixing(
        len(data.source.classes), config.data.mixup, config.data.cutmix)
    return batch_augmentation(config.data.augment), mix


def progressive_sizes(config: RunConfig) -> Callable[[int], int | None] | None:
    """Each epoch's training side under progressive resizing (None when it is off): linear from
    ``train.progressive_from`` in epoch 1 to ``data.img_size`` from the epoch at
    ``train.progressive_until`` of the run on, in steps of 8 pixels (the stride of most nets'
    stem); a pure function of the epoch, so a resumed run resizes as the uninterrupted one."""
    start, full = config.train.progressive_from, config.data.img_size
    if start is None:
        return None
    ramp = min(int(config.train.progressive_until * config.train.epochs),
               config.train.epochs - 1)

    def size(epoch: int) -> int | None:
        if epoch >= ramp:
            return None
        side = start + (full - start) * epoch / ramp
        return max(start, int(side) // 8 * 8)

    return size


def balanced_sampler_for(config: RunConfig, data: PreparedData
                         ) -> tuple[Sampler | None, torch.Generator | None]:
    """(sampler, its generator) when ``data.balance`` is 'sampler', else (None, None)."""
    if config.data.balance != "sampler":
        return None, None
    generator = torch.Generator().manual_seed(config.train.seed)
    return balanced_sampler(data.labels("train"), len(data.source.classes), generator), generator


def train_sampler_for(config: RunConfig, data: PreparedData, dist: DistContext
                      ) -> tuple[Sampler | None, torch.Generator | None]:
    """(sampler, its generator). Under torchrun each rank draws its share of the epoch: a
    seeded ``DistributedSampler``, or the distributed weighted sampler for 'sampler' balance;
    both are re-seeded by the loop through ``set_epoch``."""
    if not dist.enabled:
        return balanced_sampler_for(config, data)
    targets = data.labels("train")
    if config.data.balance == "sampler":
        weights = sample_weights(targets, len(data.source.classes))
        return DistributedWeightedSampler(weights, dist.world_size, dist.rank,
                                          seed=config.train.seed), None
    return DistributedSampler(range(len(targets)), num_replicas=dist.world_size,
                              rank=dist.rank, shuffle=True, seed=config.train.seed), None


def eval_loader(data: PreparedData, split: str, batch_size: int,
                shard: Sequence[int] | None = None, pin_memory: bool = False
                ) -> DataLoader | None:
    """Batches of a split in order; only the ``shard`` indices when given (distributed
    evaluation, where the ranks' shards are gathered back afterwards)."""
    if not data.samples[split]:
        return None
    dataset = PixelDataset(data.pixels[split], data.labels(split))
    return DataLoader(dataset if shard is None else Subset(dataset, list(shard)),
                      batch_size=batch_size * 2, pin_memory=pin_memory)


def _drop_last(n: int, batch_size: int) -> bool:
    # A last batch of one sample breaks BatchNorm; drop it unless that leaves nothing.
    return n % batch_size == 1 and n > batch_size
