"""Experiment tracking behind one small interface: MLflow, TensorBoard or nothing.

The run directory stays the source of truth; a tracker only mirrors it. So after ``start`` a
tracker never stops a training: a failed log call is a warning and the tracker goes quiet.

The training loop calls, in order::

    tracker = make_tracker(spec)            # before any work: a bad spec fails early
    tracker.start(run.root, config_dict)    # flattened to dotted params
    tracker.log_epoch(epoch, history_row)   # each epoch; numeric values, step = epoch
    tracker.log_final(metrics, [run.report, run.metrics])
    tracker.end()                           # or tracker.end("FAILED") on an exception

MLflow is configured as its users configure it elsewhere: ``MLFLOW_TRACKING_URI`` and
``MLFLOW_EXPERIMENT_NAME`` (else ``MLFLOW_EXPERIMENT_ID``, which must exist) are honoured
(``--track mlflow:URI`` wins over the first); without them runs go to
``sqlite:///runs/mlflow.db``, experiment ``medscope``. Artefacts: the report,
metrics.json and the best checkpoint pair (``checkpoints/best.safetensors`` + ``best.json``,
which ``medscope predict`` and ``serve`` load) -- never a pickled model.
"""

from __future__ import annotations

import logging
import os
import re
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from medscope.errors import MedscopeError, first_line
from medscope.run import RunDir, atomic_write_json, read_json

log = logging.getLogger("medscope")

DEFAULT_MLFLOW_URI = "sqlite:///runs/mlflow.db"
EXPERIMENT = "medscope"
INSTALL_HINT = "pip install medscope[track]"
# The MLflow run id is kept here, so that a resumed training run continues its MLflow run.
STATE_FILE = "tracking.json"


class Tracker(ABC):
    """Mirrors one training run to a tracking backend."""

    @abstractmethod
    def start(self, run_root: Path, params: Mapping[str, Any]) -> None: ...

    @abstractmethod
    def log_epoch(self, epoch: int, row: Mapping[str, Any]) -> None: ...

    @abstractmethod
    def log_final(self, metrics: Mapping[str, Any], artifacts: list[Path]) -> None: ...

    @abstractmethod
    def end(self, status: str = "FINISHED") -> None: ...


class NullTracker(Tracker):
    """Tracks nothing (``--track none``, the default)."""

    def start(self, run_root: Path, params: Mapping[str, Any]) -> None:
        pass

    def log_epoch(self, epoch: int, row: Mapping[str, Any]) -> None:
        pass

    def log_final(self, metrics: Mapping[str, Any], artifacts: list[Path]) -> None:
        pass

    def end(self, status: str = "FINISHED") -> None:
        pass


class _Quiet:
    """Runs logging calls until the first failure, then warns once and skips the rest."""

    def __init__(self, name: str) -> None:
        self.name, self.failed = name, False

    def __call__(self, action: Callable[[], None]) -> None:
        if self.failed:
            return
        try:
            action()
        except Exception as exc:  # noqa: BLE001 - tracking must never stop a training run
            self.failed = True
            first = first_line(exc)
            log.warning("%s tracking stopped (the run directory is complete): %s",
                        self.name, first)


