"""The run report: one self-contained HTML page (images embedded), readable offline."""

from __future__ import annotations

import base64
import csv
import html
from pathlib import Path
from typing import Any

from medscope.report.curves import COVERAGE, RELIABILITY, ROC_CURVES
from medscope.report.page import render_page
from medscope.run import RunDir, atomic_write_text, open_run_csv, read_json


def render_report(run: RunDir) -> Path:
    """Write ``report.html`` from what the run directory holds; returns its path."""
    metrics = read_json(run.metrics)
    meta = read_json(run.best.with_suffix(".json"))
    history = _read_csv(run.history)
    splits = _read_csv(run.splits)
    bad = _read_csv(run.bad_files) if run.bad_files.is_file() else []
    page = render_page(
        "report.html", title=f"medscope run: {run.root.name}",
        summary=_summary_table(metrics, meta, history),
        group_level=_group_level_section(metrics),
        micrographs=_whole_micrographs(run.root / DIAGNOSIS),
        dataset=_dataset_table(splits, meta["classes"]) + _duplicates_note(run.duplicates),
        curves=_img(run.learning_curves, "learning curves"),
        confusion=_img(run.confusion_matrix, "confusion matrix"),
        examples=_img(run.examples, "test examples"),
        gradcam=_gradcam(run.gradcam_mistakes),
        per_class=_per_class_table(metrics),
        evaluation=_evaluation_sections(metrics, run.root),
        bad_files=_bad_files(bad),
        config=html.escape(run.config.read_text()) if run.config.is_file() else "",
    )
    atomic_write_text(run.report, page)
    return run.report


DIAGNOSIS = "diagnosis"  # RUN/diagnosis/: whole held-out micrographs diagnosed (the demo)
MAX_HEATMAPS = 6


def _group_level_section(metrics: dict[str, Any]) -> str:
    """The figures per micrograph, slide or patient beside the per-image ones
    (``metrics.json["group_level"]``), then the group-level sensitivity and specificity;
    empty when the data names no groups."""
    block = metrics.get("group_level")
    if not block:
        return ""
    unit, ci, level = block["unit"], metrics.get("ci", {}), metrics.get("ci", {}).get("level",
                                                                                    0.95)
    g_ci, g_level = block.get("ci", {}), block.get("ci", {}).get("level", 0.95)
    rows = [(name, _with_ci(metrics.get(key), ci.get(key), level),
             _with_ci(block.get(key), g_ci.get(key), g_level))
            for key, name in (("accuracy", "accuracy"), ("balanced_accuracy", "balanced accuracy"),
                              ("f1_macro", "F1 macro"), ("roc_auc_macro", "ROC-AUC macro"))]
    rows.append(("n", f"{metrics['n']} images", f"{block['n_groups']} {unit}s"))
    head = (f"<h2>Per {html.escape(unit)}</h2>\n<p>A lab reports per {html.escape(unit)}: "
            f"the probabilities of a {html.escape(unit)}'s images "
            f"are aggregated ({html.escape(block['aggregation'])}, as the whole-image "
            f"diagnosis does) into one call per {html.escape(unit)}; intervals resample whole "
            f"{html.escape(unit)}s.</p>\n")
    table = _table(("", "per image", f"per {unit}"), rows)
    per_class = _table(("class", "sensitivity", "specificity", f"{unit}s"), [
        (name, _with_ci(m.get("sensitivity"), g_ci.get("per_class", {}).get(name, {})
                        .get("sensitivity"), g_level),
         _with_ci(m.get("specificity"), g_ci.get("per_class", {}).get(name, {})
                  .get("specificity"), g_level), m["support"])
        for name, m in block["per_class"].items()])
    return head + table + per_class + _group_selective(block.get("selective"), unit)


def _group_selective(block: dict[str, Any] | None, unit: str) -> str:
    """The group refer rule: the aggregated confidence below which a whole ``unit`` goes to an
    expert, fitted on the validation groups."""
    if not block:
        return ""
    where = ("validation " + unit + "s" if block.get("fitted_on") == "validation"
             else f"these {unit}s, hence optimistic")
    target = block.get("target_accuracy")
    goal = f" for {target:.1%} accuracy" if target is not None else ""
    if block.get("threshold") is None:
        return (f"<p>Refer to an expert: no aggregated confidence reached the target{goal} on "
                f"{html.escape(where)}; every {html.escape(unit)} needs an expert.</p>")
    return (f"<p>Refer to an expert: a {html.escape(unit)} whose aggregated confidence is "
            f"below {block['threshold']:.3f} (chosen{goal} on {html.escape(where)}); the "
            f"model decides {block['coverage']:.1%} of these {html.escape(unit)}s with accuracy "
            f"{_fmt(block.get('accuracy'))}.</p>")


