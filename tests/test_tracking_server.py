"""MLflow as its users configure it: ``MLFLOW_TRACKING_URI`` and ``MLFLOW_EXPERIMENT_NAME``
honoured, and a real training run logged to a real ``mlflow server`` (SQLite backend, proxied
artefacts) that the test starts on 127.0.0.1 and stops after."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from medscope.tracking import DEFAULT_MLFLOW_URI, EXPERIMENT, make_tracker
from tests.conftest import one_torch_thread, tiny_config

mlflow = pytest.importorskip("mlflow", reason="mlflow is not installed (pip install "
                             "medscope[track])")

QUIET = {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "1"}  # nothing leaves the machine


def test_environment_sets_uri_and_experiment_unless_the_spec_names_a_uri(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    tracker = make_tracker("mlflow")
    assert (tracker.uri, tracker.experiment) == (DEFAULT_MLFLOW_URI, EXPERIMENT)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "chest-xray")
    tracker = make_tracker("mlflow")
    assert (tracker.uri, tracker.experiment) == ("http://127.0.0.1:5999", "chest-xray")
    assert make_tracker("mlflow:sqlite:///x.db").uri == "sqlite:///x.db"


def test_experiment_id_from_the_environment_when_no_name(monkeypatch, tmp_path):
    from medscope.errors import MedscopeError

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    made = mlflow.MlflowClient(tracking_uri=uri).create_experiment("by-id")
    monkeypatch.setenv("MLFLOW_EXPERIMENT_ID", made)
    tracker = make_tracker(f"mlflow:{uri}")
    tracker.start(tmp_path / "run", {"a": 1})
    run = mlflow.MlflowClient(tracking_uri=uri).get_run(tracker.run_id)
    assert run.info.experiment_id == made
    tracker.end()
    monkeypatch.setenv("MLFLOW_EXPERIMENT_ID", "987654")
    with pytest.raises(MedscopeError, match="MLFLOW_EXPERIMENT_ID=987654: no such experiment"):
        make_tracker(f"mlflow:{uri}").start(tmp_path / "run2", {})
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "by-name")  # a name wins, as in MLflow
    assert make_tracker(f"mlflow:{uri}").experiment_id is None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path):
    """``mlflow server`` on 127.0.0.1 with a SQLite store; its URI. Stopped at teardown."""
    port = _free_port()
    root = tmp_path / "server"
    root.mkdir()
    log = (root / "server.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
         "--artifacts-destination", str(root / "artifacts")],
        cwd=root, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **QUIET},
        start_new_session=True)  # its own process group: the workers stop with it
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail("mlflow server did not start: "
                            + (root / "server.log").read_text()[-2000:])
            time.sleep(0.5)
        yield uri, root
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


@pytest.mark.slow  # starts an MLflow server and trains a tiny model
def test_training_run_is_logged_to_a_real_server(mlflow_server, image_folder, tmp_path,
                                                 monkeypatch):
    from mlflow import MlflowClient

    from medscope.api import train

    uri, server_root = mlflow_server
    for key, value in {**QUIET, "MLFLOW_TRACKING_URI": uri,
                       "MLFLOW_EXPERIMENT_NAME": "medscope-server-test"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(tmp_path)  # a stray ./runs/mlflow.db or ./mlruns would show up here
    with one_torch_thread():
        run = train(tiny_config(image_folder, tmp_path / "run", track="mlflow"), progress=False)

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("medscope-server-test")
    assert experiment is not None and client.get_experiment_by_name(EXPERIMENT) is None
    (logged,) = client.search_runs([experiment.experiment_id])
    assert logged.info.status == "FINISHED" and logged.info.run_name == "run"
    metrics = json.loads(run.metrics.read_text())
    assert logged.data.metrics["test.accuracy"] == pytest.approx(metrics["accuracy"])
    assert logged.data.params["model.name"] == "simple_cnn"
    top = {a.path for a in client.list_artifacts(logged.info.run_id)}
    assert {"report.html", "metrics.json", "checkpoints"} <= top
    pair = {a.path for a in client.list_artifacts(logged.info.run_id, "checkpoints")}
    assert pair == {"checkpoints/best.safetensors", "checkpoints/best.json"}
    local = Path(mlflow.artifacts.download_artifacts(
        run_id=logged.info.run_id, artifact_path="checkpoints", tracking_uri=uri,
        dst_path=str(tmp_path / "downloaded")))
    for name in ("best.safetensors", "best.json"):
        assert (local / name).read_bytes() == (run.root / "checkpoints" / name).read_bytes()
    stored = [p for p in (server_root / "artifacts").rglob("*") if p.is_file()]
    assert stored and not [p for p in stored if p.suffix in (".pkl", ".pickle", ".pt", ".pth")]
    assert not (tmp_path / "runs").exists() and not (tmp_path / "mlruns").exists()
