"""k-fold cross-validation: K stratified, group-aware folds over the whole data set, a complete
run directory per fold (``fold_k/``), every image's out-of-fold probabilities and the fungi
study's table (a row per fold, then Average and Standard deviation).

Byte-identical images are one group in every fold, so a copy never sits on both sides.
Re-running the same command skips finished folds and resumes an interrupted one."""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Any

import numpy as np

from medscope.config import RunConfig
from medscope.core.runtime import select_runtime
from medscope.data.prepare import read_splits, scan_source, write_splits
from medscope.data.sources import DataSource
from medscope.data.splits import kfold_indices, split_indices
from medscope.errors import MedscopeError
from medscope.evaluate.bootstrap import bootstrap_ci
from medscope.evaluate.groups import group_level_metrics, group_unit, named_groups
from medscope.evaluate.metrics import classification_metrics
from medscope.predictor import Predictor
from medscope.report.cv import render_cv_report
from medscope.run import (
    CvDir,
    RunDir,
    atomic_write_csv,
    atomic_write_json,
    atomic_write_text,
    open_run_csv,
    read_json,
)
from medscope.train.distributed import init_distributed
from medscope.train.preflight import check_model
from medscope.train.resumable import TrainingInterrupted
from medscope.workflows.evaluation import PREDICTIONS
from medscope.workflows.training import train_run

log = logging.getLogger("medscope")

SUMMARY_METRICS = ("loss", "accuracy", "f1_macro", "roc_auc_macro")


def run_cv(config: RunConfig, folds: int, *, progress: bool = True) -> Path:
    """Cross-validate ``config`` with ``folds`` folds into ``config.out``; returns that folder."""
    if config.data.path is None:
        raise MedscopeError("no training data given: pass --data DIR")
    if config.data.split_file is not None:
        raise MedscopeError(f"--split-file {config.data.split_file}: cv makes its own fold "
                            "splits; leave it out")
    select_runtime(config.train.device, config.train.precision)
    check_model(config)
    out = Path(config.out)
    # The same scan every fold's run makes: excluded images out, identical copies grouped.
    source, _ = scan_source(config, given_splits=False)  # the folds replace them
    groups = [s.group for s in source.samples]
    # Before any training: a class with fewer groups than folds stops here in one line.
    fold_of = kfold_indices(source.targets(), groups, folds, config.split_seed, source.classes)
    dist = init_distributed(config.train.device)  # under torchrun: rank 0 alone writes here
    if dist.is_main:
        check_same_settings(out, config, folds)
    dist.barrier()
    for k in range(folds):
        fold_dir = out / f"fold_{k + 1}"
        if RunDir(fold_dir).is_finished():
            log.info("fold %d/%d already finished: %s", k + 1, folds, fold_dir)
            continue
        log.info("fold %d/%d", k + 1, folds)
        split_file = out / "splits" / f"fold_{k + 1}.csv"
        if dist.is_main:
            write_splits(split_file, source, fold_assignment(source, groups, fold_of, k, config))
        dist.barrier()
        fold_config = config.model_copy(update={
            "out": fold_dir, "data": config.data.model_copy(update={"split_file": split_file})})
        resume = RunDir(fold_dir).config.is_file()
        try:
            train_run(fold_config, resume=resume, progress=progress)
        except TrainingInterrupted as exc:
            message = str(exc).split("; continue with:")[0]
            raise TrainingInterrupted(f"fold {k + 1}: {message}; run the same medscope cv "
                                      "command again to continue", exc.signum) from None
    if dist.is_main:
        write_oof_predictions(out, folds, source, progress=progress)
        write_summary(out, config, folds)
    dist.barrier()
    return out


def check_same_settings(out: Path, config: RunConfig, folds: int) -> None:
    """Finished folds are re-used, so a re-run must ask for the same CV; the settings are kept
    in ``cv_settings.json`` (where the machine runs it may change: device, workers, cache)."""
    path = out / "cv_settings.json"
    settings = {"folds": folds, **_cv_settings(config)}
    if path.is_file():
        before = read_json(path)
        changed = [f"{k}: {before.get(k)} -> {v}" for k, v in settings.items()
                   if before.get(k) != v]
        if changed:
            raise MedscopeError(f"{out}: holds a cross-validation made with other settings "
                                f"({'; '.join(changed[:3])}); use another --out")
        return
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, settings)


def _cv_settings(config: RunConfig) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for section in ("data", "model", "train"):
        for key, value in getattr(config, section).model_dump(mode="json").items():
            flat[f"{section}.{key}"] = value
    for where in _WHERE_IT_RUNS:
        flat.pop(where, None)
    return flat


_WHERE_IT_RUNS = ("data.num_workers", "data.cache", "data.cache_dir", "data.split_file",
                  "train.device", "train.precision", "train.channels_last")


