"""Distributed training on CPU: 2 gloo processes on loopback, the samplers' shards, and
distributed evaluation that counts each image exactly once."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from PIL import Image
from sklearn.metrics import confusion_matrix
from torch.utils.data import DataLoader, Subset

from medscope.cli import main
from medscope.config import load_config
from medscope.core.runtime import predict_logits, select_runtime, unwrap
from medscope.data.dataset import PixelDataset
from medscope.data.prepare import run_samples
from medscope.errors import MedscopeError
from medscope.predictor import Predictor
from medscope.run import RunDir
from medscope.train.distributed import (
    DistContext,
    DistributedWeightedSampler,
    init_distributed,
)
from medscope.train.engine import gathered_logits
from medscope.train.setup import train_sampler_for
from tests.conftest import tiny_config

SRC = Path(__file__).resolve().parents[2] / "src"


class _Data:
    """The two things a sampler reads from ``PreparedData``: training labels and classes."""

    def __init__(self, labels: np.ndarray, n_classes: int) -> None:
        self._labels = labels
        self.source = type("Source", (), {"classes": [f"c{i}" for i in range(n_classes)]})()

    def labels(self, split: str) -> np.ndarray:
        return self._labels


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _epoch_shards(config, data, epoch: int, world: int = 2) -> list[list[int]]:
    shards = []
    for rank in range(world):
        sampler, _ = train_sampler_for(config, data, DistContext(rank, rank, world, "gloo"))
        sampler.set_epoch(epoch)
        shards.append(list(sampler))
    return shards


# ---------------------------------------------------------------- single process


def test_without_torchrun_the_context_is_single_process(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    ctx = init_distributed("cpu")
    assert (ctx.enabled, ctx.is_main, ctx.world_size) == (False, True, 1)
    part = torch.arange(5)
    assert ctx.gather_shards(part) is part and list(ctx.shard(5)) == [0, 1, 2, 3, 4]
    ctx.barrier()  # a no-op, not a hang
    assert ctx.wrap_ddp(model := torch.nn.Linear(2, 2)) is model


def test_world_size_without_rank_is_a_user_error(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("RANK", raising=False)
    with pytest.raises(MedscopeError, match="torchrun"):
        init_distributed("cpu")


def test_unwrap_reaches_the_plain_model():
    model = torch.nn.Linear(2, 2)
    wrapped = type("Wrapper", (torch.nn.Module,), {})()
    wrapped.module = model
    assert unwrap(wrapped) is model and unwrap(model) is model


def test_fp16_on_cpu_is_refused_in_one_line():
    with pytest.raises(MedscopeError, match="fp16 needs a CUDA GPU"):
        select_runtime("cpu", "fp16")


# ---------------------------------------------------------------- samplers


@pytest.mark.parametrize("n", [24, 25])
def test_rank_shards_of_an_epoch_are_disjoint_and_cover_the_training_set(tmp_path, n):
    config = tiny_config(tmp_path, tmp_path / "out")
    data = _Data(np.arange(n) % 3, 3)
    shards = _epoch_shards(config, data, epoch=3)
    assert len(shards[0]) == len(shards[1])  # equal steps on every rank, or DDP hangs
    assert set(shards[0]) | set(shards[1]) == set(range(n))
    # An odd count is padded with one repeated sample so both ranks step equally often.
    assert len(set(shards[0]) & set(shards[1])) == n % 2
    assert _epoch_shards(config, data, epoch=3) == shards  # a resumed epoch reshuffles alike
    assert _epoch_shards(config, data, epoch=4) != shards


def test_distributed_weighted_sampler_splits_one_seeded_draw(tmp_path):
    config = tiny_config(tmp_path, tmp_path / "out", **{"data.balance": "sampler"})
    labels = np.array([0] * 40 + [1] * 8 + [2] * 4)  # 10:2:1
    shards = _epoch_shards(config, _Data(labels, 3), epoch=1)
    whole = DistributedWeightedSampler(np.ones(len(labels)), 2, 0, seed=0)
    assert len(shards[0]) == len(shards[1]) == whole.num_samples == 26
    sampler, _ = train_sampler_for(config, _Data(labels, 3), DistContext(0, 0, 2, "gloo"))
    sampler.set_epoch(1)
    draw = sampler.epoch_draw().tolist()
    assert draw[0::2] == shards[0] and draw[1::2] == shards[1]
    counts = np.bincount(labels[draw], minlength=3)
    assert counts.min() >= 8  # each class about a third of 52 draws, not 4/52


# ---------------------------------------------------------------- 2 gloo processes


def _evaluate_shard(rank: int, world: int, port: int, run_root: str, tmp: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      LOCAL_RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    ctx = init_distributed("cpu", timeout_s=60)
    try:
        predictor = Predictor.load(run_root, precision="fp32", device="cpu")
        pixels, labels = np.load(Path(tmp) / "pixels.npy"), np.load(Path(tmp) / "labels.npy")
        dataset = Subset(PixelDataset(pixels, labels), list(ctx.shard(len(labels))))
        logits, gathered = gathered_logits(ctx.wrap_ddp(predictor.model),
                                           DataLoader(dataset, batch_size=2),
                                           predictor.normalize, predictor.runtime, ctx)
        order = ctx.gather_shards(torch.arange(rank, len(labels), world))
        if ctx.is_main:
            np.save(Path(tmp) / "dist_logits.npy", logits.numpy())
            np.save(Path(tmp) / "dist_labels.npy", gathered.numpy())
            np.save(Path(tmp) / "order.npy", order.numpy())
    finally:
        ctx.destroy()


@pytest.mark.slow
def test_distributed_evaluation_gives_the_single_process_confusion_matrix(trained_run,
                                                                          tmp_path):
    predictor = Predictor.load(trained_run.root, precision="fp32", device="cpu")
    samples, _ = run_samples(trained_run, predictor.classes)
    pixels = predictor.decode(samples, progress=False).pixels
    labels = np.array([s.label for s in samples])
    np.save(tmp_path / "pixels.npy", pixels)
    np.save(tmp_path / "labels.npy", labels)
    mp.spawn(_evaluate_shard, args=(2, _free_port(), str(trained_run.root), str(tmp_path)),
             nprocs=2, join=True)
    single, _ = predict_logits(predictor.model, DataLoader(PixelDataset(pixels, labels),
                                                           batch_size=16),
                               predictor.normalize, predictor.runtime)
    dist_logits = np.load(tmp_path / "dist_logits.npy")
    assert np.load(tmp_path / "order.npy").tolist() == list(range(len(labels)))
    assert np.load(tmp_path / "dist_labels.npy").tolist() == labels.tolist()
    assert len(dist_logits) == len(labels)  # each image exactly once
    k = range(len(predictor.classes))
    assert confusion_matrix(labels, dist_logits.argmax(1), labels=k).tolist() == \
        confusion_matrix(labels, single.numpy().argmax(1), labels=k).tolist()
    np.testing.assert_allclose(dist_logits, single.numpy(), rtol=1e-4, atol=1e-5)


def _torchrun(*args: str, command: str = "train") -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc_per_node", "2", "-m", "medscope", command, "-q", *args],
                          env=env, capture_output=True, text=True, timeout=180)


@pytest.mark.slow
def test_torchrun_cv_writes_each_fold_and_the_summary_once(image_folder, tmp_path):
    out = tmp_path / "cv"
    done = _torchrun("--data", str(image_folder), "--img-size", "32", "--epochs", "1",
                     "--batch-size", "8", "--folds", "2", "--device", "cpu", "--precision",
                     "fp32", "--set", "data.val_fraction=0.34", "--out", str(out),
                     command="cv")
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((out / "cv_summary.json").read_text())
    assert [r["fold"] for r in summary["rows"]] == [1, 2]
    rows = (out / "oof_predictions.csv").read_text().splitlines()
    assert len(rows) - 1 == sum(r["n"] for r in summary["rows"]) == 36
    for k in (1, 2):
        history = (out / f"fold_{k}" / "history.csv").read_text().splitlines()
        assert [line.split(",")[0] for line in history[1:]] == ["1"]
    assert not list(out.rglob("*.tmp"))


@pytest.fixture(scope="module")
def colours_120(tmp_path_factory) -> Path:
    """40 noisy images per class, each class brighter in one colour channel: learnt fully in
    3 epochs, so the comparison measures distributed training, not a toss-up. 24 test images:
    one image is 4.2 points, and 'within 2 points' means no worse than one process."""
    root = tmp_path_factory.mktemp("data") / "colours"
    rng = np.random.default_rng(1)
    for channel, name in enumerate(("red", "green", "blue")):
        (root / name).mkdir(parents=True)
        for i in range(40):
            img = rng.integers(0, 120, (32, 32, 3))
            img[..., channel] += 120
            Image.fromarray(img.astype(np.uint8)).save(root / name / f"{i:03d}.png")
    return root


@pytest.mark.slow
def test_torchrun_two_cpu_processes_train_resume_and_write_one_run(colours_120, tmp_path):
    settings = ["--img-size", "32", "--model", "simple_cnn", "--batch-size", "8", "--lr",
                "1e-3", "--device", "cpu", "--precision", "fp32"]
    single_out = tmp_path / "single"
    assert main(["train", "-q", "--data", str(colours_120), "--epochs", "3", "--out",
                 str(single_out), *settings]) == 0
    single_run = RunDir(single_out)

    out = tmp_path / "ddp"
    common = ["--out", str(out), "--device", "cpu", "--precision", "fp32"]
    first = _torchrun("--data", str(colours_120), "--epochs", "1", *settings[:-4], *common)
    assert first.returncode == 0, first.stderr[-3000:]
    (out / "metrics.json").unlink()  # as if stopped after epoch 1: checkpoints and history kept
    resumed = _torchrun("--resume", "--epochs", "3", *common)
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    history = (out / "history.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in history[1:]] == ["1", "2", "3"]
    assert load_config(out / "config.yaml").train.epochs == 3
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == sorted(
        p.name for p in single_run.checkpoints.iterdir())
    assert (out / "report.html").is_file()
    assert (out / "splits.csv").read_text() == single_run.splits.read_text()
    metrics, single = json.loads((out / "metrics.json").read_text()), \
        json.loads(single_run.metrics.read_text())
    assert metrics["n"] == single["n"] == 24  # every test image once, none padded in
    # 2 processes x batch 8 = a global batch of 16, half the steps: same test accuracy.
    assert metrics["accuracy"] >= single["accuracy"] - 0.02, (metrics["accuracy"],
                                                              single["accuracy"])