def _whole_micrographs(folder: Path) -> str:
    """The demo's held-out micrographs diagnosed whole (``diagnosis/summary.json`` and its
    ``*.heatmap.png``): the figure and up to ``MAX_HEATMAPS`` heat maps, mistakes and
    referrals first, each with its verdict."""
    summary_path = folder / "summary.json"
    if not summary_path.is_file() or not any(folder.glob("*.heatmap.png")):
        return ""
    summary = read_json(summary_path)
    unit = str(summary.get("unit", "micrograph"))
    images = [i for i in summary.get("images", []) if _heatmap_path(folder, i) is not None]
    images.sort(key=lambda i: (i.get("prediction") == i.get("label")
                               and not _is_referred(i), str(i.get("file"))))
    accuracy = summary.get("accuracy")
    figures = "".join(_heatmap_figure(folder, i) for i in images[:MAX_HEATMAPS])
    return (f"<h2>Whole {html.escape(unit)}s</h2>\n<p>{summary.get('n', len(images))} held-out "
            f"{html.escape(unit)}s diagnosed whole (cut into tiles, the tiles' probabilities "
            f"aggregated): accuracy {_fmt(accuracy)}. Heat maps: the called class's "
            "probability per tile over the image; mistakes and referrals first.</p>\n"
            f'<div class="heatmaps">{figures}</div>\n')


def _is_referred(image: dict[str, Any]) -> bool:
    return str(image.get("refer_to_expert", "")).lower() in ("yes", "true", "1")


def _heatmap_path(folder: Path, image: dict[str, Any]) -> Path | None:
    name = image.get("heatmap")
    if not name:
        return None
    for path in (Path(name), folder / name, folder / Path(name).name):
        if path.is_file() and path.resolve().is_relative_to(folder.resolve()):
            return path
    return None


def _heatmap_figure(folder: Path, image: dict[str, Any]) -> str:
    path = _heatmap_path(folder, image)
    label, prediction = image.get("label"), image.get("prediction")
    verdict = "right" if label == prediction else "wrong"
    prob = image.get("probability")
    refer = (f"; refer: {image.get('refer_reason') or 'yes'}" if _is_referred(image) else "")
    caption = (f"{Path(str(image.get('file', ''))).name}: {label} → {prediction}"
               f"{'' if prob is None else f' ({float(prob):.1%})'}, {verdict}{refer}")
    return (f"<figure>{_img(path, caption)}<figcaption>{html.escape(caption)}"
            "</figcaption></figure>")


def _summary_table(metrics: dict[str, Any], meta: dict[str, Any],
                   history: list[dict[str, str]]) -> str:
    seconds = sum(float(r["seconds"]) for r in history) if history else 0.0
    auc = metrics.get("roc_auc_macro")
    ci = metrics.get("ci", {})
    level = ci.get("level", 0.95)
    rows = [
        ("model", meta["model"]),
        ("input", f"{meta['img_size']}×{meta['img_size']}, {meta['in_chans']} channel(s)"),
        ("best epoch", f"{meta.get('epoch')} of {len(history)}"),
        ("training time", f"{seconds:.0f} s"),
        ("evaluated on", f"{metrics.get('data', 'test split')}, {metrics['n']} images"),
        ("accuracy", _with_ci(metrics["accuracy"], ci.get("accuracy"), level)),
        ("F1 macro", _with_ci(metrics["f1_macro"], ci.get("f1_macro"), level)),
        ("F1 micro", f"{metrics['f1_micro']:.4f}"),
        ("precision macro / recall macro",
         f"{metrics['precision_macro']:.4f} / {metrics['recall_macro']:.4f}"),
        ("ROC-AUC macro (one-vs-rest)", "n/a" if auc is None
         else _with_ci(auc, ci.get("roc_auc_macro"), level)),
        *_newer_summary_rows(metrics),
    ]
    return _table(("", ""), rows)


