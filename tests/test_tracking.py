"""Experiment tracking: MLflow (local SQLite store) and TensorBoard read back what was logged."""

from __future__ import annotations

import json
import sys

import pytest

from medscope.errors import MedscopeError
from medscope.tracking import (
    DEFAULT_MLFLOW_URI,
    MLflowTracker,
    NullTracker,
    TensorBoardTracker,
    flatten,
    make_tracker,
)

PARAMS = {"model": {"name": "simple_cnn", "pretrained": False},
          "train": {"lr": 0.001, "epochs": 2}, "data": {"img_size": 32, "classes": None}}
EPOCHS = [{"epoch": 1, "train_loss": 1.1, "val_loss": 1.0, "val_accuracy": 0.5, "seconds": 2.0},
          {"epoch": 2, "train_loss": 0.7, "val_loss": 0.8, "val_accuracy": 0.75, "seconds": 1.5}]
FINAL = {"n": 9, "accuracy": 0.8, "f1_macro": 0.7, "roc_auc_macro": None, "multilabel": False,
         "confusion_matrix": [[3, 0], [1, 5]], "classes": ["a", "b"],
         "per_class": {"blood cell (RBC)": {"f1": 0.6}}, "calibration": {"ece": 0.04}}


def _artifacts(root):
    report, metrics = root / "report.html", root / "metrics.json"
    report.write_text("<html>report</html>")
    metrics.write_text(json.dumps(FINAL))
    return [report, metrics, root / "missing.png"]


def _track(tracker, root):
    tracker.start(root, PARAMS)
    for row in EPOCHS:
        tracker.log_epoch(row["epoch"], row)
    tracker.log_final(FINAL, _artifacts(root))
    tracker.end()


def test_make_tracker_parses_specs(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert isinstance(make_tracker(None), NullTracker)
    assert isinstance(make_tracker("none"), NullTracker)
    assert make_tracker("mlflow").uri == DEFAULT_MLFLOW_URI
    assert make_tracker("mlflow:http://localhost:5000").uri == "http://localhost:5000"
    assert isinstance(make_tracker("tensorboard"), TensorBoardTracker)
    with pytest.raises(MedscopeError, match="'wandb'.*expected none, mlflow"):
        make_tracker("wandb")


def test_flatten_gives_dotted_keys():
    assert flatten(PARAMS)["train.lr"] == 0.001
    assert flatten(PARAMS)["model.name"] == "simple_cnn"


@pytest.mark.slow
def test_mlflow_sqlite_store_holds_params_and_metrics(tmp_path):
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    root = tmp_path / "run1"
    root.mkdir()
    _track(make_tracker(f"mlflow:{uri}"), root)

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("medscope")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == "run1" and run.info.status == "FINISHED"
    assert run.data.params["train.lr"] == "0.001"
    assert run.data.params["model.name"] == "simple_cnn"
    assert run.data.metrics["test.accuracy"] == pytest.approx(0.8)
    assert run.data.metrics["test.calibration.ece"] == pytest.approx(0.04)
    assert run.data.metrics["test.per_class.blood cell _RBC_.f1"] == pytest.approx(0.6)
    assert "test.roc_auc_macro" not in run.data.metrics  # None is not a metric
    history = client.get_metric_history(run.info.run_id, "val_accuracy")
    assert [(m.step, m.value) for m in history] == [(1, 0.5), (2, 0.75)]
    names = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert names == {"report.html", "metrics.json"}
    # Artifacts live beside the database, not in ./mlruns of whatever folder training ran in.
    assert (tmp_path / "store" / "mlflow-artifacts").is_dir()
    state = json.loads((root / "tracking.json").read_text())
    assert state["mlflow"]["run_id"] == run.info.run_id


def test_mlflow_resumed_run_continues_the_same_mlflow_run(tmp_path):
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    root = tmp_path / "run"
    root.mkdir()
    first = MLflowTracker(uri)
    first.start(root, PARAMS)
    first.log_epoch(1, EPOCHS[0])
    first.end("KILLED")
    second = MLflowTracker(uri)
    second.start(root, PARAMS)
    second.log_epoch(2, EPOCHS[1])
    second.end()
    assert second.run_id == first.run_id
    client = MlflowClient(tracking_uri=uri)
    steps = [m.step for m in client.get_metric_history(first.run_id, "train_loss")]
    assert steps == [1, 2]


def test_mlflow_bad_store_is_one_line_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(MedscopeError, match="MLflow tracking at sqlite:///"):
        MLflowTracker(f"sqlite:///{blocker / 'sub' / 'mlflow.db'}").start(tmp_path, PARAMS)


def test_tensorboard_scalars_read_back(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _track(make_tracker("tensorboard"), tmp_path)
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    scalars = events.Tags()["scalars"]
    assert {"epoch/val_accuracy", "epoch/train_loss", "test/accuracy"} <= set(scalars)
    assert "epoch/epoch" not in scalars
    val = [(e.step, e.value) for e in events.Scalars("epoch/val_accuracy")]
    assert val == [(1, 0.5), (2, 0.75)]
    assert events.Scalars("test/calibration.ece")[0].value == pytest.approx(0.04)


class _FullDisk:
    """A writer whose every call fails as on a full disk."""

    def __getattr__(self, name):
        def fail(*args, **kwargs):
            raise OSError(28, "No space left on device")
        return fail


def test_failed_logging_warns_and_does_not_raise(tmp_path, caplog):
    tracker = TensorBoardTracker(tmp_path / "tb")
    tracker.start(tmp_path, PARAMS)
    tracker.writer.close()
    tracker.writer = _FullDisk()
    tracker.log_epoch(1, EPOCHS[0])
    tracker.log_final(FINAL, [])
    tracker.end()
    assert sum("tracking stopped" in r.getMessage() for r in caplog.records) == 1


@pytest.mark.parametrize(("spec", "module"), [("mlflow", "mlflow"),
                                              ("tensorboard", "torch.utils.tensorboard")])
def test_missing_package_says_how_to_install(spec, module, monkeypatch):
    monkeypatch.setitem(sys.modules, module, None)  # import now raises
    with pytest.raises(MedscopeError, match=rf"--track {spec} needs .*medscope\[track\]"):
        make_tracker(spec)
