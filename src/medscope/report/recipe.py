"""What ``medscope run`` writes next to the comparison table: ``recipe.md`` (the experiments,
how each was initialised and evaluated, the comparison, every CV fold table) and, when a recipe
asks for it, the training-error plot of He et al. (2016) Fig. 6."""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib
from matplotlib.figure import Figure

from medscope.report.page import render_page
from medscope.report.plots import _save
from medscope.run import atomic_write_text

TRAINING_ERROR = "training_error.png"
RECIPE_MD = "recipe.md"
RECIPE_HTML = "recipe.html"


def read_history(path: Path) -> list[dict[str, float]]:
    """history.csv as numbers (missing values as None)."""
    with path.open(newline="") as fh:
        return [{k: (float(v) if v not in ("", None) else None) for k, v in row.items()}
                for row in csv.DictReader(fh)]


def plot_training_error(histories: Mapping[str, Sequence[dict[str, Any]]], path: Path) -> Path:
    """One plot, every experiment: training error (dashed) and validation error (solid) in %
    per epoch, one colour per experiment — He et al. Fig. 6, where the deeper plain net trains
    worse than the shallower one and residual nets do not."""
    fig = Figure(figsize=(7, 4.5))
    ax = fig.subplots()
    colours = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (name, rows) in enumerate(histories.items()):
        colour = colours[i % len(colours)]
        epochs = [int(r["epoch"]) for r in rows]
        train = [100 * (1 - r["train_accuracy"]) for r in rows]
        ax.plot(epochs, train, "--", marker="o", ms=3, color=colour, lw=1.2,
                label=f"{name} train")
        val = [None if r.get("val_accuracy") is None else 100 * (1 - r["val_accuracy"])
               for r in rows]
        if any(v is not None for v in val):
            ax.plot(epochs, val, "-", marker="s", ms=4, color=colour, lw=2.2,
                    label=f"{name} validation")
    ax.set_xlabel("epoch")
    ax.set_ylabel("error (%)")
    ax.set_title("Training (dashed) and validation (bold) error")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    _save(fig, path)
    return path


def write_recipe_markdown(path: Path, *, title: str, header: Sequence[str],
                          experiments: Sequence[Sequence[str]], comparison: str,
                          sections: Sequence[tuple[str, str]]) -> Path:
    """``recipe.md``: title and header lines, the experiment table, the comparison table, then
    one section per (heading, markdown body)."""
    lines = [f"# {title}", "", *(x for line in header for x in (line, "")), "## Experiments", "",
             "| experiment | model | weights | evaluation | best val acc | data | this run |",
             "|---|---|---|---|---:|---|---|"]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |"
              for row in experiments]
    lines += ["", "## Comparison", "", comparison.strip()]
    for heading, body in sections:
        lines += ["", f"## {heading}", "", body.strip()]
    text = "\n".join(lines) + "\n"
    atomic_write_text(path, text)
    write_recipe_html(path.with_name(RECIPE_HTML), title=title, markdown_text=text)
    return path


def write_recipe_html(path: Path, *, title: str, markdown_text: str) -> Path:
    """``recipe.html``: recipe.md as a page (its tables, plots and notes), for readers who open
    a browser rather than a Markdown viewer."""
    import markdown

    # Recipe titles and notes are the user's text: shown, never interpreted as HTML.
    text = markdown_text.replace("&", "&amp;").replace("<", "&lt;")
    if text.startswith("# "):  # the page shell shows the title already
        text = text.partition("\n")[2]
    body = markdown.markdown(text, extensions=["tables"])
    atomic_write_text(path, render_page("recipe.html", title=title, body=body))
    return path
