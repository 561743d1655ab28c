"""``medscope pretrain`` killed with ``kill -9`` inside a step of epoch 2 (after epoch 1's
checkpoint), then ``--resume``: it finishes, and with ``--deterministic`` on CPU its weights are
bit-identical to an uninterrupted run's, history.csv holding each epoch once.

As in tests/train/test_crash_safety.py, the child blocks inside the step and says so with a
marker file, so the parent kills it with no timing guess."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import make_image_folder

pytestmark = pytest.mark.slow

SRC = Path(__file__).resolve().parents[2] / "src"
EPOCHS = 3

# Runs the CLI; with BLOCK_EPOCH/BLOCK_STEP set, that training step (1-based) writes MARKER and
# blocks inside the loss until killed.
CHILD = r"""
import os, sys, time
import medscope.train.engine as engine
import medscope.workflows.pretraining as pretraining
if "BLOCK_EPOCH" in os.environ:
    where = {"epoch": -1, "step": 0}
    real_epoch = engine._train_epoch
    def tracking(*a, **k):
        start = k.get("resume_at") or engine.EpochPosition(0)
        where["epoch"], where["step"] = k["epoch"] + 1, start.step
        return real_epoch(*a, **k)
    class Blocking(pretraining.NTXentLoss):
        def forward(self, z, targets=None):
            where["step"] += 1
            if (where["epoch"], where["step"]) == (int(os.environ["BLOCK_EPOCH"]),
                                                   int(os.environ["BLOCK_STEP"])):
                open(os.environ["MARKER"], "w").close()
                while True:
                    time.sleep(0.01)
            return super().forward(z, targets)
    engine._train_epoch = tracking
    pretraining.NTXentLoss = Blocking
from medscope.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1", **extra}


def _args(data: Path, out: Path) -> list[str]:
    return ["pretrain", "-q", "--data", str(data), "--out", str(out), "--img-size", "16",
            "--batch-size", "8", "--model", "simple_cnn", "--epochs", str(EPOCHS),
            "--warmup-epochs", "1", "--deterministic", "--device", "cpu", "--precision", "fp32"]


def _cli(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", CHILD, *args], env=_env(),
                          capture_output=True, text=True, timeout=300)


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return {k: v for k, v in load_file(run / "checkpoints" / "last.safetensors").items()
            if k.startswith("model.")}


def _epochs(run: Path) -> list[str]:
    return [r["epoch"] for r in csv.DictReader((run / "history.csv").open())]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("pcrash") / "stripes", per_class=8, size=16)


def test_kill_9_in_epoch_2_then_resume_is_bit_identical(data, tmp_path):
    reference = tmp_path / "reference"
    done = _cli(_args(data, reference))
    assert done.returncode == 0, done.stderr
    out, marker = tmp_path / "run", tmp_path / "blocked"
    proc = subprocess.Popen([sys.executable, "-c", CHILD, *_args(data, out)],
                            env=_env(BLOCK_EPOCH="2", BLOCK_STEP="2", MARKER=str(marker)),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while not marker.exists():
        assert proc.poll() is None, f"child ended early: {proc.stderr.read()}"
        assert time.monotonic() < deadline, "child never reached the blocking step"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(60) == -signal.SIGKILL
    assert json.loads((out / "checkpoints" / "last.json").read_text())["epoch"] == 1
    assert not (out / "metrics.json").exists()
    resumed = _cli(["pretrain", "-q", "--resume", str(out)])
    assert resumed.returncode == 0, resumed.stderr
    got, want = _weights(out), _weights(reference)
    assert got.keys() == want.keys()
    assert [k for k in want if not torch.equal(got[k], want[k])] == []
    assert _epochs(out) == [str(e) for e in range(1, EPOCHS + 1)]
    assert (out / "report.html").is_file()
