"""Crash safety with real processes: ``kill -9`` in the middle of epoch 3 (at an epoch boundary's
checkpoint and at a mid-epoch one), SIGTERM, then resume; with ``--deterministic`` on CPU the
final weights are bit-identical to an uninterrupted run and history.csv has each epoch once.

The child blocks inside a training step of epoch 3 (a loss wrapper defined here, in the test)
and says so with a marker file: the parent kills it then, with no timing guess."""

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
EPOCHS = 4

# Runs the CLI; with BLOCK_EPOCH/BLOCK_STEP set, the training step (1-based) of that epoch
# (1-based) writes MARKER and waits, inside the step, until GO exists (forever without GO).
CHILD = r"""
import os, sys, time
import torch
import medscope.train.engine as engine
import medscope.workflows.training as trainer
where = {"epoch": -1, "step": 0}
if "BLOCK_EPOCH" in os.environ:
    real_epoch, real_loss = engine._train_epoch, trainer.loss_for
    def tracking(*a, **k):
        start = k.get("resume_at") or engine.EpochPosition(0)
        where["epoch"], where["step"] = k["epoch"] + 1, start.step
        return real_epoch(*a, **k)
    class Blocking(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner
        def forward(self, logits, labels):
            if torch.is_grad_enabled():  # a training step, not validation
                where["step"] += 1
                if (where["epoch"], where["step"]) == (int(os.environ["BLOCK_EPOCH"]),
                                                       int(os.environ["BLOCK_STEP"])):
                    open(os.environ["MARKER"], "w").close()
                    while not os.path.exists(os.environ.get("GO", "/nonexistent")):
                        time.sleep(0.01)
            return self.inner(logits, labels)
    engine._train_epoch = tracking
    trainer.loss_for = lambda *a: Blocking(real_loss(*a))
from medscope.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _env(**extra: str) -> dict[str, str]:
    # One thread: the same kernels in every process, and no spin-waiting on a shared machine.
    return {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1", **extra}


def _args(data: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "-q", "--data", str(data), "--out", str(out), "--img-size", "16",
            "--batch-size", "4", "--model", "simple_cnn", "--epochs", str(EPOCHS),
            "--deterministic", "--device", "cpu", "--precision", "fp32", "--lr", "0.003",
            "--augment", "flips", *extra]


def _start(args: list[str], **env: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", CHILD, *args], env=_env(**env),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _cli(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", CHILD, *args], env=_env(),
                          capture_output=True, text=True, timeout=300)


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"child ended ({proc.returncode}) early: {proc.stderr.read()}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("child never reached the blocking step")
        time.sleep(0.02)


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return {k: v for k, v in load_file(run / "checkpoints" / "last.safetensors").items()
            if k.startswith("model.")}


def _epochs(run: Path) -> list[str]:
    return [r["epoch"] for r in csv.DictReader((run / "history.csv").open())]


def _assert_bit_identical(run: Path, reference: Path) -> None:
    got, want = _weights(run), _weights(reference)
    assert got.keys() == want.keys()
    differing = [k for k in want if not torch.equal(got[k], want[k])]
    assert not differing, f"weights differ from the uninterrupted run: {differing}"
    assert _epochs(run) == [str(e) for e in range(1, EPOCHS + 1)]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("crash") / "stripes", per_class=8, size=16)


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory) -> Path:
    """The uninterrupted run every interrupted one must match bit for bit."""
    out = tmp_path_factory.mktemp("ref") / "run"
    proc = _cli(_args(data, out))
    assert proc.returncode == 0, proc.stderr
    return out


def _meta(run: Path) -> dict:
    return json.loads((run / "checkpoints" / "last.json").read_text())


def test_kill_9_mid_epoch_3_then_resume_is_bit_identical(data, reference, tmp_path):
    out, marker = tmp_path / "run", tmp_path / "blocked"
    proc = _start(_args(data, out), BLOCK_EPOCH="3", BLOCK_STEP="3", MARKER=str(marker))
    _wait_for(marker, proc)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(60) == -signal.SIGKILL
    assert _meta(out)["epoch"] == 2 and _epochs(out) == ["1", "2"]
    done = _cli(["train", "-q", "--resume", str(out)])  # the positional form
    assert done.returncode == 0, done.stderr
    _assert_bit_identical(out, reference)


def test_kill_9_after_a_mid_epoch_checkpoint_resumes_from_that_step(data, reference, tmp_path):
    out, marker = tmp_path / "run", tmp_path / "blocked"
    # Every step is "due" at 1e-9 minutes (a step of this tiny model can take under 6 ms, so
    # 0.0001 minutes was not always due), so steps 1 and 2 of epoch 3 were saved.
    proc = _start(_args(data, out, "--checkpoint-every", "1e-9"), BLOCK_EPOCH="3",
                  BLOCK_STEP="3", MARKER=str(marker))
    _wait_for(marker, proc)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(60) == -signal.SIGKILL
    position = _meta(out)["fit_state"]["position"]
    assert (position["epoch"], position["step"]) == (2, 2)  # 0-based epoch 3, 2 steps done
    done = _cli(["train", "-q", "--out", str(out), "--resume"])
    assert done.returncode == 0, done.stderr
    _assert_bit_identical(out, reference)


def test_sigterm_finishes_the_step_saves_and_resume_is_bit_identical(data, reference, tmp_path):
    out, marker, go = tmp_path / "run", tmp_path / "blocked", tmp_path / "go"
    proc = _start(_args(data, out), BLOCK_EPOCH="3", BLOCK_STEP="2", MARKER=str(marker),
                  GO=str(go))
    _wait_for(marker, proc)
    proc.send_signal(signal.SIGTERM)
    # The step may finish once the handler has run (it only sets a flag and says so).
    said = proc.stderr.readline()
    assert "SIGTERM received" in said, said
    go.touch()
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "stopped by SIGTERM in epoch 3 after step 2" in err
    assert f"medscope train --resume {out}" in err and "Traceback" not in err
    position = _meta(out)["fit_state"]["position"]
    assert (position["epoch"], position["step"]) == (2, 2)
    done = _cli(["train", "-q", "--resume", str(out)])
    assert done.returncode == 0, done.stderr
    _assert_bit_identical(out, reference)
