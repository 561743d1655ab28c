"""End-to-end: a tiny run writes every artefact; checkpoints, evaluate and predict agree."""

import csv
import json

import numpy as np
import pytest
import torch

from medscope.api import evaluate, train
from medscope.core.checkpoint import load_checkpoint, model_state
from medscope.errors import MedscopeError
from medscope.predict import predict_files
from medscope.predictor import Predictor
from medscope.run import RunDir
from tests.conftest import interrupt_after_epoch, tiny_config

RUN_FILES = ["config.yaml", "splits.csv", "history.csv", "checkpoints/best.safetensors",
             "checkpoints/best.json", "checkpoints/last.safetensors", "metrics.json",
             "learning_curves.png", "confusion_matrix.png", "report.html"]


def test_run_dir_holds_every_artefact(trained_run):
    for name in RUN_FILES:
        assert (trained_run.root / name).is_file(), name
    history = list(csv.DictReader(trained_run.history.open()))
    assert [int(r["epoch"]) for r in history] == [1, 2]
    assert all(float(r["train_loss"]) > 0 and r["val_accuracy"] for r in history)
    meta = json.loads(trained_run.best.with_suffix(".json").read_text())
    assert meta["classes"] == ["alpha", "beta", "gamma"]
    assert meta["img_size"] == 32 and meta["in_chans"] == 3 and len(meta["mean"]) == 3
    assert meta["versions"]["torch"] == torch.__version__
    metrics = json.loads(trained_run.metrics.read_text())
    for key in ("accuracy", "precision_macro", "recall_macro", "f1_macro", "precision_micro",
                "recall_micro", "f1_micro", "per_class", "confusion_matrix"):
        assert key in metrics
    assert sum(map(sum, metrics["confusion_matrix"])) == metrics["n"] == 9
    report = trained_run.report.read_text()
    assert "data:image/png;base64," in report and "gamma" in report


def test_splits_are_saved_and_disjoint(trained_run):
    rows = list(csv.DictReader(trained_run.splits.open()))
    assert len(rows) == 36 and {r["split"] for r in rows} == {"train", "val", "test"}
    assert len({r["path"] for r in rows}) == 36


def test_checkpoint_reloads_to_identical_logits(trained_run):
    tensors, meta = load_checkpoint(trained_run.best)
    from medscope.models import create_model

    a = create_model("simple_cnn", 3, img_size=32).eval()
    a.load_state_dict(model_state(tensors))
    predictor = Predictor.load(trained_run.root, precision="fp32")
    a, b = predictor.runtime.prepare(a), predictor.model  # same layout: same kernels
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(a(x), b(x))


def test_predict_matches_evaluate(trained_run, tmp_path):
    metrics = evaluate(trained_run.root, out=tmp_path / "ev", progress=False)
    rows = list(csv.DictReader(trained_run.splits.open()))
    from medscope.config import load_config

    data_root = load_config(trained_run.config).data.path
    test = [data_root / r["path"] for r in rows if r["split"] == "test"]
    preds = predict_files(trained_run.root, test, tmp_path / "p.csv", progress=False)
    classes = metrics["classes"]
    truth = [r["label"] for r in rows if r["split"] == "test"]
    by_file = {p["file"]: p for p in preds}
    predicted = [by_file[str(f)]["prediction"] for f in test]
    cm = np.zeros((3, 3), int)
    for t, p in zip(truth, predicted, strict=True):
        cm[classes.index(t), classes.index(p)] += 1
    assert cm.tolist() == metrics["confusion_matrix"]
    written = list(csv.DictReader((tmp_path / "p.csv").open()))
    assert len(written) == len(test)
    probs = np.array([[float(r[f"p_{c}"]) for c in classes] for r in written])
    assert np.allclose(probs.sum(1), 1, atol=1e-4)


def test_finished_run_is_not_overwritten(trained_run, image_folder):
    before = trained_run.metrics.read_bytes()
    with pytest.raises(MedscopeError, match="already holds a finished run"):
        train(tiny_config(image_folder, trained_run.root), progress=False)
    assert trained_run.metrics.read_bytes() == before


