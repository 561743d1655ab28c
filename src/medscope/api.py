"""The Python API: ``train`` a run from a config, ``evaluate`` a run, ``predict`` files.
The CLI is a thin layer over these functions."""

from __future__ import annotations

import csv
import logging
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

import medscope
from medscope.config import RunConfig, config_to_yaml
from medscope.data.balance import (
    balanced_sampler,
    class_counts,
    class_weights,
    distribution_line,
)
from medscope.data.cache import decode_images, default_cache_dir
from medscope.data.dataset import PixelDataset
from medscope.data.sources import DataSource, Sample, load_source
from medscope.data.splits import split_indices
from medscope.data.transforms import Normalize, augmentation, batch_mixing, channel_stats
from medscope.errors import MedscopeError
from medscope.evaluate.metrics import classification_metrics, multilabel_metrics
from medscope.models import create_model, is_known_model
from medscope.models.transfer import apply_freeze
from medscope.predict import Predictor, predict_files
from medscope.report.html import render_report
from medscope.report.plots import (
    example_indices,
    plot_confusion_matrix,
    plot_examples,
    plot_learning_curves,
)
from medscope.run import RunDir, atomic_write_csv, atomic_write_json, atomic_write_text
from medscope.train.engine import fit, seed_everything, select_runtime

log = logging.getLogger("medscope")

SPLITS = ("train", "val", "test")

__all__ = ["evaluate", "predict_files", "train"]


@dataclass
class PreparedData:
    source: DataSource
    samples: dict[str, list[Sample]]  # per split, readable images only
    pixels: dict[str, np.ndarray]


def train(config: RunConfig, *, resume: bool = False, progress: bool = True) -> RunDir:
    """Train a model as ``config`` says; everything lands in the run directory ``config.out``."""
    if config.data.path is None:
        raise MedscopeError("no training data given: pass --data DIR (or data.path in the config)")
    if not is_known_model(config.model.name):
        raise MedscopeError(f"unknown model {config.model.name!r}; `medscope models` lists "
                            "the names")
    run = RunDir(config.out)
    run.prepare_new(resume=resume)
    if resume:
        config = _resumed_config(run, config)
    atomic_write_text(run.config, config_to_yaml(config))
    seed_everything(config.train.seed, config.train.deterministic)

    data = prepare_data(config, run, progress=progress)
    classes = data.source.classes
    multilabel = data.source.multilabel
    per_split = {k: class_counts(_labels(data.samples[k]), len(classes)) for k in SPLITS}
    log.info("classes (train/val/test): %s", ", ".join(
        f"{c} {'/'.join(str(per_split[k][i]) for k in SPLITS)}" for i, c in enumerate(classes)))
    train_targets = _labels(data.samples["train"])
    log.info("training class distribution: %s", distribution_line(train_targets, classes))

    model = create_model(config.model.name, num_classes=len(classes),
                         in_chans=config.data.in_chans, pretrained=config.model.pretrained,
                         img_size=config.data.img_size, **config.model.kwargs)
    freeze = apply_freeze(model, config.train.freeze)
    if config.train.freeze != "none":
        log.info("freeze %s: %d parameter tensors frozen, %d trainable%s", freeze.spec,
                 freeze.frozen, freeze.trainable,
                 f" (all trainable from epoch {config.train.unfreeze_at})"
                 if config.train.unfreeze_at else "")
    mean, std = _normalisation(config, model, data.pixels["train"])
    meta = checkpoint_meta(config, classes, mean, std, multilabel=multilabel)
    runtime = select_runtime(config.train.device, config.train.precision,
                             config.train.channels_last)
    log.info("model %s: %.2fM parameters; device %s, %s%s", config.model.name,
             sum(p.numel() for p in model.parameters()) / 1e6, runtime.device,
             "bf16 autocast" if runtime.bf16 else "fp32",
             ", channels_last" if runtime.channels_last else "")

    generator = torch.Generator().manual_seed(config.train.seed)
    sampler_generator = (torch.Generator().manual_seed(config.train.seed)
                         if config.data.balance == "sampler" else None)
    sampler = (balanced_sampler(train_targets, len(classes), sampler_generator)
               if sampler_generator is not None else None)
    train_loader = DataLoader(
        PixelDataset(data.pixels["train"], train_targets, augmentation(config.data.augment)),
        batch_size=config.train.batch_size, shuffle=sampler is None, sampler=sampler,
        drop_last=_drop_last(data, config), generator=generator,
        num_workers=config.data.num_workers,
        collate_fn=None if multilabel else batch_mixing(len(classes), config.data.mixup,
                                                        config.data.cutmix))
    val_loader = _eval_loader(data, "val", config.train.batch_size)
    state = fit(model, train_loader, val_loader, cfg=config.train, normalize=Normalize(mean, std),
                runtime=runtime, run=run, meta=meta, loss_fn=_loss(config, train_targets, classes,
                                                                   multilabel),
                sampler_generator=sampler_generator, multilabel=multilabel, resume=resume,
                progress=progress)
    log.info("best epoch %s (%s %.4f)", state.best_epoch, config.train.monitor, state.best_score)
    plot_learning_curves(state.history, run.learning_curves)
    evaluate(run, progress=progress, data=data)
    return run


