"""The page of a self-supervised pretraining run: what it learnt from, the loss curve, and how
to fine-tune from it; one self-contained HTML file (images embedded)."""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from typing import Any

from matplotlib.figure import Figure

from medscope.report.page import render_page
from medscope.report.plots import _save
from medscope.run import RunDir, atomic_write_text

PRETRAIN_CURVE = "pretraining_loss.png"


def plot_pretraining_loss(history: Sequence[dict[str, Any]], path) -> None:
    """NT-Xent loss and partner accuracy per epoch."""
    epochs = [int(r["epoch"]) for r in history]
    fig = Figure(figsize=(10, 3.8))
    axes = fig.subplots(1, 2)
    for ax, key, title in zip(axes, ("train_loss", "train_accuracy"),
                              ("Loss (NT-Xent)", "Partner accuracy"), strict=True):
        ax.plot(epochs, [float(r[key]) for r in history], "o-")
        ax.set_xlabel("epoch")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    _save(fig, path)


def render_pretrain_report(run: RunDir, metrics: dict[str, Any],
                           history: Sequence[dict[str, Any]]) -> None:
    """Write the curve and ``report.html`` of a pretraining run."""
    curve = run.root / PRETRAIN_CURVE
    if history:
        plot_pretraining_loss(history, curve)
    rows = [("objective", f"{metrics['objective']} (temperature {metrics['temperature']}, "
             f"projection {metrics['proj_hidden']}-{metrics['proj_dim']})"),
            ("images", f"{metrics['images']} ({metrics['colour']}, "
             f"{'x'.join(map(str, metrics['source_size']))} px on disk) from "
             f"{', '.join(metrics['data'])}"),
            ("input", f"{metrics['image_size']} px, augmentation {metrics['augment']}"),
            ("epochs", f"{metrics['epochs_done']} of {metrics['epochs']}, batch "
             f"{metrics['batch_size']} images (2 views each)"),
            ("final loss", _num(metrics["final_loss"])),
            ("final partner accuracy", _num(metrics["final_partner_accuracy"])),
            ("training time", f"{metrics['train_seconds']} s")]
    summary = "<table>" + "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>"
                                  for k, v in rows) + "</table>"
    usage = (f"medscope train --data DIR --pretrained {run.root} --model "
             f"{metrics['model']} --img-size {metrics['image_size']} --out runs/finetuned")
    page = render_page("pretrain.html", title=f"medscope pretraining: {run.root.name}",
                       summary=summary, curve=_img(curve), usage=html.escape(usage),
                       config=html.escape(run.config.read_text()) if run.config.is_file()
                       else "")
    atomic_write_text(run.report, page)


def _num(value: Any) -> str:
    return "-" if value is None else f"{float(value):.4f}"


def _img(path) -> str:
    if not path.is_file():
        return ""
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="pretraining loss" src="data:image/png;base64,{data}">'
