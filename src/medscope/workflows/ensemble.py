"""Evaluate several finished runs as one model: the average of their calibrated probabilities on
the test split they share (or on another folder of the same classes). Runs may differ in
architecture and image size; each sees the images at its own size. Writes what a single run's
evaluation writes (metrics.json with CIs, predictions.csv, plots) plus each member's figures on
the same images, so the gain of the ensemble over its best member is read off one file."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medscope.data.prepare import folder_source, labels_of, run_group_pattern, run_split
from medscope.data.sources import Sample
from medscope.errors import MedscopeError
from medscope.evaluate.calibration import threshold_for_accuracy
from medscope.evaluate.decisions import rules_for
from medscope.evaluate.groups import group_level_for, group_unit, sample_groups
from medscope.evaluate.metrics import classification_metrics, multilabel_metrics
from medscope.evaluate.summary import NOT_FITTED, evaluation_metrics
from medscope.predict import load_models
from medscope.predictor import probs_per_model
from medscope.run import METRICS, RunDir, read_json
from medscope.workflows.evaluation import data_path, groups_of, write_evaluation

log = logging.getLogger("medscope")


def evaluate_ensemble(runs: Sequence[Path | str], out: Path | str, *,
                      data_dir: Path | None = None, precision: str = "auto",
                      device: str = "auto", tta: bool = False,
                      target_accuracy: float | None = None,
                      progress: bool = True) -> dict[str, Any]:
    """Metrics of the average of ``runs``' calibrated probabilities, written to ``out``.

    Without ``data_dir`` the runs must share their test split (the same images, e.g. one
    dataset's given test folder, or the same ``data.split_seed``); the refer-to-expert
    threshold for ``target_accuracy`` is then fitted on their shared validation split, or on
    the evaluated images (flagged) when the validation splits differ."""
    rundirs = [RunDir(r) for r in runs]
    if len(rundirs) < 2:
        raise MedscopeError("an ensemble needs at least two runs")
    for run in rundirs:
        run.require_finished()
    models = load_models([r.root for r in rundirs], precision=precision, device=device)
    classes, multilabel = models[0].classes, models[0].multilabel
    samples, title, source = _scored_images(rundirs, classes, data_dir)
    kept, _, each = probs_per_model(models, samples, tta=tta, progress=progress,
                                    desc="evaluate")
    samples = [samples[i] for i in kept]
    if not samples:
        raise MedscopeError(f"{title}: no readable images to evaluate the ensemble on")
    probs, labels = each.mean(axis=0), labels_of(samples)
    target_accuracy = target_accuracy or models[0].info.target_accuracy or 0.99
    val = None if multilabel else _shared_validation(models, rundirs, tta, progress)
    selective = (NOT_FITTED if val is None
                 else threshold_for_accuracy(val[1], labels_of(val[0]), target_accuracy))
    # Each member's probabilities are already calibrated by its own temperature; the average
    # gets none of its own, so "uncalibrated" ECE is the same as ECE here.
    metrics = evaluation_metrics(labels, probs, classes, multilabel=multilabel,
                                 groups=groups_of(samples), selective_threshold=selective,
                                 target_accuracy=target_accuracy)
    _add_group_level(metrics, samples, probs, classes, rundirs[0], data_dir, target_accuracy,
                     val)
    members = [_member(r, p, labels, classes, multilabel) for r, p in zip(rundirs, each,
                                                                          strict=True)]
    out = Path(out)
    # "runs" as given (relative to the folder the command ran in); "from_here" relative to
    # ``out``, so the ensemble still finds its members when the whole tree is moved.
    metrics.update(data=title, tta=tta, ensemble={
        "runs": [str(r.root) for r in rundirs],
        "from_here": [os.path.relpath(r.root.resolve(), out.resolve()) for r in rundirs],
        "members": members})
    # The rules ``medscope serve OUT`` will apply: 0.5 per label, and the refer threshold
    # when it was fitted on the shared validation split.
    rules = rules_for([m.meta for m in models], ensemble_metrics=metrics)
    write_evaluation(out, metrics, source, samples, probs, selective=selective,
                     target_accuracy=target_accuracy, rules=rules)
    log.info("ensemble of %d runs: accuracy %.4f, F1 macro %.4f on %d images (%s) -> %s",
             len(rundirs), metrics["accuracy"], metrics["f1_macro"], metrics["n"], title,
             out / METRICS)
    return metrics


def _scored_images(runs: Sequence[RunDir], classes: list[str], data_dir: Path | None
                   ) -> tuple[list[Sample], str, Any]:
    """(samples, their description, their source): the folder given, else the test split all
    the runs hold out."""
    if data_dir is not None:
        _warn_if_group_patterns_differ(runs)
        source = folder_source(runs[0], data_dir, classes)
        return source.samples, str(data_dir), source
    try:
        samples, split, source = shared_split(runs, classes)
    except MedscopeError as exc:
        raise MedscopeError(f"{exc}: give --data FOLDER to score the ensemble on images "
                            "none of the runs trained on") from None
    return samples, f"{split} split shared by the {len(runs)} runs", source


def member_runs(ensemble_dir: Path | str) -> list[Path] | None:
    """The member runs of an ensemble's evaluation folder (None when ``ensemble_dir`` is not
    one): each found relative to the folder itself, else as given to ``medscope evaluate``
    (relative to the current folder)."""
    ensemble_dir = Path(ensemble_dir)
    path = ensemble_dir / METRICS
    if not ensemble_dir.is_dir() or not path.is_file():
        return None
    ensemble = read_json(path).get("ensemble")
    if ensemble is None:
        return None
    here = ensemble.get("from_here") or [None] * len(ensemble["runs"])
    found = []
    for given, rel in zip(ensemble["runs"], here, strict=True):
        near = ensemble_dir / rel if rel is not None else None
        found.append(near if near is not None and near.exists() else Path(given))
    return found


def shared_split(runs: Sequence[RunDir], classes: list[str], split: str | None = None
                 ) -> tuple[list[Sample], str, Any]:
    """The first run's ``split`` (default: its evaluation split), once every other run is
    checked to hold the same images there: an ensemble scored on images some member trained
    on would be flattered."""
    samples, split, source = run_split(runs[0], classes, split)
    ids = {source.sample_id(s) for s in samples}
    if not ids:
        raise MedscopeError(f"{runs[0].root} has no {split} split")
    for run in runs[1:]:
        other, _, other_source = run_split(run, classes, split)
        other_ids = {other_source.sample_id(s) for s in other}
        if other_ids != ids:
            raise MedscopeError(f"{run.root}: its {split} split ({len(other_ids)} images) is "
                                f"not {runs[0].root}'s ({len(ids)} images, "
                                f"{len(ids ^ other_ids)} differ)")
    return samples, split, source


def _warn_if_group_patterns_differ(runs: Sequence[RunDir]) -> None:
    """A folder given with ``--data`` is grouped by the first member's ``data.group_pattern``;
    members that grouped their own data otherwise are named, since their units differ."""
    patterns = {str(r.root): run_group_pattern(r) for r in runs}
    first = patterns[str(runs[0].root)]
    if len(set(patterns.values())) > 1:
        log.warning("the ensemble's members group images differently (%s); the folder is "
                    "grouped by the first member's data.group_pattern %r",
                    "; ".join(f"{run}: {p!r}" for run, p in patterns.items()), first)


def _shared_validation(models: Sequence[Any], runs: Sequence[RunDir], tta: bool,
                       progress: bool) -> tuple[list[Sample], np.ndarray] | None:
    """(the validation images the runs share, the ensemble's probabilities on them), which
    fit the refer-to-expert thresholds (per image and per group); None when they share none:
    the thresholds are then chosen on the evaluated images (and marked so)."""
    try:
        samples, _, _ = shared_split(runs, models[0].classes, "val")
    except MedscopeError as exc:
        log.warning("refer-to-expert threshold chosen on the evaluated images (optimistic): %s",
                    exc)
        return None
    kept, _, each = probs_per_model(models, samples, tta=tta, progress=progress,
                                    desc="validation")
    if not len(kept):
        return None
    return [samples[i] for i in kept], each.mean(axis=0)


def _add_group_level(metrics: dict[str, Any], samples: list[Sample], probs: np.ndarray,
                     classes: list[str], first: RunDir, data_dir: Path | None,
                     target_accuracy: float, val: tuple[list[Sample], np.ndarray] | None
                     ) -> None:
    """``metrics["group_level"]`` as a single run's evaluation gives it (multi-class only)."""
    if metrics.get("multilabel") or sample_groups(samples) is None:
        return
    unit = group_unit(data_dir if data_dir is not None else data_path(first))
    block = group_level_for(samples, probs, classes, unit=unit,
                            target_accuracy=target_accuracy, val=val)
    if block is not None:
        metrics["group_level"] = block


def _member(run: RunDir, probs: np.ndarray, labels: np.ndarray, classes: list[str],
            multilabel: bool) -> dict[str, Any]:
    m = (multilabel_metrics(labels, probs, classes) if multilabel
         else classification_metrics(labels, probs, classes))
    return {"run": str(run.root), "accuracy": m["accuracy"], "f1_macro": m["f1_macro"]}