def _newer_summary_rows(metrics: dict[str, Any]) -> list[tuple[str, str]]:
    """Rows for the keys that older runs' metrics.json lack (each shown only when present)."""
    rows = []
    if metrics.get("balanced_accuracy") is not None:
        rows.append(("balanced accuracy", f"{metrics['balanced_accuracy']:.4f}"))
    for k, value in metrics.get("top_k_accuracy", {}).items():
        rows.append((f"top-{k} accuracy", f"{value:.4f}"))
    if metrics.get("log_loss") is not None:
        rows.append(("log loss", f"{metrics['log_loss']:.4f}"))
    if metrics.get("hamming_loss") is not None:
        rows.append(("Hamming loss", f"{metrics['hamming_loss']:.4f}"))
    if "ci" in metrics:
        ci = metrics["ci"]
        rows.append(("confidence intervals",
                     f"{ci['level']:.0%} percentile bootstrap, {ci['n_resamples']} resamples, "
                     f"seed {ci['seed']}{', whole groups resampled' if ci['grouped'] else ''}"))
    return rows


def _with_ci(value: float | None, interval: dict[str, float] | None, level: float = 0.95
             ) -> str:
    """'0.912 (95% CI 0.890–0.930)', or the bare value when no interval is known."""
    if value is None:
        return "n/a"
    if not interval:
        return f"{value:.3f}"
    return f"{value:.3f} ({level:.0%} CI {interval['low']:.3f}–{interval['high']:.3f})"


def _dataset_table(splits: list[dict[str, str]], classes: list[str]) -> str:
    names = ("train", "val", "test")
    counts = {c: dict.fromkeys(names, 0) for c in classes}
    images = dict.fromkeys(names, 0)
    for row in splits:
        if row["split"] not in names:
            continue
        images[row["split"]] += 1
        for label in row["label"].split("|"):  # a multi-label row counts under each label
            if label in counts:
                counts[label][row["split"]] += 1
    rows = [(c, *(counts[c][s] for s in names), sum(counts[c].values())) for c in classes]
    rows.append(("images", *(images[s] for s in names), sum(images.values())))
    return _table(("class", *names, "total"), rows)


def _duplicates_note(path: Path) -> str:
    """What ``data.duplicates`` found: leaks across the data's own train/test folders make the
    test figure optimistic, and the reader must see that next to the counts."""
    if not path.is_file():
        return ""
    found = read_json(path)
    parts = []
    if found.get("groups"):
        parts.append(f"{found['copies']} byte-identical cop(ies) of other images in "
                     f"{found['groups']} set(s)"
                     + (", each set kept in one split" if found["mode"] == "group" else ""))
    if found.get("conflicts"):
        parts.append(f"{len(found['conflicts'])} set(s) of identical images with different "
                     "labels, dropped")
    if found.get("test_leaks") and found["mode"] == "group":
        parts.append(f"<strong>{found['test_leaks']} test image(s) have a byte-identical copy "
                     "in the given training data: the test figure is optimistic</strong> "
                     "(<code>--set data.duplicates=drop</code> removes them)")
    elif found.get("dropped") and found["mode"] == "drop":
        parts.append(f"{found['dropped']} image(s) removed by data.duplicates=drop "
                     f"({found['test_leaks']} of them test-side copies of training images)")
    if not parts:
        return ""
    return f"<p>Duplicates (data.duplicates = {html.escape(found['mode'])}): " + \
        "; ".join(parts) + ".</p>"


def _gradcam(path: Path) -> str:
    if not path.is_file():
        return ""
    return ("<h2>Where the model looked: Grad-CAM on its most confident mistakes</h2>\n"
            "<p>Heat maps for the predicted class (red: the regions that raised its score); "
            "titles read true → predicted, probability.</p>\n" + _img(path, "Grad-CAM"))


def _per_class_table(metrics: dict[str, Any]) -> str:
    rows = [(name, f"{m['precision']:.3f}", f"{m['recall']:.3f}", f"{m['f1']:.3f}", m["support"])
            for name, m in metrics["per_class"].items()]
    return _table(("class", "precision", "recall", "F1", "support"), rows)


