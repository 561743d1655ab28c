"""The comparison page: the table of ``medscope compare`` and two scatter plots (accuracy vs
latency, accuracy vs parameters), one self-contained HTML file in the run report's style."""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import NullFormatter  # noqa: E402

from medscope.evaluate.compare import (  # noqa: E402
    MD_HEADER,
    display_cells,
    measured_on,
    write_csv,
    write_markdown,
)
from medscope.report.html import _table  # noqa: E402
from medscope.report.page import render_page
from medscope.run import atomic_write_text  # noqa: E402


def write_comparison(rows: Sequence[dict[str, Any]], out_dir: Path) -> list[Path]:
    """comparison.csv, comparison.md and comparison.html in ``out_dir``; returns their paths."""
    out_dir = Path(out_dir)
    return [write_csv(rows, out_dir / "comparison.csv"),
            write_markdown(rows, out_dir / "comparison.md"),
            render_comparison(rows, out_dir / "comparison.html")]


def render_comparison(rows: Sequence[dict[str, Any]], path: Path) -> Path:
    """Write the comparison page to ``path``; returns it."""
    page = render_page(
        "compare.html", title=f"medscope comparison of {len(rows)} run(s)",
        table=_table(MD_HEADER, [display_cells(r) for r in rows]),
        measured=html.escape(measured_on(rows)),
        plots=_png_img(accuracy_scatter(rows), "accuracy vs latency and vs parameters"),
    )
    atomic_write_text(path, page)
    return path


def accuracy_scatter(rows: Sequence[dict[str, Any]]) -> bytes:
    """PNG: accuracy against batch-1 latency (left) and against parameter count (right)."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, key, label in ((axes[0], "latency_ms", "CPU latency, batch 1 (ms)"),
                           (axes[1], "params", "parameters")):
        for row in (r for r in rows if r["accuracy"] is not None):
            ax.errorbar(row[key], row["accuracy"], yerr=_accuracy_error(row), fmt="o",
                        capsize=3)
            ax.annotate(row["name"], (row[key], row["accuracy"]), textcoords="offset points",
                        xytext=(5, 4), fontsize=8)
        ax.set_xscale("log")  # models differ by orders of magnitude in size and speed
        ax.xaxis.set_minor_formatter(NullFormatter())  # minor labels collide on short ranges
        ax.set_xlabel(label)
        ax.set_ylabel("test accuracy")
        ax.grid(alpha=0.3, which="both")
    axes[0].set_title("Accuracy vs latency")
    axes[1].set_title("Accuracy vs parameters")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _accuracy_error(row: dict[str, Any]) -> list[list[float]] | None:
    if row["accuracy_std"] is not None:
        return [[row["accuracy_std"]], [row["accuracy_std"]]]
    if row["accuracy_ci_low"] is not None:
        return [[row["accuracy"] - row["accuracy_ci_low"]],
                [row["accuracy_ci_high"] - row["accuracy"]]]
    return None


def _png_img(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'
