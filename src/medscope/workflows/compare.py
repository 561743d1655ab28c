"""One table across runs, CV directories and ensembles (``medscope evaluate RUN RUN --out DIR``):
size, cost, speed measured now on this machine's CPU, and test-split quality — the Keras
Applications table, for the user's own data."""

from __future__ import annotations

import contextlib
import csv
import statistics
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medscope.errors import MedscopeError
from medscope.report.compare import COLUMNS, THROUGHPUT_BATCH
from medscope.run import CvDir, RunDir, read_json
from medscope.workflows.ensemble import member_runs

WARMUP = 3


def compare_runs(paths: Sequence[Path | str], *, latency_repeats: int = 30,
                 threads: int | None = None, seed: int = 0) -> list[dict[str, Any]]:
    """One row per run, CV directory or ensemble (see ``COLUMNS``). Every path is checked
    before any measuring, so a typo in the last one costs nothing."""
    if latency_repeats < 1:
        raise MedscopeError(f"latency repeats must be at least 1, got {latency_repeats}")
    if threads is not None and threads < 1:
        raise MedscopeError(f"threads must be at least 1, got {threads}")
    kinds = [(Path(p), run_kind(Path(p))) for p in paths]
    if not kinds:
        raise MedscopeError("nothing to compare: give at least one run or CV directory")
    with _torch_threads(threads):
        return [_row(path, kind, latency_repeats, seed) for path, kind in kinds]


def run_kind(path: Path) -> str:
    """``"run"`` for a finished run directory, ``"cv"`` for a CV directory, ``"ensemble"`` for
    an ensemble's evaluation directory (its members checked too); else the error."""
    if RunDir(path).is_finished():
        return "run"
    members = member_runs(path)
    if members is not None:
        for member in members:
            if not RunDir(member).is_finished():
                raise MedscopeError(f"{path}: ensemble member {member} is not a finished run")
        return "ensemble"
    cv = CvDir(path)
    if cv.is_cv():
        if not cv.fold(1).is_finished():
            raise MedscopeError(f"{path}: CV directory without a finished fold_1 run")
        return "cv"
    if not path.exists():
        raise MedscopeError(f"{path}: no such directory")
    raise MedscopeError(f"{path}: not a finished run (metrics.json + checkpoints/best.safetensors)"
                        ", a CV directory (cv_summary.json) nor an ensemble's evaluation")


def _row(path: Path, kind: str, repeats: int, seed: int) -> dict[str, Any]:
    row = dict.fromkeys(COLUMNS)
    row.update(name=path.resolve().name, kind=kind, path=str(path))
    if kind == "ensemble":
        row.update(_ensemble_row(path, repeats, seed))
        return row
    model_run = path if kind == "run" else CvDir(path).fold(1).root
    row.update(measure_model(model_run, repeats=repeats, seed=seed))
    row.update(_run_quality(RunDir(path)) if kind == "run" else _cv_quality(path))
    return row


def _ensemble_row(path: Path, repeats: int, seed: int) -> dict[str, Any]:
    """An ensemble costs all its members: sizes, GMACs and latencies add up, throughputs add
    as rates do; with TTA each member runs 8 views, so its speed is divided by 8."""
    metrics = read_json(RunDir(path).metrics)  # an ensemble's evaluation folder
    members = member_runs(path)
    each = [measure_model(m, repeats=repeats, seed=seed) for m in members]
    views = 8 if metrics.get("tta") else 1
    sizes = {m["img_size"] for m in each}
    seconds = [training_seconds(RunDir(m).history) for m in members]
    return {
        "model": "+".join(m["model"] for m in each),
        "img_size": sizes.pop() if len(sizes) == 1 else None,
        "params": sum(m["params"] for m in each), "gmacs": sum(m["gmacs"] for m in each),
        "checkpoint_mb": sum(m["checkpoint_mb"] for m in each),
        "precision": each[0]["precision"], "threads": each[0]["threads"],
        "latency_ms": views * sum(m["latency_ms"] for m in each),
        "throughput_img_s": 1 / (views * sum(1 / m["throughput_img_s"] for m in each)),
        "train_seconds": None if None in seconds else sum(seconds),
        "members": len(members),
        **_metrics_quality(metrics),
    }


