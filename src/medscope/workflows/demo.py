"""The demo: the main job end to end on the built-in dataset (synth -> patches -> train ->
evaluate -> report) in a folder of its own, which ``force`` may replace and nothing else may."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medscope.config import RunConfig
from medscope.data.patches import extract_patches
from medscope.data.synth import make_dataset
from medscope.errors import MedscopeError
from medscope.run import RunDir, read_json
from medscope.workflows.training import train_run

DEMO_MARKER = ".medscope-demo"


@dataclass(frozen=True)
class DemoResult:
    run: RunDir
    metrics: dict[str, Any]
    seconds: float


def run_demo(out: Path, per_class: int, config: RunConfig, *, force: bool = False,
             progress: bool = True, echo: Callable[[str], None] = print) -> DemoResult:
    """Synthesise ``per_class`` slides per class into ``out/slides``, cut them into
    ``out/patches`` and train ``config`` (whose data and out point there) into ``out/run``;
    ``echo`` gets one line per step."""
    seed = config.train.seed
    fresh_demo_dir(out, force)
    t0 = time.perf_counter()
    echo(f"[1/3] synthesising {per_class} micrographs per class -> {out / 'slides'}")
    make_dataset(out / "slides", per_class, seed, progress=progress)
    echo(f"[2/3] cutting 500x500 patches (stride 250), dropping artifact patches -> "
         f"{out / 'patches'}")
    # Overlapping patches (stride 250) give ~9 per slide; the split keeps a slide's together.
    counts = extract_patches(out / "slides", out / "patches", 500, stride=250,
                             progress=progress)
    echo(f"      kept {counts.get('ok', 0)}, dropped {dropped_summary(counts)}")
    echo(f"[3/3] training {config.model.name} at {config.data.img_size}px for "
         f"{config.train.epochs} epochs, then evaluating on the held-out test slides")
    run = train_run(config, progress=progress)
    return DemoResult(run, read_json(run.metrics), time.perf_counter() - t0)


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
