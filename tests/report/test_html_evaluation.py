"""The report renders the clinical sections when metrics.json holds them, and older runs'
pages (without them) still render."""

import base64
import csv
import shutil

import numpy as np

from medscope.data.sources import load_source
from medscope.evaluate.summary import evaluation_metrics, fit_on_validation
from medscope.predictor import Predictor
from medscope.report.curves import COVERAGE, RELIABILITY, ROC_CURVES, write_evaluation_plots
from medscope.report.html import render_report
from medscope.run import RunDir, atomic_write_json, read_json

OLD_KEYS = ("n", "accuracy", "precision_macro", "recall_macro", "f1_macro", "precision_micro",
            "recall_micro", "f1_micro", "precision_weighted", "recall_weighted", "f1_weighted",
            "confusion_matrix", "log_loss", "roc_auc_macro", "classes", "data")


def _copy(trained_run, tmp_path) -> RunDir:
    run = RunDir(tmp_path / "run")
    shutil.copytree(trained_run.root, run.root)
    return run


def _split_outputs(run, predictor, image_folder, split):
    """Labels, logits and groups of one split of the run, as the evaluation path has them."""
    with run.splits.open(newline="") as fh:
        wanted = {r["path"] for r in csv.DictReader(fh) if r["split"] == split}
    source = load_source(image_folder)
    samples = [s for s in source.samples if source.sample_id(s) in wanted]
    decoded = predictor.decode(samples, progress=False)
    kept = [samples[i] for i in decoded.kept]
    if hasattr(predictor, "logits_from_pixels"):
        logits = predictor.logits_from_pixels(decoded.pixels)
    else:  # until the reshape: log-probabilities are logits of the same softmax
        logits = np.log(np.clip(predictor.probs_from_pixels(decoded.pixels), 1e-12, 1))
    groups = [s.group or source.sample_id(s) for s in kept]
    return np.array([s.label for s in kept]), logits, groups


def test_report_shows_cis_sensitivity_and_curves(trained_run, image_folder, tmp_path):
    run = _copy(trained_run, tmp_path)
    predictor = Predictor.load(run.root)
    classes = predictor.classes
    val_labels, val_logits, _ = _split_outputs(run, predictor, image_folder, "val")
    fitted = fit_on_validation(val_labels, val_logits, target_accuracy=0.9)
    labels, logits, groups = _split_outputs(run, predictor, image_folder, "test")
    probs = np.exp(logits / fitted["temperature"])
    probs /= probs.sum(1, keepdims=True)
    metrics = evaluation_metrics(labels, probs, classes, logits=logits,
                                 temperature=fitted["temperature"], groups=groups,
                                 selective_threshold=fitted["selective_threshold"],
                                 target_accuracy=0.9, n_resamples=200)
    metrics["data"] = "test split"
    atomic_write_json(run.metrics, metrics)
    write_evaluation_plots(run.root, labels, probs, classes, logits=logits,
                           temperature=fitted["temperature"],
                           selective_threshold=fitted["selective_threshold"], target_accuracy=0.9)
    page = render_report(run).read_text()

    acc = metrics["ci"]["accuracy"]
    assert f"{metrics['accuracy']:.3f} (95% CI {acc['low']:.3f}–{acc['high']:.3f})" in page
    for title in ("Sensitivity and specificity", "ROC curves", "Calibration",
                  "Selective prediction"):
        assert f"<h2>{title}" in page
    for name in classes:
        assert f"<td>{name}</td>" in page
    assert "specificity" in page and "after temperature scaling" in page
    for png in (ROC_CURVES, RELIABILITY, COVERAGE):
        assert base64.b64encode((run.root / png).read_bytes()).decode()[:200] in page
    assert "src=\"http" not in page  # self-contained


def test_report_of_an_older_run_without_the_new_keys(trained_run, tmp_path):
    run = _copy(trained_run, tmp_path)
    old = {k: v for k, v in read_json(run.metrics).items() if k in OLD_KEYS}
    old["per_class"] = {name: {k: m[k] for k in ("precision", "recall", "f1", "support")}
                        for name, m in read_json(run.metrics)["per_class"].items()}
    atomic_write_json(run.metrics, old)
    for png in (ROC_CURVES, RELIABILITY, COVERAGE):  # an older run has none of these plots
        (run.root / png).unlink(missing_ok=True)
    page = render_report(run).read_text()
    assert "<h2>Per-class metrics</h2>" in page
    assert "95% CI" not in page
    for title in ("Sensitivity and specificity", "ROC curves", "Calibration",
                  "Selective prediction"):
        assert f"<h2>{title}" not in page


def test_multilabel_per_label_table(trained_run, tmp_path):
    run = _copy(trained_run, tmp_path)
    rng = np.random.default_rng(0)
    y = (rng.random((20, 3)) < 0.5).astype(int)
    y[:, 2] = 0
    probs = np.clip(0.5 * y + 0.5 * rng.random((20, 3)), 0, 1)
    classes = read_json(run.metrics)["classes"]
    fitted = fit_on_validation(y, probs, multilabel=True)
    metrics = evaluation_metrics(y, probs, classes, multilabel=True,
                                 thresholds=fitted["thresholds"], n_resamples=50)
    metrics["data"] = "test split"
    atomic_write_json(run.metrics, metrics)
    page = render_report(run).read_text()
    assert "<h2>Per-label counts and thresholds" in page
    row = metrics["per_class"][classes[0]]
    cells = [row["support"], row["tp"], row["fp"], row["fn"], row["tn"]]
    assert f"<td>{classes[0]}</td>" + "".join(f"<td>{c}</td>" for c in cells) in page
    assert f"{fitted['thresholds'][0]:.3f}" in page


def test_a_threshold_that_misses_its_target_on_the_test_images_is_flagged():
    from medscope.report.html import _selective

    block = {"target_accuracy": 0.99, "threshold": 0.87, "fitted_on": "validation",
             "coverage": 0.80, "accuracy": 0.94}
    assert "Below the target on these images" in _selective(block)
    assert "Below the target" not in _selective({**block, "accuracy": 0.995})
