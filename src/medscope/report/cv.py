"""The page of a cross-validation directory: the fold table with Average and Standard deviation
rows, and a link to every fold's own report. Same look as a run's report (its CSS is reused)."""

from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path

from medscope.report.html import _table
from medscope.report.page import render_page
from medscope.run import atomic_write_text


def render_cv_report(out: Path, title: str, header: Sequence[str],
                     table: Sequence[Sequence[object]], folds: int, pooled: str = "") -> Path:
    """Write ``out/cv_report.html``; returns its path."""
    page = render_page(
        "cv.html", title=title,
        table=_table(header, table),
        pooled=f"<p>{html.escape(pooled)}</p>" if pooled else "",
        links="\n".join(_fold_link(out, k) for k in range(1, folds + 1)),
    )
    path = Path(out) / "cv_report.html"
    atomic_write_text(path, page)
    return path


def _fold_link(out: Path, k: int) -> str:
    report = Path(out) / f"fold_{k}" / "report.html"
    if not report.is_file():
        return f"<li>fold {k}: no report</li>"
    return f'<li><a href="fold_{k}/report.html">fold {k}</a></li>'
