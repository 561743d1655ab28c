"""The Python API, a facade over the rooms that do the work: ``train`` / ``resume`` a run
(``medscope.train``), ``evaluate`` it or ``evaluate_ensemble`` several (``medscope.evaluate``),
``predict`` files (``medscope.predict``), ``run_recipe`` a study's experiments
(``medscope.experiments``). The CLI is a thin layer over these functions.

    >>> from medscope.api import train, evaluate
    >>> from medscope.config import load_config
    >>> run = train(load_config("demo", {"data.path": "patches"}))
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medscope.config import RunConfig
from medscope.data.prepare import PreparedData
from medscope.evaluate.ensemble import evaluate_ensemble
from medscope.evaluate.evaluator import evaluate_run
from medscope.experiments.runner import run_recipe
from medscope.predict import Predictor, predict_files
from medscope.run import RunDir
from medscope.train.engine import EpochEnd
from medscope.train.trainer import resume_config, train_run

__all__ = ["Predictor", "evaluate", "evaluate_ensemble", "predict_files", "resume", "run_recipe",
           "train"]


def train(config: RunConfig, *, resume: bool = False, progress: bool = True,
          callbacks: Sequence[EpochEnd] = ()) -> RunDir:
    """Train a model as ``config`` says; everything lands in the run directory ``config.out``.
    ``resume`` continues an interrupted run there with this config (see :func:`resume`).
    ``callbacks(model, optimizer, state, row, is_best)`` run after each epoch is saved (``row``:
    that epoch's history row), e.g. to record a test-accuracy curve."""
    return train_run(config, resume=resume, progress=progress, callbacks=callbacks)


def resume(out: Path | str, overrides: dict[str, Any] | None = None, *,
           progress: bool = True) -> RunDir:
    """Continue the interrupted run in ``out`` with its saved config and split; ``overrides``
    (dotted keys, e.g. ``{"train.epochs": 30}``) change it, and each change is logged."""
    config, _ = resume_config(out, overrides)  # train_run logs each change
    return train_run(config, resume=True, progress=progress)


def evaluate(run: RunDir | Path | str, data_dir: Path | None = None, out: Path | None = None,
             *, precision: str = "auto", device: str = "auto", progress: bool = True,
             data: PreparedData | None = None, target_accuracy: float | None = None,
             tta: bool = False) -> dict[str, Any]:
    """Metrics of a run's best checkpoint on its test split, or on another folder of the same
    classes (written to ``RUN/eval-<folder>/`` unless ``out`` says otherwise); ``tta`` averages
    the logits of the 8 dihedral views (written to ``RUN/eval-tta/``)."""
    return evaluate_run(run, data_dir, out, data=data, precision=precision, device=device,
                        target_accuracy=target_accuracy, tta=tta, progress=progress)