def prepare_data(config: RunConfig, run: RunDir, progress: bool = True) -> PreparedData:
    """Scan, split (or re-use a split), decode every image once; write splits and bad files."""
    dc = config.data
    source = load_source(dc.path, dc.format)
    if dc.split_file is not None:
        assign = _splits_from_file(dc.split_file, source)
    elif source.given_splits() is not None:
        assign = _complete_given_splits(source, dc.val_fraction, config.train.seed)
    else:
        assign = split_indices(source.targets(), [s.group for s in source.samples],
                               dc.val_fraction, dc.test_fraction, config.train.seed,
                               source.classes)
    decoded = decode_images(source.samples, dc.img_size, dc.in_chans, strict=dc.strict,
                            max_bad_fraction=dc.max_bad_fraction, progress=progress,
                            cache_dir=cache_dir(config))
    _write_splits(run, source, assign)
    if decoded.bad:
        atomic_write_csv(run.bad_files, ["file", "reason"],
                         ((str(p), reason) for p, reason in decoded.bad))
    kept_assign = assign[decoded.kept]
    kept_samples = [source.samples[i] for i in decoded.kept]
    samples = {k: [s for s, a in zip(kept_samples, kept_assign, strict=True) if a == k]
               for k in SPLITS}
    pixels = {k: decoded.pixels[kept_assign == k] for k in SPLITS}
    if not samples["train"]:
        raise MedscopeError(f"{dc.path}: no readable training images")
    return PreparedData(source, samples, pixels)


def evaluate(run: RunDir | Path | str, data_dir: Path | None = None, out: Path | None = None,
             *, progress: bool = True, data: PreparedData | None = None) -> dict[str, Any]:
    """Metrics of a run's best checkpoint on its test split, or on another folder of the same
    classes (written to ``RUN/eval-<folder>/`` unless ``out`` says otherwise)."""
    run = run if isinstance(run, RunDir) else RunDir(run)
    predictor = Predictor.load(run.root)
    classes = predictor.classes
    if data is not None:
        samples, pixels = data.samples["test"], data.pixels["test"]
    else:
        samples = (load_source(data_dir, classes=classes).samples if data_dir is not None
                   else _test_samples(run, classes))
        decoded = predictor.decode(samples, progress=progress, desc="evaluate")
        samples, pixels = [samples[i] for i in decoded.kept], decoded.pixels
    if not samples:
        raise MedscopeError(f"{run.root}: no test images to evaluate (test_fraction was 0?)")
    probs = predictor.probs_from_pixels(pixels)
    labels = _labels(samples)
    multilabel = predictor.multilabel
    metrics = (multilabel_metrics(labels, probs, classes) if multilabel
               else classification_metrics(labels, probs, classes))
    target = Path(out) if out else (run.root if data_dir is None
                                    else run.root / f"eval-{Path(data_dir).name}")
    metrics["data"] = str(data_dir) if data_dir else "test split"
    atomic_write_json(target / "metrics.json", metrics)
    if not multilabel:  # a K x K confusion matrix only means something for one label per image
        plot_confusion_matrix(metrics["confusion_matrix"], classes,
                              target / "confusion_matrix.png")
    if data_dir is None and out is None:
        if not multilabel:
            _plot_examples(run, pixels, labels, probs, classes)
        render_report(run)
    log.info("test accuracy %.4f, F1 macro %.4f on %d images -> %s", metrics["accuracy"],
             metrics["f1_macro"], metrics["n"], target / "metrics.json")
    return metrics


def checkpoint_meta(config: RunConfig, classes: list[str], mean, std, *,
                    multilabel: bool = False) -> dict[str, Any]:
    """What any later consumer needs to rebuild the model and preprocess an image."""
    import timm

    return {
        "format": "medscope-checkpoint/1",
        "model": config.model.name,
        "model_kwargs": config.model.kwargs,
        "classes": classes,
        "num_classes": len(classes),
        "multilabel": multilabel,  # sigmoid per class instead of softmax
        "img_size": config.data.img_size,
        "in_chans": config.data.in_chans,
        "resize": "squash",  # whole image resized to a square, no crop
        "mean": list(mean),
        "std": list(std),
        "pretrained": config.model.pretrained,
        "versions": {"medscope": medscope.__version__, "torch": torch.__version__,
                     "timm": timm.__version__, "python": platform.python_version()},
    }


# ---------------------------------------------------------------- helpers


