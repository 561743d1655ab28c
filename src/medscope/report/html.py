"""The run report: one self-contained HTML page (images embedded), readable offline."""

from __future__ import annotations

import base64
import csv
import html
from importlib import resources
from pathlib import Path
from string import Template
from typing import Any

from medscope.run import RunDir, atomic_write_text, read_json


def render_report(run: RunDir) -> Path:
    """Write ``report.html`` from what the run directory holds; returns its path."""
    metrics = read_json(run.metrics)
    meta = read_json(run.best.with_suffix(".json"))
    history = _read_csv(run.history)
    splits = _read_csv(run.splits)
    bad = _read_csv(run.bad_files) if run.bad_files.is_file() else []
    template = Template(resources.files("medscope.report").joinpath(
        "templates/report.html").read_text())
    page = template.substitute(
        title=html.escape(f"medscope run: {run.root.name}"),
        summary=_summary_table(metrics, meta, history),
        dataset=_dataset_table(splits, meta["classes"]),
        curves=_img(run.learning_curves, "learning curves"),
        confusion=_img(run.confusion_matrix, "confusion matrix"),
        examples=_img(run.examples, "test examples"),
        per_class=_per_class_table(metrics),
        bad_files=_bad_files(bad),
        config=html.escape(run.config.read_text()) if run.config.is_file() else "",
    )
    atomic_write_text(run.report, page)
    return run.report


def _summary_table(metrics: dict[str, Any], meta: dict[str, Any],
                   history: list[dict[str, str]]) -> str:
    seconds = sum(float(r["seconds"]) for r in history) if history else 0.0
    auc = metrics.get("roc_auc_macro")
    rows = [
        ("model", meta["model"]),
        ("input", f"{meta['img_size']}×{meta['img_size']}, {meta['in_chans']} channel(s)"),
        ("best epoch", f"{meta.get('epoch')} of {len(history)}"),
        ("training time", f"{seconds:.0f} s"),
        ("evaluated on", f"{metrics.get('data', 'test split')}, {metrics['n']} images"),
        ("accuracy", f"{metrics['accuracy']:.4f}"),
        ("F1 macro / micro", f"{metrics['f1_macro']:.4f} / {metrics['f1_micro']:.4f}"),
        ("precision macro / recall macro",
         f"{metrics['precision_macro']:.4f} / {metrics['recall_macro']:.4f}"),
        ("ROC-AUC macro (one-vs-rest)", "n/a" if auc is None else f"{auc:.4f}"),
    ]
    return _table(("", ""), rows)


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


def _per_class_table(metrics: dict[str, Any]) -> str:
    rows = [(name, f"{m['precision']:.3f}", f"{m['recall']:.3f}", f"{m['f1']:.3f}", m["support"])
            for name, m in metrics["per_class"].items()]
    return _table(("class", "precision", "recall", "F1", "support"), rows)


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
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))