def fold_assignment(source: DataSource, groups: list[str | None], fold_of: np.ndarray, k: int,
                    config: RunConfig) -> np.ndarray:
    """test = fold k; validation carved group-aware from the other folds for model selection."""
    assign = np.where(fold_of == k, "test", "train").astype(object)
    rest = np.flatnonzero(fold_of != k)
    if config.data.val_fraction > 0:
        inner = split_indices(source.targets()[rest], [groups[i] for i in rest], 0.0,
                              config.data.val_fraction, config.split_seed + k, source.classes)
        assign[rest[inner == "test"]] = "val"
    return assign


def write_oof_predictions(out: Path, folds: int, source: DataSource, *,
                          progress: bool = True) -> Path:
    """Every image's probabilities from the fold that held it out."""
    rows = []
    classes = source.classes
    for k in range(folds):
        run = RunDir(out / f"fold_{k + 1}")
        held_out = {r["path"] for r in read_splits(run.splits) if r["split"] == "test"}
        samples = [s for s in source.samples if source.sample_id(s) in held_out]
        for s, p in _held_out_probs(run, source, samples, progress, k + 1):
            rows.append([source.sample_id(s), source.label_name(s), s.group or "", k + 1,
                         *(f"{x:.6f}" for x in p)])
    path = out / "oof_predictions.csv"
    atomic_write_csv(path, ["path", "label", "group", "fold", *(f"p_{c}" for c in classes)],
                     rows)
    return path


def _held_out_probs(run: RunDir, source: DataSource, samples: list, progress: bool, fold: int):
    """(sample, probabilities) of a fold's test images: from the predictions.csv its evaluation
    wrote, or predicted again for fold runs made before it existed."""
    saved = run.root / PREDICTIONS
    if saved.is_file():
        with open_run_csv(saved) as fh:
            by_id = {r["path"]: r for r in csv.DictReader(fh)}
        columns = [f"p_{c}" for c in source.classes]
        # An image missing there could not be decoded: it has no prediction either way.
        found = [(s, by_id.get(source.sample_id(s))) for s in samples]
        return [(s, [float(row[c]) for c in columns]) for s, row in found if row is not None]
    predictor = Predictor.load(run.root)
    decoded = predictor.decode(samples, progress=progress, desc=f"oof fold {fold}")
    probs = predictor.probs_from_pixels(decoded.pixels)
    return [(samples[i], p) for i, p in zip(decoded.kept, probs, strict=True)]


def write_summary(out: Path, config: RunConfig, folds: int) -> Path:
    """cv_summary.json / .csv / .md: a row per fold, then mean and sample std (ddof=1); when
    the data names groups (micrographs, patients), the group-level figures as ``group_*``
    columns and pooled over the out-of-fold groups."""
    rows, unit = [], None
    for k in range(folds):
        m = read_json(CvDir(out).fold(k + 1).metrics)
        rows.append({"fold": k + 1, "loss": m.get("log_loss"), "accuracy": m["accuracy"],
                     "f1_macro": m["f1_macro"], "roc_auc_macro": m.get("roc_auc_macro"),
                     "n": m["n"], **_group_columns(m.get("group_level"))})
        unit = unit or m.get("group_level", {}).get("unit")
    columns = [*SUMMARY_METRICS, *(c for c in GROUP_COLUMNS if any(c in r for r in rows))]
    mean, std = {}, {}
    for key in columns:
        values = np.array([r[key] for r in rows if r.get(key) is not None], dtype=float)
        mean[key] = float(values.mean()) if len(values) else None
        std[key] = float(values.std(ddof=1)) if len(values) > 1 else None
    unit = unit or group_unit(config.data.path)
    pooled = pooled_oof_metrics(out / "oof_predictions.csv", unit=unit)
    summary = {"model": config.model.name, "folds": folds, "rows": rows, "mean": mean,
               "std": std, "std_ddof": 1, "pooled": pooled, "data": str(config.data.path)}
    if len(columns) > len(SUMMARY_METRICS):
        summary["group_unit"] = unit
    atomic_write_json(out / "cv_summary.json", summary)
    header = ["fold", *columns, "n"]
    table = [[r["fold"], *(_fmt(r.get(k)) for k in columns), r["n"]] for r in rows]
    table += [["Average", *(_fmt(mean[k]) for k in columns), ""],
              ["Standard deviation", *(_fmt(std[k]) for k in columns), ""]]
    atomic_write_csv(out / "cv_summary.csv", header, table)
    lines = [f"{config.model.name}, {folds}-fold cross-validation on {config.data.path}", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in table]
    lines += ["", "Standard deviation: sample standard deviation over the folds (ddof = 1)."]
    if "group_accuracy" in columns:
        lines += ["", f"group_*: per {unit}, the {unit}'s patch probabilities averaged "
                  "(the slide path's aggregation)."]
    sentences = _pooled_sentences(pooled)
    lines += [line for sentence in sentences for line in ("", sentence)]
    atomic_write_text(out / "cv_summary.md", "\n".join(lines) + "\n")
    render_cv_report(out, lines[0], header, table, folds, pooled=sentences, unit=unit)
    return out


