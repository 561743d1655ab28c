"""The page of a cross-validation directory: the fold table with Average and Standard deviation
rows, and a link to every fold's own report. Same look as a run's report (its CSS is reused)."""

from __future__ import annotations

import html
import re
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from string import Template

from medscope.report.html import _table
from medscope.run import atomic_write_text


def render_cv_report(out: Path, title: str, header: Sequence[str],
                     table: Sequence[Sequence[object]], folds: int) -> Path:
    """Write ``out/cv_report.html``; returns its path."""
    page = _template("cv.html").substitute(
        title=html.escape(title),
        style=run_report_style(),
        table=_table(header, table),
        links="\n".join(_fold_link(out, k) for k in range(1, folds + 1)),
    )
    path = Path(out) / "cv_report.html"
    atomic_write_text(path, page)
    return path


def run_report_style() -> str:
    """The <style> block of the run report, so both pages change together."""
    match = re.search(r"<style>.*?</style>", _template_text("report.html"), re.S)
    return match.group(0) if match else ""


def _fold_link(out: Path, k: int) -> str:
    report = Path(out) / f"fold_{k}" / "report.html"
    if not report.is_file():
        return f"<li>fold {k}: no report</li>"
    return f'<li><a href="fold_{k}/report.html">fold {k}</a></li>'


def _template(name: str) -> Template:
    return Template(_template_text(name))


def _template_text(name: str) -> str:
    return resources.files("medscope.report").joinpath(f"templates/{name}").read_text()