def _evaluation_sections(metrics: dict[str, Any], root: Path) -> str:
    """The clinical sections (CIs, sensitivity/specificity, ROC, calibration, selective
    prediction, multi-label counts), each present only when the run holds its data."""
    parts = []
    if metrics.get("multilabel"):
        parts.append(("Per-label counts and thresholds", _per_label_table(metrics)))
    elif any("specificity" in m for m in metrics["per_class"].values()):
        parts.append(("Sensitivity and specificity", _sensitivity_table(metrics)))
    parts.append(("ROC curves", _img(root / ROC_CURVES, "ROC curves")))
    parts.append(("Calibration", _calibration(metrics.get("calibration"))
                  + _img(root / RELIABILITY, "reliability diagram")))
    parts.append(("Selective prediction (refer to an expert)",
                  _selective(metrics.get("selective")) + _img(root / COVERAGE,
                                                              "coverage-accuracy curve")))
    return "".join(f"<h2>{html.escape(title)}</h2>\n{body}\n" for title, body in parts if body)


def _sensitivity_table(metrics: dict[str, Any]) -> str:
    ci = metrics.get("ci", {}).get("per_class", {})
    level = metrics.get("ci", {}).get("level", 0.95)
    rows = []
    for name, m in metrics["per_class"].items():
        bounds = ci.get(name, {})
        rows.append((name, _with_ci(m.get("sensitivity"), bounds.get("sensitivity"), level),
                     _with_ci(m.get("specificity"), bounds.get("specificity"), level),
                     _fmt(m.get("roc_auc")), m["support"]))
    return _table(("class", "sensitivity (recall)", "specificity", "ROC-AUC", "support"), rows)


def _per_label_table(metrics: dict[str, Any]) -> str:
    tuned = metrics.get("tuned", {}).get("per_class", {})
    cuts = dict(zip(metrics["per_class"], metrics.get("thresholds") or [], strict=False))
    rows = [(name, m["support"], m.get("tp", ""), m.get("fp", ""), m.get("fn", ""),
             m.get("tn", ""), _fmt(m.get("sensitivity")), _fmt(m.get("specificity")),
             _fmt(m.get("roc_auc")), _fmt(cuts.get(name)),
             _fmt(tuned.get(name, {}).get("f1")))
            for name, m in metrics["per_class"].items()]
    note = (f"<p>Counts at threshold {metrics.get('threshold', 0.5)}. Tuned thresholds were "
            "chosen on the validation split to maximise each label's F1.</p>")
    return note + _table(("label", "support", "TP", "FP", "FN", "TN", "sensitivity",
                          "specificity", "ROC-AUC", "tuned threshold", "F1 at tuned"), rows)


def _calibration(block: dict[str, Any] | None) -> str:
    if not block:
        return ""
    before = block.get("ece_uncalibrated")
    return (f"<p>Expected calibration error ({block['n_bins']} bins): "
            f"{_fmt(before)} before, {_fmt(block['ece'])} after temperature scaling "
            f"(T = {block['temperature']:.3f}, fitted on the validation split). "
            "Probabilities in this report are the calibrated ones.</p>")


def _selective(block: dict[str, Any] | None) -> str:
    if not block:
        return ""
    target = block["target_accuracy"]
    where = ("the validation split" if block.get("fitted_on") == "validation"
             else "these test images, hence optimistic")
    if block.get("threshold") is None:
        return (f"<p>No confidence threshold reached {target:.1%} accuracy on {where}: even "
                "the most confident predictions fell short; every image needs an expert.</p>")
    text = (f"<p>Target accuracy {target:.1%}: at confidence ≥ {block['threshold']:.3f} "
            f"(chosen on {where}) the model decides {block['coverage']:.1%} of the test "
            f"images with accuracy {_fmt(block['accuracy'])}; the rest are referred to an "
            "expert.")
    if block.get("accuracy") is not None and block["accuracy"] < target:
        # A validation split the model gets (nearly) all right fits a threshold that says
        # nothing about the errors it will make on new images (blood-cells-4: 0.940 for 0.99).
        text += (f" <strong>Below the target on these images</strong>: the threshold did not "
                 f"carry over from {where}; re-fit it on images like these before relying "
                 "on it.")
    return text + "</p>"


def _fmt(value: Any) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _bad_files(rows: list[dict[str, str]]) -> str:
    if not rows:
        return "<p>None: every image could be read.</p>"
    return (f"<p>{len(rows)} file(s) could not be read and were left out:</p>"
            + _table(("file", "reason"), [(r["file"], r["reason"]) for r in rows]))


def _table(header, rows) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>"
                   for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _img(path: Path, alt: str) -> str:
    if not path.is_file():
        return ""
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _read_csv(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with open_run_csv(path) as fh:
        return list(csv.DictReader(fh))