GROUP_METRICS = ("accuracy", "balanced_accuracy", "f1_macro")
GROUP_COLUMNS = tuple(f"group_{k}" for k in GROUP_METRICS)


def _group_columns(block: dict[str, Any] | None) -> dict[str, Any]:
    """A fold's ``metrics.json["group_level"]`` figures as ``group_*`` columns."""
    if not block:
        return {}
    return {f"group_{k}": block.get(k) for k in GROUP_METRICS} | {"n_groups": block["n_groups"]}


def pooled_oof_metrics(path: Path, n_resamples: int = 1000, seed: int = 0, *,
                       unit: str = "group") -> dict[str, Any] | None:
    """Accuracy, macro-F1 and macro AUC over every image's out-of-fold prediction, with 95%
    bootstrap CIs resampling whole groups (copies, slides): the uncertainty of the CV estimate
    itself, which the spread over folds understates with few folds. When the data names
    groups, ``group_level``: the same per ``unit`` (groups of the out-of-fold patches, CIs over
    groups). None for multi-label."""
    with open_run_csv(path) as fh:
        rows = list(csv.DictReader(fh))
    classes = [c[2:] for c in (rows[0] if rows else {}) if c.startswith("p_")]
    if not rows or any("|" in r["label"] for r in rows):
        return None
    index = {c: i for i, c in enumerate(classes)}
    labels = np.array([index[r["label"]] for r in rows])
    probs = np.array([[float(r[f"p_{c}"]) for c in classes] for r in rows])
    groups = [r["group"] or r["path"] for r in rows]
    point = classification_metrics(labels, probs, classes)
    ci = bootstrap_ci(labels, probs, classes, groups=groups, n_resamples=n_resamples, seed=seed)
    pooled = {"n": len(rows), **{k: point.get(k) for k in SUMMARY_METRICS if k != "loss"},
              "ci": {k: ci.get(k) for k in ("accuracy", "f1_macro", "roc_auc_macro")},
              "ci_level": ci["level"], "n_resamples": n_resamples}
    named = named_groups([r["group"] or None for r in rows], [r["path"] for r in rows])
    if named is not None:
        try:
            pooled["group_level"] = group_level_metrics(probs, labels, named, classes,
                                                        unit=unit, n_resamples=n_resamples,
                                                        seed=seed)
        except MedscopeError as exc:
            log.warning("no pooled metrics per %s: %s", unit, exc)
    return pooled


def _pooled_sentences(pooled: dict[str, Any] | None) -> list[str]:
    if not pooled:
        return []
    group = pooled.get("group_level")
    return [pooled_sentence(pooled), *([group_sentence(group)] if group else [])]


def group_sentence(block: dict[str, Any]) -> str:
    """The pooled out-of-fold figures per group, with their CIs over groups, in one line."""
    ci, level = block["ci"], block["ci"]["level"]
    parts = []
    for key, name in (("accuracy", "accuracy"), ("balanced_accuracy", "balanced accuracy"),
                      ("f1_macro", "macro-F1")):
        value, interval = block.get(key), ci.get(key)
        if value is not None:
            parts.append(f"{name} {value:.4f}" + (f" ({level:.0%} CI {interval['low']:.4f}–"
                                                  f"{interval['high']:.4f})" if interval else ""))
    return (f"Pooled out-of-fold per {block['unit']}, {block['n_groups']} {block['unit']}s "
            f"({block['n_patches']} images, probabilities aggregated by {block['aggregation']}):"
            f" " + ", ".join(parts) + f"; bootstrap over {block['unit']}s, "
            f"{ci['n_resamples']} resamples.")


def pooled_sentence(pooled: dict[str, Any]) -> str:
    parts = []
    for key, name in (("accuracy", "accuracy"), ("f1_macro", "macro-F1"),
                      ("roc_auc_macro", "macro ROC-AUC")):
        value, ci = pooled.get(key), pooled["ci"].get(key)
        if value is not None:
            parts.append(f"{name} {value:.4f}" + (f" ({pooled['ci_level']:.0%} CI "
                                                  f"{ci['low']:.4f}–{ci['high']:.4f})" if ci
                                                  else ""))
    return (f"Pooled out-of-fold, {pooled['n']} images: " + ", ".join(parts) + f"; bootstrap "
            f"over groups, {pooled['n_resamples']} resamples.")


def _fmt(value: Any) -> str:
    return "" if value is None else f"{value:.4f}"