class MLflowTracker(Tracker):
    """Params, per-epoch and final metrics, report, metrics.json and the best checkpoint pair
    to an MLflow store: ``uri``, else $MLFLOW_TRACKING_URI, else a local SQLite file (works
    offline); the experiment is ``experiment``, else $MLFLOW_EXPERIMENT_NAME, else medscope."""

    def __init__(self, uri: str | None = None, experiment: str | None = None) -> None:
        try:
            from mlflow import MlflowClient
        except ImportError:
            raise MedscopeError(f"--track mlflow needs MLflow: {INSTALL_HINT}") from None
        self.uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_MLFLOW_URI
        self.experiment = experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME") or EXPERIMENT
        # As MLflow's own fluent API: a name (given or in the environment) before an id.
        self.experiment_id = (None if experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME")
                              else os.environ.get("MLFLOW_EXPERIMENT_ID") or None)
        self.run_root: Path | None = None
        self._client_class = MlflowClient
        self.client = None
        self.run_id: str | None = None
        self._safely = _Quiet("MLflow")

    def start(self, run_root: Path, params: Mapping[str, Any]) -> None:
        run_root = self.run_root = Path(run_root)
        try:
            self.client = self._client_class(tracking_uri=self._prepared_uri())
            self.run_id = self._resumed_run_id(run_root) or self._new_run(run_root, params)
        except MedscopeError:
            raise
        except Exception as exc:  # noqa: BLE001 - any backend failure is the user's URI/server
            first = first_line(exc)
            raise MedscopeError(f"MLflow tracking at {self.uri}: {first}") from None
        atomic_write_json(run_root / STATE_FILE, {"mlflow": {"uri": self.uri,
                                                             "run_id": self.run_id}})

    def log_epoch(self, epoch: int, row: Mapping[str, Any]) -> None:
        values = {k: v for k, v in numeric_items(row) if k != "epoch"}
        self._safely(lambda: self._log_metrics(values, step=epoch))

    def log_final(self, metrics: Mapping[str, Any], artifacts: list[Path]) -> None:
        values = {f"test.{k}": v for k, v in numeric_items(metrics)}
        self._safely(lambda: self._log_metrics(values, step=0))
        for path in map(Path, artifacts):
            if path.is_file():
                self._safely(lambda p=path: self.client.log_artifact(self.run_id, str(p)))
        if self.run_root is not None:
            # The model as medscope saves it: weights (safetensors) and their JSON metadata,
            # loadable with `medscope predict` from the downloaded folder; nothing pickled.
            best = RunDir(self.run_root).best
            for path in (best.with_suffix(".safetensors"), best.with_suffix(".json")):
                if path.is_file():
                    self._safely(lambda p=path: self.client.log_artifact(
                        self.run_id, str(p), "checkpoints"))

    def end(self, status: str = "FINISHED") -> None:
        if self.run_id is not None:
            self._safely(lambda: self.client.set_terminated(self.run_id, status=status))

    def _prepared_uri(self) -> str:
        db = _sqlite_path(self.uri)
        if db is not None:
            db.parent.mkdir(parents=True, exist_ok=True)
        return self.uri

    def _experiment_id(self) -> str:
        if self.experiment_id is not None:
            return self._existing_experiment_id(self.experiment_id)
        experiment = self.client.get_experiment_by_name(self.experiment)
        if experiment is not None:
            return experiment.experiment_id
        db = _sqlite_path(self.uri)
        # MLflow's default artifact root is ./mlruns in whatever folder training started
        # from; beside the database file keeps a local store in one place.
        location = (db.parent.resolve() / "mlflow-artifacts").as_uri() if db else None
        return self.client.create_experiment(self.experiment, artifact_location=location)

    def _existing_experiment_id(self, experiment_id: str) -> str:
        try:
            return self.client.get_experiment(experiment_id).experiment_id
        except Exception:  # noqa: BLE001 - MLflow raises its own error kinds per backend
            raise MedscopeError(f"MLFLOW_EXPERIMENT_ID={experiment_id}: no such experiment at "
                                f"{self.uri}") from None

    def _new_run(self, run_root: Path, params: Mapping[str, Any]) -> str:
        from mlflow.entities import Param

        run = self.client.create_run(
            self._experiment_id(), run_name=run_root.name,
            tags={"medscope.run_dir": str(run_root.resolve())})
        flat = [Param(_mlflow_key(k), _param_value(v)) for k, v in flatten(params).items()]
        for start in range(0, len(flat), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(run.info.run_id, params=flat[start:start + 100])
        return run.info.run_id

    def _resumed_run_id(self, run_root: Path) -> str | None:
        state = run_root / STATE_FILE
        if not state.is_file():
            return None
        mlflow_state = read_json(state).get("mlflow") or {}
        if mlflow_state.get("uri") != self.uri or not mlflow_state.get("run_id"):
            return None
        self.client.update_run(mlflow_state["run_id"], status="RUNNING")
        return mlflow_state["run_id"]

    def _log_metrics(self, values: Mapping[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(_mlflow_key(k), v, now, step) for k, v in values.items()]
        for start in range(0, len(metrics), 1000):  # MLflow's per-batch limit
            self.client.log_batch(self.run_id, metrics=metrics[start:start + 1000])


class TensorBoardTracker(Tracker):
    """Scalars per epoch (``epoch/<name>``) and final test metrics (``test/<name>``) in
    ``run_root/tensorboard`` unless another folder is given."""

    def __init__(self, logdir: Path | None = None) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise MedscopeError(f"--track tensorboard needs TensorBoard: {INSTALL_HINT}") from None
        self.logdir = Path(logdir) if logdir is not None else None
        self._writer_class = SummaryWriter
        self.writer = None
        self._safely = _Quiet("TensorBoard")

    def start(self, run_root: Path, params: Mapping[str, Any]) -> None:
        self.logdir = self.logdir or Path(run_root) / "tensorboard"
        self.writer = self._writer_class(log_dir=str(self.logdir))
        text = "\n".join(f"    {k}: {v}" for k, v in flatten(params).items())
        self._safely(lambda: self.writer.add_text("config", text, 0))

    def log_epoch(self, epoch: int, row: Mapping[str, Any]) -> None:
        for key, value in numeric_items(row):
            if key != "epoch":
                self._safely(lambda k=key, v=value: self.writer.add_scalar(f"epoch/{k}", v, epoch))
        self._safely(lambda: self.writer.flush())

    def log_final(self, metrics: Mapping[str, Any], artifacts: list[Path]) -> None:
        for key, value in numeric_items(metrics):
            self._safely(lambda k=key, v=value: self.writer.add_scalar(f"test/{k}", v, 0))
        self._safely(lambda: self.writer.flush())

    def end(self, status: str = "FINISHED") -> None:
        if self.writer is not None:
            self._safely(lambda: self.writer.close())


def make_tracker(spec: str | None) -> Tracker:
    """``None``/``"none"``, ``"mlflow"`` ($MLFLOW_TRACKING_URI or the local default),
    ``"mlflow:URI"`` or ``"tensorboard"``."""
    name, _, uri = (spec or "none").strip().partition(":")
    if name == "none" and not uri:
        return NullTracker()
    if name == "mlflow":
        return MLflowTracker(uri or None)
    if name == "tensorboard" and not uri:
        return TensorBoardTracker()
    raise MedscopeError(f"--track {spec!r}: expected none, mlflow, mlflow:URI or tensorboard")


# ---------------------------------------------------------------- flattening


def flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts to dotted keys: {"train": {"lr": 0.1}} -> {"train.lr": 0.1}."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat


def numeric_items(values: Mapping[str, Any]) -> Iterator[tuple[str, float]]:
    """The flattened entries that are numbers (lists such as the confusion matrix, strings,
    flags and missing values are not metrics)."""
    for key, value in flatten(values).items():
        if isinstance(value, int | float) and not isinstance(value, bool):
            yield key, float(value)


def _mlflow_key(key: str) -> str:
    # MLflow accepts only these characters in names; class names may hold anything.
    return re.sub(r"[^\w\-. :/]", "_", key)[:250]


def _param_value(value: Any) -> str:
    return str(value)[:6000]  # MLflow's limit on a param value


def _sqlite_path(uri: str) -> Path | None:
    return Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None
