"""Evaluate a run's best checkpoint: on its test split (the validation split when it has no
test split), or on another folder of the same classes. Writes metrics.json, the plots and the
report."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from medscope.core.checkpoint import read_meta, write_meta
from medscope.data.prepare import PreparedData, folder_source, labels_of, run_split
from medscope.data.sources import DataSource, Sample
from medscope.errors import MedscopeError
from medscope.evaluate.calibration import threshold_for_accuracy
from medscope.evaluate.decisions import ReferRule, Rules, refer_flag, rules_for
from medscope.evaluate.groups import group_level_for, group_unit, sample_groups
from medscope.evaluate.ood import fit_ood
from medscope.evaluate.summary import NOT_FITTED, evaluation_metrics, fit_on_validation
from medscope.novelty import OOD_FEATURES, UNLIKE_TRAINING, ood_checks, unusual
from medscope.predictor import Predictor, tta_logits
from medscope.report.curves import write_evaluation_plots
from medscope.report.html import render_report
from medscope.report.plots import plot_confusion_matrix, plot_prediction_examples
from medscope.run import METRICS, PREDICTIONS, RunDir, atomic_write_csv, atomic_write_json
from medscope.slides.aggregate import LOW_CONFIDENCE

log = logging.getLogger("medscope")

TTA_DIR = "eval-tta"  # a run's own test split, with test-time augmentation

SPLIT_TITLES = {"test": "test split",
                "val": "validation split (no test split: optimistic, it also chose the epoch)"}


def evaluate_run(run: RunDir | Path | str, data_dir: Path | None = None,
                 out: Path | None = None, *, data: PreparedData | None = None,
                 precision: str = "auto", device: str = "auto",
                 target_accuracy: float | None = None, tta: bool = False,
                 progress: bool = True) -> dict[str, Any]:
    """Metrics of a run's best checkpoint; ``data`` (images already decoded by training) saves
    decoding them again. Results on another folder go to ``RUN/eval-<folder>/`` unless ``out``
    says otherwise. ``tta``: logits averaged over the 8 dihedral views; written to
    ``RUN/eval-tta/`` (``RUN/eval-<folder>-tta/``) so the run's own metrics stay as they are.
    ``target_accuracy`` other than the one training fitted: the refer-to-expert
    threshold for it is fitted again on the run's validation split (the checkpoint is left
    as it is)."""
    run = run if isinstance(run, RunDir) else RunDir(run)
    predictor = Predictor.load(run.root, precision=precision, device=device)
    classes = predictor.classes
    samples, pixels, split, source = _evaluated_images(predictor, run, data_dir, data, progress)
    logits, flagged = _scored(predictor, pixels, tta)
    probs = predictor.probs_from_logits(logits)
    labels = labels_of(samples)
    multilabel, info = predictor.multilabel, predictor.info
    rules = rules_for([predictor.meta])
    selective = info.selective_threshold if info.selective_fitted else NOT_FITTED
    if target_accuracy is not None and not multilabel and (
            target_accuracy != info.target_accuracy or selective is NOT_FITTED):
        selective = _threshold_on_validation(predictor, run, target_accuracy, progress)
        rules = replace(rules, refer=ReferRule(
            None if selective is NOT_FITTED else selective,
            f"fitted on validation for {target_accuracy:.4g} accuracy"))
    target_accuracy = target_accuracy or info.target_accuracy or 0.99
    metrics = evaluation_metrics(labels, probs, classes, multilabel=multilabel,
                                 logits=None if multilabel else logits,
                                 temperature=info.temperature, groups=groups_of(samples),
                                 thresholds=info.thresholds, selective_threshold=selective,
                                 target_accuracy=target_accuracy)
    metrics["data"] = str(data_dir) if data_dir else SPLIT_TITLES[split]
    metrics["tta"] = tta
    if flagged is not None:
        metrics["unlike_training_share"] = float(np.mean(flagged))
    if not multilabel and sample_groups(samples) is not None:
        _add_group_level(metrics, predictor, run, samples, probs, data_dir=data_dir, data=data,
                         target_accuracy=target_accuracy, tta=tta, progress=progress)
    target = Path(out) if out else default_target(run, data_dir, tta)
    write_evaluation(target, metrics, source, samples, probs, selective=selective,
                     target_accuracy=target_accuracy, logits=None if multilabel else logits,
                     temperature=info.temperature, rules=rules, unusual=flagged)
    if target == run.root:
        if not multilabel:
            plot_prediction_examples(pixels, labels, probs, classes, run.examples)
            _gradcam_of_mistakes(predictor, pixels, labels, probs, run)
        render_report(run)
    log.info("accuracy %.4f, F1 macro %.4f on %d images (%s) -> %s", metrics["accuracy"],
             metrics["f1_macro"], metrics["n"], metrics["data"], target / METRICS)
    return metrics


def _scored(predictor: Predictor, pixels: np.ndarray, tta: bool
            ) -> tuple[np.ndarray, np.ndarray | None]:
    """(logits, per image unlike the training images or None without an OOD check): what
    predict computes for the same images."""
    checks = ood_checks([predictor])
    if checks[0] is None:
        return (tta_logits(predictor, pixels) if tta
                else predictor.logits_from_pixels(pixels)), None
    features, logits = predictor.features_from_pixels(pixels)
    return ((tta_logits(predictor, pixels, identity=logits) if tta else logits),
            unusual(checks, [features]))


def _evaluated_images(predictor: Predictor, run: RunDir, data_dir: Path | None,
                      data: PreparedData | None, progress: bool
                      ) -> tuple[list[Sample], np.ndarray, str | None, DataSource]:
    """(samples, their pixels, the run's split or None for another folder, the source)."""
    if data is not None:
        split, source = data.eval_split, data.source
        samples, pixels = data.samples[split], data.pixels[split]
    else:
        if data_dir is not None:
            source = folder_source(run, data_dir, predictor.classes)
            samples, split = source.samples, None
        else:
            samples, split, source = run_split(run, predictor.classes)
        decoded = predictor.decode(samples, progress=progress, desc="evaluate")
        samples, pixels = [samples[i] for i in decoded.kept], decoded.pixels
    if not samples:
        raise MedscopeError(f"{run.root}: no readable images to evaluate on")
    return samples, pixels, split, source


def write_evaluation(target: Path, metrics: dict[str, Any], source: DataSource,
                     samples: list[Sample], probs: np.ndarray, *, selective: Any,
                     target_accuracy: float, rules: Rules, logits: np.ndarray | None = None,
                     temperature: float | None = None, unusual: np.ndarray | None = None
                     ) -> None:
    """What an evaluation leaves in ``target``: metrics.json, predictions.csv (labels and
    referral by ``rules``, as predict and serve decide them), the curves and the confusion
    matrix."""
    classes, multilabel = source.classes, source.multilabel
    atomic_write_json(target / METRICS, metrics)
    write_predictions(target / PREDICTIONS, source, samples, probs, rules, unusual)
    write_evaluation_plots(target, labels_of(samples), probs, classes, multilabel=multilabel,
                           logits=logits, temperature=temperature,
                           selective_threshold=None if selective is NOT_FITTED else selective,
                           target_accuracy=target_accuracy)
    if not multilabel:  # a K x K confusion matrix only means something for one label per image
        plot_confusion_matrix(metrics["confusion_matrix"], classes,
                              target / "confusion_matrix.png")


def groups_of(samples: Sequence[Sample]) -> list[str] | None:
    """The bootstrap's resampling units: images of one slide or patient (or copies of one image)
    are resampled together, so the CIs are not too narrow; None when no sample has a group."""
    return [s.group or str(s.path) for s in samples] if any(s.group for s in samples) else None


def _add_group_level(metrics: dict[str, Any], predictor: Predictor, run: RunDir,
                     samples: list[Sample], probs: np.ndarray, *, data_dir: Path | None,
                     data: PreparedData | None, target_accuracy: float, tta: bool,
                     progress: bool) -> None:
    """``metrics["group_level"]``: the figures per micrograph, slide or patient (the unit named
    by :func:`~medscope.evaluate.groups.group_unit` from the data's path), the group refer
    threshold fitted on the run's validation groups (docs/reliability.md)."""
    block = group_level_for(samples, probs, predictor.classes, unit=group_unit(
        data_dir if data_dir is not None else data_path(run)), target_accuracy=target_accuracy,
        val=_validation_scored(predictor, run, data, tta, progress))
    if block is not None:
        metrics["group_level"] = block
        log.info("per %s: accuracy %.4f, balanced accuracy %.4f on %d %ss", block["unit"],
                 block["accuracy"], block["balanced_accuracy"], block["n_groups"],
                 block["unit"])


def data_path(run: RunDir) -> Path | None:
    """The training data the run's config names (None without a config)."""
    from medscope.config import load_config

    path = load_config(run.config).data.path if run.config.is_file() else None
    return Path(path) if path else None


def _validation_scored(predictor: Predictor, run: RunDir, data: PreparedData | None,
                       tta: bool, progress: bool) -> tuple[list[Sample], np.ndarray] | None:
    """(the run's validation images, their probabilities, scored as the evaluated images
    are); None without any."""
    if data is not None:
        samples, pixels = data.samples["val"], data.pixels["val"]
    else:
        samples, _, _ = run_split(run, predictor.classes, "val")
        decoded = predictor.decode(samples, progress=progress, desc="validation groups")
        samples, pixels = [samples[i] for i in decoded.kept], decoded.pixels
    if not samples:
        return None
    logits, _ = _scored(predictor, pixels, tta)
    return samples, predictor.probs_from_logits(logits)


def default_target(run: RunDir, data_dir: Path | None, tta: bool) -> Path:
    """The run itself for its own test split; a sibling folder for other data or TTA."""
    if data_dir is None:
        return run.root / TTA_DIR if tta else run.root
    return run.root / f"eval-{Path(data_dir).name}{'-tta' if tta else ''}"


def _threshold_on_validation(predictor: Predictor, run: RunDir, target: float,
                             progress: bool) -> Any:
    """The confidence threshold reaching ``target`` accuracy on the run's validation images
    (NOT_FITTED without any: the evaluated images then choose it, flagged optimistic)."""
    samples, _, _ = run_split(run, predictor.classes, "val")
    decoded = predictor.decode(samples, progress=progress, desc="validation")
    if not len(decoded.kept):
        log.warning("%s has no validation images: the threshold for %.1f%% accuracy is chosen "
                    "on the evaluated images (optimistic)", run.root, 100 * target)
        return NOT_FITTED
    probs = predictor.probs_from_pixels(decoded.pixels)
    threshold = threshold_for_accuracy(probs, labels_of([samples[i] for i in decoded.kept]),
                                       target)
    log.info("refer-to-expert threshold for %.1f%% accuracy on %d validation images: %s%s",
             100 * target, len(decoded.kept), "unreachable" if threshold is None
             else f"{threshold:.3f}", "" if threshold is None
             else f" (predict --abstain-below {threshold:.3f} applies it)")
    return threshold


def write_predictions(path: Path, source: DataSource, samples: list[Sample],
                      probs: np.ndarray, rules: Rules, unusual: np.ndarray | None = None
                      ) -> Path:
    """Per image: its name, true label(s), group, predicted label(s), ``refer_to_expert``
    (yes/no, empty when the rules have no refer threshold and the image is not unlike the
    training images), ``refer_reason`` and every class's (calibrated) probability: what CV's
    out-of-fold table and a reader's error analysis need."""
    classes = source.classes
    predicted = rules.labels(probs)
    refer = rules.refer_to_expert(probs)
    flags, reasons = [], []
    for i in range(len(samples)):
        odd, low = unusual is not None and bool(unusual[i]), refer is not None and refer[i]
        flags.append(refer_flag(True if odd else (None if refer is None else bool(refer[i]))))
        reasons.append(UNLIKE_TRAINING if odd else (LOW_CONFIDENCE if low else ""))
    rows = ([source.sample_id(s), source.label_name(s), s.group or "", label, flag, why,
             *(f"{x:.6f}" for x in p)]
            for s, p, label, flag, why in zip(samples, probs, predicted, flags, reasons,
                                              strict=True))
    atomic_write_csv(path, ["path", "label", "group", "predicted", "refer_to_expert",
                            "refer_reason", *(f"p_{c}" for c in classes)], rows)
    return path


def _gradcam_of_mistakes(predictor: Predictor, pixels, labels, probs, run: RunDir) -> None:
    """Where the model looked on its most confident mistakes; a model Grad-CAM cannot explain
    (no convolutional or token layer found) leaves the report without the section."""
    from medscope.explain import report_gradcam

    try:
        report_gradcam(predictor, pixels, labels, probs, predictor.classes, run.gradcam_mistakes)
    except MedscopeError as exc:
        log.info("no Grad-CAM in the report: %s", exc)


def calibrate_run(run: RunDir, data: PreparedData, *, target_accuracy: float = 0.99,
                  precision: str = "auto", device: str = "auto") -> dict[str, Any]:
    """Fit on the validation split what the best checkpoint's metadata keeps for later use:
    the temperature and the refer-to-expert threshold (multi-class), or per-label decision
    thresholds (multi-label). Nothing is fitted without a validation split."""
    if not data.samples["val"]:
        log.warning("no validation split: probabilities stay uncalibrated (T = 1)")
        return {}
    predictor = Predictor.load(run.best, precision=precision, device=device)
    logits = predictor.logits_from_pixels(data.pixels["val"])
    outputs = predictor.probs_from_logits(logits) if predictor.multilabel else logits
    fitted = fit_on_validation(data.labels("val"), outputs, multilabel=predictor.multilabel,
                               target_accuracy=target_accuracy)
    ood = fit_ood_check(predictor, data, temperature=fitted.get("temperature", 1.0))
    if ood is not None:
        fitted["ood"] = ood
        log.info("out-of-distribution check (%s, %d dims): flags %.0f%% of validation images "
                 "above %.4g", ood["method"], ood.get("dims", 0), 100 * ood["flag_rate"],
                 ood["threshold"])
    write_meta(run.best, read_meta(run.best).model_copy(update=fitted))
    if "temperature" in fitted:
        threshold = fitted["selective_threshold"]
        log.info("calibration on %d validation images: temperature %.3f; refer-to-expert "
                 "below confidence %s for %.0f%% accuracy", len(data.samples["val"]),
                 fitted["temperature"], "n/a (unreachable)" if threshold is None
                 else f"{threshold:.3f}", 100 * target_accuracy)
    return fitted


OOD_TRAIN_IMAGES = 2000  # training images whose features fit the OOD check: plenty for 32 dims


def fit_ood_check(predictor: Predictor, data: PreparedData, *, temperature: float = 1.0,
                  seed: int = 0) -> dict[str, Any] | None:
    """The "unlike the training images" check stored in the checkpoint (``evaluate.ood``):
    Mahalanobis distance on the feature-map statistics (``Predictor.features_from_pixels``)
    of up to ``OOD_TRAIN_IMAGES`` training images, its threshold flagging 5 % of validation
    images. None without enough images or a feature map."""
    train, val = data.pixels["train"], data.pixels["val"]
    if len(train) < 3 or len(val) < 3:
        return None
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(len(train), min(len(train), OOD_TRAIN_IMAGES), replace=False))
    train_features, _ = predictor.features_from_pixels(np.asarray(train[pick]))
    val_features, val_logits = predictor.features_from_pixels(np.asarray(val))
    if train_features is None or val_features is None:
        return None  # no feature map to measure: predict could not apply the check either
    labels = None if predictor.multilabel else np.asarray(data.labels("train"))[pick]
    return {**fit_ood(train_features=train_features, train_labels=labels,
                      val_features=val_features), "features": OOD_FEATURES}
