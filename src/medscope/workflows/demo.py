"""The demo: the main job end to end on the built-in dataset (synth -> patches -> train ->
evaluate -> report -> diagnosis) in a folder of its own, which ``force`` may replace and
nothing else may. It ends as a lab would use the model: the held-out test micrographs are
diagnosed whole (tiled at the training scale, ``medscope.predict.predict_files``), not as
patches, and their micrograph-level accuracy is given with ``RUN/diagnosis/summary.json``."""

from __future__ import annotations

import csv
import os
import shutil
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medscope.config import RunConfig
from medscope.data.patches import extract_patches
from medscope.data.prepare import read_splits
from medscope.data.sources import PATCH_MANIFEST
from medscope.data.synth import make_dataset
from medscope.errors import MedscopeError
from medscope.predict import predict_files
from medscope.report.html import render_report
from medscope.run import RunDir, atomic_write_json, read_json
from medscope.workflows.training import train_run

DEMO_MARKER = ".medscope-demo"


@dataclass(frozen=True)
class DemoResult:
    run: RunDir
    metrics: dict[str, Any]
    seconds: float
    diagnosis: dict[str, Any] | None = None  # RUN/diagnosis/summary.json


def run_demo(out: Path, per_class: int, config: RunConfig, *, force: bool = False,
             progress: bool = True, echo: Callable[[str], None] = print) -> DemoResult:
    """Synthesise ``per_class`` slides per class into ``out/slides``, cut them into
    ``out/patches`` and train ``config`` (whose data and out point there) into ``out/run``;
    ``echo`` gets one line per step."""
    seed = config.train.seed
    fresh_demo_dir(out, force)
    t0 = time.perf_counter()
    echo(f"[1/4] synthesising {per_class} micrographs per class -> {out / 'slides'}")
    make_dataset(out / "slides", per_class, seed, progress=progress)
    echo(f"[2/4] cutting 500x500 patches (stride 250), dropping artifact patches -> "
         f"{out / 'patches'}")
    # Overlapping patches (stride 250) give ~9 per slide; the split keeps a slide's together.
    counts = extract_patches(out / "slides", out / "patches", 500, stride=250,
                             progress=progress)
    echo(f"      kept {counts.get('ok', 0)}, dropped {dropped_summary(counts)}")
    echo(f"[3/4] training {config.model.name} at {config.data.img_size}px for "
         f"{config.train.epochs} epochs, then evaluating on the held-out test slides")
    run = train_run(config, progress=progress)
    echo(f"[4/4] diagnosing the held-out test micrographs whole (tiled at the training "
         f"scale) -> {run.root / DIAGNOSIS}")
    summary = diagnose_test_micrographs(run, out / "slides", config.data.path,
                                        progress=progress)
    echo(diagnosis_line(summary))
    render_report(run)  # again: now with the whole micrographs and their heat maps
    return DemoResult(run, read_json(run.metrics), time.perf_counter() - t0, summary)


def fresh_demo_dir(out: Path, force: bool) -> None:
    """An empty ``out`` for the demo. ``force`` replaces an earlier demo, and only that: a
    folder without the demo's marker (or an older demo's slides/synth.json) is never deleted."""
    if out.exists():
        if not out.is_dir():
            raise MedscopeError(f"{out}: exists and is not a directory")
        if not force:
            raise MedscopeError(f"{out}: exists; pass --force to replace the earlier demo")
        earlier = (out / DEMO_MARKER).is_file() or (out / "slides" / "synth.json").is_file()
        if any(out.iterdir()) and not earlier:
            raise MedscopeError(f"{out}: not an earlier medscope demo; refusing to delete it "
                                "(choose another --out)")
        shutil.rmtree(out)
    out.mkdir(parents=True)
    (out / DEMO_MARKER).write_text("made by `medscope demo`; --force may replace this folder\n")


def dropped_summary(counts: dict[str, int]) -> str:
    """``extract_patches``' counts of dropped patches, by reason, for one line."""
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items()) if k != "ok") or "none"


DIAGNOSIS = "diagnosis"  # RUN/diagnosis: per-tile CSVs, heat maps and summary.json


def test_micrographs(run: RunDir, patches_dir: Path) -> list[tuple[str, str]]:
    """(source micrograph relative to the slides folder, its class) of every micrograph whose
    patches went to the run's test split: ``splits.csv`` test patches -> ``patches.csv``
    ``source``. The split keeps a micrograph's patches together, so none was trained on."""
    test = {r["path"] for r in read_splits(run.splits) if r["split"] == "test"}
    with (patches_dir / PATCH_MANIFEST).open(newline="") as fh:
        sources = {(r["source"], r["class"]) for r in csv.DictReader(fh)
                   if r.get("patch") and r["patch"] in test}
    return sorted(sources)


def diagnose_test_micrographs(run: RunDir, slides_dir: Path, patches_dir: Path, *,
                              progress: bool = True) -> dict[str, Any]:
    """Diagnose the test micrographs whole through ``predict_files`` (``tiles="auto"``, tile
    outputs and heat maps in ``RUN/diagnosis``) and write ``RUN/diagnosis/summary.json``:
    unit, n, accuracy (every micrograph counts, referred ones too; one with no call is
    wrong), referred (count), referred_by_reason and one entry per image. ``file`` and
    ``heatmap`` are relative to ``RUN/diagnosis`` (``heatmap`` null where none was drawn)."""
    folder = run.root / DIAGNOSIS
    micrographs = test_micrographs(run, Path(patches_dir))
    files = [slides_dir / rel for rel, _ in micrographs]
    rows = predict_files(run.root, files, tiles="auto", tiles_dir=folder, progress=progress) \
        if files else []
    stems = [f.stem for f in files]
    images = []
    for i, ((_, label), path, row) in enumerate(zip(micrographs, files, rows, strict=True)):
        name = path.stem if stems.count(path.stem) == 1 else f"{i:05d}-{path.stem}"
        heatmap = folder / f"{name}.heatmap.png"
        images.append({
            "file": _relative(path, folder), "label": label,
            "prediction": row.get("prediction") or None,
            "probability": _number(row.get("probability")),
            "refer_to_expert": row.get("refer_to_expert") == "yes",
            "refer_reason": row.get("refer_reason") or row.get("error") or "",
            "heatmap": heatmap.name if heatmap.is_file() else None})
    referred = [im for im in images if im["refer_to_expert"]]
    summary = {
        "unit": "micrograph", "n": len(images),
        "accuracy": (sum(im["prediction"] == im["label"] for im in images) / len(images)
                     if images else None),
        "referred": len(referred),
        "referred_by_reason": dict(Counter(im["refer_reason"] or "?" for im in referred)),
        "images": images}
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_json(folder / "summary.json", summary)
    return summary


def diagnosis_line(summary: dict[str, Any]) -> str:
    """The micrograph-level result in one line."""
    if not summary["n"]:
        return "      no test micrographs to diagnose"
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(summary["referred_by_reason"].items()))
    return (f"      micrograph-level accuracy {summary['accuracy']:.4f} on {summary['n']} whole "
            f"test micrographs; referred to an expert {summary['referred']}"
            + (f" ({reasons})" if reasons else ""))


def _relative(path: Path, root: Path) -> str:
    """``path`` relative to ``root`` (with ``..`` where it lies beside it), POSIX style."""
    return Path(os.path.relpath(path, root)).as_posix()


def _number(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None
