"""Evaluate a run's best checkpoint: on its test split (the validation split when it has no
test split), or on another folder of the same classes. Writes metrics.json, the plots and the
report."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from medscope.data.prepare import PreparedData, labels_of, run_samples
from medscope.data.sources import load_source
from medscope.errors import MedscopeError
from medscope.evaluate.metrics import classification_metrics, multilabel_metrics
from medscope.predict import Predictor
from medscope.report.html import render_report
from medscope.report.plots import plot_confusion_matrix, plot_prediction_examples
from medscope.run import RunDir, atomic_write_json

log = logging.getLogger("medscope")

SPLIT_TITLES = {"test": "test split",
                "val": "validation split (no test split: optimistic, it also chose the epoch)"}


def evaluate_run(run: RunDir | Path | str, data_dir: Path | None = None,
                 out: Path | None = None, *, data: PreparedData | None = None,
                 precision: str = "auto", device: str = "auto",
                 progress: bool = True) -> dict[str, Any]:
    """Metrics of a run's best checkpoint; ``data`` (images already decoded by training) saves
    decoding them again. Results on another folder go to ``RUN/eval-<folder>/`` unless ``out``
    says otherwise."""
    run = run if isinstance(run, RunDir) else RunDir(run)
    predictor = Predictor.load(run.root, precision=precision, device=device)
    classes = predictor.classes
    if data is not None:
        split = data.eval_split
        samples, pixels = data.samples[split], data.pixels[split]
    else:
        if data_dir is not None:
            samples, split = load_source(data_dir, classes=classes).samples, None
        else:
            samples, split = run_samples(run, classes)
        decoded = predictor.decode(samples, progress=progress, desc="evaluate")
        samples, pixels = [samples[i] for i in decoded.kept], decoded.pixels
    if not samples:
        raise MedscopeError(f"{run.root}: no readable images to evaluate on")
    probs = predictor.probs_from_pixels(pixels)
    labels = labels_of(samples)
    multilabel = predictor.multilabel
    metrics = (multilabel_metrics(labels, probs, classes) if multilabel
               else classification_metrics(labels, probs, classes))
    metrics["data"] = str(data_dir) if data_dir else SPLIT_TITLES[split]
    target = Path(out) if out else (run.root if data_dir is None
                                    else run.root / f"eval-{Path(data_dir).name}")
    atomic_write_json(target / "metrics.json", metrics)
    if not multilabel:  # a K x K confusion matrix only means something for one label per image
        plot_confusion_matrix(metrics["confusion_matrix"], classes,
                              target / "confusion_matrix.png")
    if data_dir is None and out is None:
        if not multilabel:
            plot_prediction_examples(pixels, labels, probs, classes, run.examples)
        render_report(run)
    log.info("accuracy %.4f, F1 macro %.4f on %d images (%s) -> %s", metrics["accuracy"],
             metrics["f1_macro"], metrics["n"], metrics["data"], target / "metrics.json")
    return metrics