def test_callbacks_see_each_saved_epoch_with_the_weights_that_were_saved(image_folder,
                                                                         tmp_path):
    seen = []

    def record(model, _optimizer, state, row, is_best):
        seen.append((row["epoch"], is_best, float(row["val_accuracy"]),
                     {k: v.detach().clone() for k, v in model.state_dict().items()}))

    run = train(tiny_config(image_folder, tmp_path / "cb", **{"train.epochs": 3}),
                progress=False, callbacks=[record])
    assert [int(e) for e, *_ in seen] == [1, 2, 3]
    history = list(csv.DictReader(run.history.open()))
    assert [float(r["val_accuracy"]) for r in history] == pytest.approx([v for _, _, v, _ in seen])
    # The weights a callback sees after the last epoch are the ones saved as "last".
    last, _ = load_checkpoint(run.last)
    for key, value in model_state(last).items():
        torch.testing.assert_close(seen[-1][3][key], value)


@pytest.mark.slow
def test_interrupted_run_resumes_where_it_stopped(image_folder, tmp_path, monkeypatch):
    full = train(tiny_config(image_folder, tmp_path / "full", **{"train.epochs": 3}),
                 progress=False)
    cfg = tiny_config(image_folder, tmp_path / "r", **{"train.epochs": 3})
    restore_writer = interrupt_after_epoch(monkeypatch, 2)  # Ctrl-C there
    with pytest.raises(KeyboardInterrupt):
        train(cfg, progress=False)
    restore_writer()
    run = RunDir(cfg.out)
    assert run.has_partial_run() and not run.is_finished()
    with pytest.raises(MedscopeError, match="--resume"):
        train(cfg, progress=False)
    train(cfg, resume=True, progress=False)
    assert run.is_finished()
    full_hist = list(csv.DictReader(full.history.open()))
    resumed = list(csv.DictReader(run.history.open()))
    assert [r["epoch"] for r in resumed] == ["1", "2", "3"]
    # Same seed, same split, per-epoch seeding: the resumed run matches the uninterrupted one.
    for a, b in zip(full_hist, resumed, strict=True):
        assert float(a["train_loss"]) == pytest.approx(float(b["train_loss"]), rel=1e-4)
        assert float(a["lr"]) == pytest.approx(float(b["lr"]), rel=1e-6)


@pytest.mark.slow
def test_resumed_run_augments_and_mixes_as_the_uninterrupted_one(image_folder, tmp_path,
                                                                 monkeypatch):
    """Batched augmentation draws from a generator reseeded every epoch: epoch 2 of a resumed
    microscopy + CutMix run sees the very batches of the uninterrupted run."""
    extra = {"train.epochs": 2, "data.augment": "microscopy", "data.cutmix": 1.0,
             "train.precision": "fp32"}
    full = train(tiny_config(image_folder, tmp_path / "full", **extra), progress=False)
    cfg = tiny_config(image_folder, tmp_path / "r", **extra)
    restore_writer = interrupt_after_epoch(monkeypatch, 1)  # Ctrl-C there
    with pytest.raises(KeyboardInterrupt):
        train(cfg, progress=False)
    restore_writer()
    resumed = train(cfg, resume=True, progress=False)
    a, b = (list(csv.DictReader(r.history.open())) for r in (full, resumed))
    assert [float(r["train_loss"]) for r in a] == pytest.approx(
        [float(r["train_loss"]) for r in b], rel=1e-5)
    wa, wb = (model_state(load_checkpoint(r.last)[0]) for r in (full, resumed))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_training_calibrates_and_evaluation_reports_cis(trained_run):
    meta = json.loads(trained_run.best.with_suffix(".json").read_text())
    assert meta["temperature"] > 0 and "selective_threshold" in meta
    metrics = json.loads(trained_run.metrics.read_text())
    assert metrics["calibration"]["temperature"] == pytest.approx(meta["temperature"])
    low, high = metrics["ci"]["accuracy"]["low"], metrics["ci"]["accuracy"]["high"]
    assert low <= metrics["accuracy"] <= high
    for png in ("roc_curves.png", "reliability_diagram.png", "coverage_accuracy.png"):
        assert (trained_run.root / png).is_file()


@pytest.mark.slow
def test_track_mlflow_mirrors_a_cli_run(image_folder, tmp_path):
    pytest.importorskip("mlflow")
    from medscope.cli import main

    store = tmp_path / "mlflow.db"
    out = tmp_path / "tracked"
    code = main(["train", "-q", "--data", str(image_folder), "--out", str(out), "--img-size",
                 "16", "--epochs", "1", "--batch-size", "8", "--track", f"mlflow:sqlite:///{store}"])
    assert code == 0
    import mlflow

    client = mlflow.tracking.MlflowClient(f"sqlite:///{store}")
    run_id = json.loads((out / "tracking.json").read_text())["mlflow"]["run_id"]
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert "test.accuracy" in run.data.metrics and run.data.params["train.epochs"] == "1"