def measure_model(run_root: Path, *, repeats: int = 30, seed: int = 0) -> dict[str, Any]:
    """Size, GMACs and CPU speed of a run's best checkpoint, run as ``medscope predict`` runs
    it (bf16 autocast + channels_last where the CPU has them)."""
    from medscope.models.profile import count_params, gmacs, state_dict_mb
    from medscope.predictor import Predictor

    predictor = Predictor.load(run_root, device="cpu")
    model, size, chans = predictor.model, predictor.img_size, predictor.in_chans
    generator = torch.Generator().manual_seed(seed)
    one = torch.randint(0, 256, (1, chans, size, size), dtype=torch.uint8, generator=generator)
    batch = torch.randint(0, 256, (THROUGHPUT_BATCH, chans, size, size), dtype=torch.uint8,
                          generator=generator)
    latency = _median_seconds(predictor, one, repeats)
    # Fewer repeats for the batch: each is 32 forwards' worth of work.
    batch_seconds = _median_seconds(predictor, batch, max(3, repeats // 5))
    return {
        "model": predictor.meta["model"], "img_size": size,
        "params": count_params(model), "gmacs": gmacs(model, size, chans),
        "checkpoint_mb": state_dict_mb(model),
        "precision": "bf16" if predictor.runtime.bf16 else "fp32",
        "threads": torch.get_num_threads(),
        "latency_ms": latency * 1000, "throughput_img_s": THROUGHPUT_BATCH / batch_seconds,
    }


def _median_seconds(predictor, pixels: torch.Tensor, repeats: int) -> float:
    runtime = predictor.runtime
    with torch.inference_mode(), runtime.autocast():
        x = runtime.to_input(pixels)
        for _ in range(WARMUP):
            predictor.model(predictor.normalize(x))
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            predictor.model(predictor.normalize(x))
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def _run_quality(run: RunDir) -> dict[str, Any]:
    return {"train_seconds": training_seconds(run.history),
            **_metrics_quality(read_json(run.metrics))}


def _metrics_quality(metrics: dict[str, Any]) -> dict[str, Any]:
    ci = (metrics.get("ci") or {}).get("accuracy") or {}
    return {
        "n": metrics.get("n"),
        "accuracy": metrics.get("accuracy"), "accuracy_ci_low": ci.get("low"),
        "accuracy_ci_high": ci.get("high"), "f1_macro": metrics.get("f1_macro"),
        "roc_auc_macro": metrics.get("roc_auc_macro"),
        "ece": (metrics.get("calibration") or {}).get("ece"),
        "group_accuracy": (metrics.get("group_level") or {}).get("accuracy"),
        "group_unit": (metrics.get("group_level") or {}).get("unit"),
    }


def _cv_quality(root: Path) -> dict[str, Any]:
    cv = CvDir(root)
    summary = read_json(cv.summary)
    folds = cv.finished_folds()
    fold_metrics = [read_json(f.metrics) for f in folds]
    eces = [(m.get("calibration") or {}).get("ece") for m in fold_metrics]
    mean, std = summary_mean_std(summary, root)
    return {
        "train_seconds": sum(training_seconds(f.history) for f in folds),
        "n": sum(int(r.get("n") or 0) for r in summary.get("rows", [])) or None,
        "folds": summary.get("folds", len(folds)),
        "accuracy": mean.get("accuracy"), "accuracy_std": std.get("accuracy"),
        "f1_macro": mean.get("f1_macro"), "roc_auc_macro": mean.get("roc_auc_macro"),
        "ece": float(np.mean(eces)) if eces and None not in eces else None,
        "group_accuracy": mean.get("group_accuracy"),
        "group_accuracy_std": std.get("group_accuracy"), "group_unit": summary.get("group_unit"),
    }


def summary_mean_std(summary: dict[str, Any], root: Path
                     ) -> tuple[dict[str, float | None], dict[str, float | None]]:
    """The summary's own mean/std when it has them, else computed from its fold rows (sample
    standard deviation, ddof=1, as the fungi study's table reports it)."""
    if "mean" in summary and "std" in summary:
        return summary["mean"], summary["std"]
    rows = summary.get("rows") or []
    if not rows:
        raise MedscopeError(f"{CvDir(root).summary}: no fold rows and no mean/std")
    mean: dict[str, float | None] = {}
    std: dict[str, float | None] = {}
    for key in ("accuracy", "f1_macro", "roc_auc_macro", "loss"):
        values = [r.get(key) for r in rows]
        if any(v is None for v in values):
            mean[key] = std[key] = None
            continue
        mean[key] = float(np.mean(values))
        std[key] = float(np.std(values, ddof=1)) if len(values) > 1 else None
    return mean, std


def training_seconds(history: Path) -> float | None:
    """Sum of the ``seconds`` column of history.csv (None when the file is missing)."""
    if not history.is_file():
        return None
    with history.open(newline="") as fh:
        return sum(float(r["seconds"]) for r in csv.DictReader(fh) if r.get("seconds"))


@contextlib.contextmanager
def _torch_threads(threads: int | None) -> Iterator[None]:
    # Latency depends on the thread count: fix it for the whole table, then put it back.
    old = torch.get_num_threads()
    torch.set_num_threads(threads or old)
    try:
        yield
    finally:
        torch.set_num_threads(old)
