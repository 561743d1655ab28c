"""The tiny synthetic data sets ``medscope run --quick`` trains on, so that a recipe can be
smoke-tested anywhere (CI included) without its real data: a few built-in synthetic
micrographs per class (``medscope.data.synth``), drawn small, as an image folder — or, for
multi-label experiments, a CSV whose label column holds ``A|B`` sets."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from medscope.data.synth import CLASSES, make_slide
from medscope.run import atomic_write_csv, atomic_write_text

DONE = "quick-data.json"


def quick_dataset(root: Path, *, classes: int, per_class: int, size: int, seed: int,
                  multilabel: bool = False) -> Path:
    """A synthetic data set under ``root`` (made once; a complete one is re-used): the image
    folder, or with ``multilabel`` the CSV next to it. Returns what ``data.path`` should be."""
    spec = {"classes": classes, "per_class": per_class, "size": size, "seed": seed,
            "multilabel": multilabel}
    folder = root / "images"
    csv_path = root / "labels.csv"
    marker = root / DONE
    if not (marker.is_file() and json.loads(marker.read_text()) == spec):
        _write_images(folder, CLASSES[:classes], per_class, size, seed)
        if multilabel:
            _write_multilabel_csv(csv_path, CLASSES[:classes], per_class)
        atomic_write_text(marker, json.dumps(spec, indent=2) + "\n")
    return csv_path if multilabel else folder


def _write_images(folder: Path, classes: tuple[str, ...], per_class: int, size: int,
                  seed: int) -> None:
    for label, name in enumerate(classes):
        (folder / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            slide = make_slide(label, np.random.default_rng([seed, label, i]), size)
            Image.fromarray(slide).save(folder / name / f"{name}_{i:03d}.png")


def _write_multilabel_csv(path: Path, classes: tuple[str, ...],
                          per_class: int) -> None:
    """Each image carries its own class and, every other image, the next class too: every
    label is both present and absent often enough for per-label metrics and a split."""
    rows = []
    for label, name in enumerate(classes):
        for i in range(per_class):
            labels = [name] + ([classes[(label + 1) % len(classes)]] if i % 2 else [])
            rows.append([f"images/{name}/{name}_{i:03d}.png", "|".join(labels)])
    atomic_write_csv(path, ["path", "label"], rows)  # paths relative to the CSV's folder
