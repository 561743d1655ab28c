"""The page of a cross-validation directory: the fold table with Average and Standard deviation
rows, and a link to every fold's own report. Same look as a run's report (its CSS is reused)."""

from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path

from medscope.report.html import _table
from medscope.report.page import render_page
from medscope.run import CvDir, atomic_write_text


def render_cv_report(out: Path, title: str, header: Sequence[str],
                     table: Sequence[Sequence[object]], folds: int,
                     pooled: Sequence[str] = (), unit: str | None = None) -> Path:
    """Write ``out/cv_report.html``; returns its path. ``pooled``: sentences, a paragraph each;
    ``unit``: what a group is (micrograph, patient), named in the ``group_*`` headers."""
    page = render_page(
        "cv.html", title=title,
        table=f'<div class="wide">{_table([_heading(h, unit) for h in header], table)}</div>',
        pooled="\n".join(f"<p>{html.escape(s)}</p>" for s in pooled),
        links="\n".join(_fold_link(out, k) for k in range(1, folds + 1)),
    )
    path = Path(out) / "cv_report.html"
    atomic_write_text(path, page)
    return path


def _heading(column: str, unit: str | None) -> str:
    """``group_f1_macro`` -> ``per micrograph: f1 macro``: the CSV keeps its column names, the
    page says which unit; underscores become spaces so long headers can wrap."""
    if column.startswith("group_"):
        column = f"per {unit or 'group'}: {column[len('group_'):]}"
    return column.replace("_", " ")


def _fold_link(out: Path, k: int) -> str:
    report = CvDir(out).fold(k).report
    if not report.is_file():
        return f"<li>fold {k}: no report</li>"
    return f'<li><a href="fold_{k}/report.html">fold {k}</a></li>'
