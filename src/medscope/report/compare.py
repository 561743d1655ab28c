"""The comparison page: the table of ``medscope compare`` and two scatter plots (accuracy vs
latency, accuracy vs parameters), one self-contained HTML file in the run report's style."""

from __future__ import annotations

import base64
import html
import io
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter

from medscope.report.html import _table
from medscope.report.page import render_page
from medscope.run import atomic_write_csv, atomic_write_text

COLUMNS = [
    "name", "kind", "model", "img_size", "params", "gmacs", "checkpoint_mb", "precision",
    "threads", "latency_ms", "throughput_img_s", "train_seconds", "n", "folds", "members",
    "accuracy", "accuracy_std", "accuracy_ci_low", "accuracy_ci_high", "f1_macro",
    "roc_auc_macro", "ece", "group_unit", "group_accuracy", "group_accuracy_std", "path",
]
THROUGHPUT_BATCH = 32


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
        table=f'<div class="wide">{_table(header_for(rows), cells_for(rows))}</div>',
        measured=html.escape(measured_on(rows)),
        plots=_png_img(accuracy_scatter(rows), "accuracy vs latency and vs parameters"),
    )
    atomic_write_text(path, page)
    return path


def accuracy_scatter(rows: Sequence[dict[str, Any]]) -> bytes:
    """PNG: accuracy against batch-1 latency (left) and against parameter count (right)."""
    fig = Figure(figsize=(11, 4.2))
    axes = fig.subplots(1, 2)
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


# ---------------------------------------------------------------- writers


def write_csv(rows: Sequence[dict[str, Any]], path: Path) -> Path:
    atomic_write_csv(path, COLUMNS, ([_csv_cell(r[c]) for c in COLUMNS] for r in rows))
    return path


def write_markdown(rows: Sequence[dict[str, Any]], path: Path) -> Path:
    atomic_write_text(path, markdown_table(rows) + "\n")
    return path


MD_HEADER = ["run", "model", "params", "GMACs", "MB", "latency b1 (ms)", "img/s b32",
             "train (s)", "accuracy", "95% CI", "F1 macro", "AUC", "ECE"]


def display_cells(row: dict[str, Any]) -> list[str]:
    """The row as the Markdown and HTML tables show it (blank where a figure is unknown)."""
    acc = _f(row["accuracy"], 4)
    if row["accuracy_std"] is not None:
        acc += f" ± {row['accuracy_std']:.4f}"
    ci = ("" if row["accuracy_ci_low"] is None
          else f"{row['accuracy_ci_low']:.3f}–{row['accuracy_ci_high']:.3f}")
    name = row["name"] + {"cv": f" ({row['folds']}-fold CV)",
                          "ensemble": f" (ensemble of {row['members']})"}.get(row["kind"], "")
    return [name, row["model"], f"{row['params']:,}", _f(row["gmacs"], 4),
            _f(row["checkpoint_mb"], 2), _f(row["latency_ms"], 2),
            _f(row["throughput_img_s"], 0), _f(row["train_seconds"], 1), acc, ci,
            _f(row["f1_macro"], 4), _f(row["roc_auc_macro"], 4), _f(row["ece"], 4),
            _group_cell(row)]


def _group_cell(row: dict[str, Any]) -> str:
    """Accuracy per micrograph / slide / patient (the group's patch probabilities averaged),
    with its unit, since the runs compared may group differently."""
    if row.get("group_accuracy") is None:
        return ""
    cell = f"{row['group_accuracy']:.4f}"
    if row.get("group_accuracy_std") is not None:
        cell += f" ± {row['group_accuracy_std']:.4f}"
    return f"{cell} per {row.get('group_unit') or 'group'}"


def header_for(rows: Sequence[dict[str, Any]]) -> list[str]:
    """MD_HEADER, with the per-group column only when some row has group-level figures."""
    return MD_HEADER + (["accuracy per group"] if _any_group(rows) else [])


def cells_for(rows: Sequence[dict[str, Any]]) -> list[list[str]]:
    width = len(header_for(rows))
    return [display_cells(r)[:width] for r in rows]


def _any_group(rows: Sequence[dict[str, Any]]) -> bool:
    return any(r.get("group_accuracy") is not None for r in rows)


def measured_on(rows: Sequence[dict[str, Any]]) -> str:
    """The line that says how the speed columns were measured."""
    precisions = sorted({r["precision"] for r in rows})
    threads = sorted({r["threads"] for r in rows})
    return (f"Latency: median of timed batch-1 forwards; throughput: batch {THROUGHPUT_BATCH}; "
            f"CPU, {'/'.join(map(str, threads))} torch thread(s), "
            f"{'/'.join(precisions)}, measured {time.strftime('%Y-%m-%d %H:%M')} on this machine. "
            "CV rows: mean ± std over folds; model and speed of fold_1. Ensemble rows: the "
            "members' sizes and times added (x 8 views with TTA).")


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    header = header_for(rows)
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join(["---"] * 2 + ["---:"] * (len(header) - 2)) + "|"]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"
              for cells in cells_for(rows)]
    return "\n".join(lines) + "\n\n" + measured_on(rows)


def _f(value: float | None, digits: int) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def _csv_cell(value: Any) -> Any:
    if value is None:
        return ""
    return f"{value:.6g}" if isinstance(value, float) else value