def _normalisation(config: RunConfig, model, train_pixels: np.ndarray):
    """Pretrained weights expect their own statistics; from scratch, the training set's."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    if config.model.pretrained and "mean" in cfg:
        mean, std = list(cfg["mean"]), list(cfg["std"])
        if config.data.in_chans == 1:
            mean, std = [float(np.mean(mean))], [float(np.mean(std))]
        return mean, std
    return channel_stats(train_pixels)


def cache_dir(config: RunConfig) -> Path | None:
    """Where decoded images are cached; None when the cache is switched off."""
    if not config.data.cache:
        return None
    return Path(config.data.cache_dir).expanduser() if config.data.cache_dir \
        else default_cache_dir()


def _labels(samples: list[Sample]) -> np.ndarray:
    """Class indices, or an N x K 0/1 matrix for multi-label samples."""
    if samples and samples[0].labels is not None:
        return np.array([s.labels for s in samples], dtype=np.int64)
    return np.array([s.label for s in samples], dtype=np.int64)


def _loss(config: RunConfig, targets: np.ndarray, classes: list[str], multilabel: bool
          ) -> torch.nn.Module:
    weights = (class_weights(targets, len(classes)) if config.data.balance == "weights"
               else None)
    if multilabel:
        return torch.nn.BCEWithLogitsLoss(pos_weight=weights)
    return torch.nn.CrossEntropyLoss(weight=weights,
                                     label_smoothing=config.train.label_smoothing)


def _complete_given_splits(source: DataSource, val_fraction: float, seed: int) -> np.ndarray:
    """The data's own splits; a validation set is carved out of 'train' when none is given
    (stratified, group-aware), since early stopping and model selection need one."""
    assign = source.given_splits().copy()
    if "val" in set(assign.tolist()) or val_fraction <= 0:
        return assign
    train_idx = np.flatnonzero(assign == "train")
    targets = source.targets()[train_idx]
    groups = [source.samples[i].group for i in train_idx]
    inner = split_indices(targets, groups, 0.0, val_fraction, seed, source.classes)
    assign[train_idx[inner == "test"]] = "val"
    return assign


def _drop_last(data: PreparedData, config: RunConfig) -> bool:
    # A last batch of one sample breaks BatchNorm; drop it unless that leaves nothing.
    n = len(data.samples["train"])
    return n % config.train.batch_size == 1 and n > config.train.batch_size


def _eval_loader(data: PreparedData, split: str, batch_size: int) -> DataLoader | None:
    if not data.samples[split]:
        return None
    return DataLoader(PixelDataset(data.pixels[split], _labels(data.samples[split])),
                      batch_size=batch_size * 2)


def _write_splits(run: RunDir, source: DataSource, assign: np.ndarray) -> None:
    rows = ((source.sample_id(s), source.label_name(s), s.group or "", a)
            for s, a in zip(source.samples, assign, strict=True))
    atomic_write_csv(run.splits, ["path", "label", "group", "split"], rows)


def _read_splits(path: Path) -> list[dict[str, str]]:
    if not Path(path).is_file():
        raise MedscopeError(f"{path}: split file not found")
    with Path(path).open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    if rows and not {"path", "split"} <= rows[0].keys():
        raise MedscopeError(f"{path}: a split file needs 'path' and 'split' columns")
    return rows


def _splits_from_file(path: Path, source: DataSource) -> np.ndarray:
    by_path = {r["path"]: r["split"] for r in _read_splits(path)}
    assign = []
    for s in source.samples:
        rel = source.sample_id(s)
        if rel not in by_path:
            raise MedscopeError(f"{path}: has no split for {rel} (the data changed?)")
        assign.append(by_path[rel])
    return np.array(assign, dtype=object)


def _test_samples(run: RunDir, classes: list[str]) -> list[Sample]:
    from medscope.config import load_config

    dc = load_config(run.config).data
    source = load_source(dc.path, dc.format, classes=classes)
    test = {r["path"] for r in _read_splits(run.splits) if r["split"] == "test"}
    return [s for s in source.samples if source.sample_id(s) in test]


def _resumed_config(run: RunDir, config: RunConfig) -> RunConfig:
    """A resumed run continues with its saved config (and its saved split)."""
    from medscope.config import load_config

    saved = load_config(run.config)
    saved.data.split_file = run.splits if run.splits.is_file() else saved.data.split_file
    saved.train.epochs = max(saved.train.epochs, config.train.epochs)
    return saved


def _plot_examples(run: RunDir, pixels, labels, probs, classes, n: int = 16) -> None:
    pick = example_indices(np.asarray(labels), probs, n)
    predicted = probs.argmax(1)
    titles = [f"true {classes[labels[i]]}\npred {classes[predicted[i]]} {probs[i].max():.2f}"
              for i in pick]
    wrong = [bool(predicted[i] != labels[i]) for i in pick]
    plot_examples(pixels[pick], titles, run.examples, wrong=wrong)
