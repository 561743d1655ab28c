"""Shared fixtures: tiny image folders and a tiny trained run, built once per session."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@contextmanager
def one_torch_thread():
    """Tests that push tiny tensors through many differently shaped layers: with 2 OpenMP
    threads on a shared 2-core machine the threads spin-wait on each other at every op
    (densenet121 at 32 px took 11 s instead of 0.15 s). One thread is also deterministic."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def make_image_folder(root: Path, classes=("alpha", "beta", "gamma"), per_class: int = 12,
                      size: int = 40, seed: int = 0) -> Path:
    """Class-specific stripe patterns (horizontal, vertical, diagonal) in random colours:
    learnable in a couple of epochs by any CNN."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    patterns = [yy, xx, xx + yy]
    for label, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            period = rng.integers(4, 8)
            stripes = (patterns[label % 3] // (period // 2)) % 2
            fg, bg = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
            img = np.where(stripes[..., None] == 1, fg, bg).astype(np.uint8)
            img = np.clip(img + rng.normal(0, 8, img.shape), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(root / name / f"{name}_{i:03d}.png")
    return root


def nan_loss_at_call(monkeypatch, call: int) -> None:
    """Make the training loss of the next run NaN at its ``call``-th evaluation (training
    steps and validation batches both count), as a diverging run would."""
    import torch

    import medscope.workflows.training as trainer

    real = trainer.loss_for

    class NanAt(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner, self.calls = inner, 0

        def forward(self, logits, labels):
            self.calls += 1
            loss = self.inner(logits, labels)
            return loss * float("nan") if self.calls == call else loss

    monkeypatch.setattr(trainer, "loss_for", lambda *a: NanAt(real(*a)))


def interrupt_after_epoch(monkeypatch, epoch: int):
    """Make the next run raise KeyboardInterrupt right after epoch ``epoch`` is written, as a
    Ctrl-C there would; returns the function that puts the real writer back."""
    import medscope.train.engine as engine

    real = engine.RunWriter.__call__

    def interrupting(self, model, optimizer, state, row, improved):
        real(self, model, optimizer, state, row, improved)
        if state.epoch == epoch:
            raise KeyboardInterrupt

    monkeypatch.setattr(engine.RunWriter, "__call__", interrupting)
    return lambda: monkeypatch.setattr(engine.RunWriter, "__call__", real)


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("data") / "stripes")


def tiny_config(data: Path, out: Path, **overrides):
    from medscope.config import load_config

    values = {"data.path": str(data), "out": str(out), "data.img_size": 32,
              "model.name": "simple_cnn", "train.epochs": 2, "train.batch_size": 8,
              "train.lr": 1e-3, "data.val_fraction": 0.2, "data.test_fraction": 0.25}
    values.update(overrides)
    return load_config(overrides=values)


@pytest.fixture(scope="session")
def trained_run(image_folder, tmp_path_factory):
    """A finished 2-epoch run on the stripes folder (read-only for the tests that use it)."""
    from medscope.api import train

    return train(tiny_config(image_folder, tmp_path_factory.mktemp("runs") / "tiny"),
                 progress=False)


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    """Runs in tests cache decoded images in a temporary folder, never in ~/.cache."""
    import os

    old = os.environ.get("MEDSCOPE_CACHE")
    os.environ["MEDSCOPE_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    yield
    if old is None:
        os.environ.pop("MEDSCOPE_CACHE", None)
    else:
        os.environ["MEDSCOPE_CACHE"] = old
