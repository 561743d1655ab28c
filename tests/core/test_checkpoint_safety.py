"""Checkpoint pairs survive a crash at any instant; damaged ones are one line naming the file and
the fallback; NaN policy, disk and writability are checked; ``--resume RUN`` is parsed."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import medscope.core.checkpoint as ckpt
from medscope.cli import main
from medscope.core.checkpoint import (
    CheckpointMeta,
    checkpoint_problem,
    load_checkpoint,
    model_state,
    previous_stem,
    save_checkpoint,
)
from medscope.errors import MedscopeError
from medscope.run import RunDir, read_json
from medscope.train.engine import resume_state
from tests.conftest import interrupt_after_epoch, make_image_folder, nan_loss_at_call


def _meta(epoch: int) -> CheckpointMeta:
    return CheckpointMeta(model="simple_cnn", classes=["a", "b"], img_size=16, in_chans=3,
                          mean=[0.5] * 3, std=[0.2] * 3, epoch=epoch)


def _model(value: float) -> nn.Module:
    model = nn.Linear(3, 2)
    with torch.no_grad():
        model.weight.fill_(value)
    return model


@pytest.mark.parametrize("name", ["sgd", "adamw"])
@pytest.mark.slow
def test_resumed_fused_optimizer_on_channels_last_weights_steps_as_before(tmp_path, name):
    """The file holds optimizer state contiguous; a channels_last conv's moments must come
    back in its layout, or the fused kernels pair the wrong elements."""
    from medscope.config import TrainConfig
    from medscope.models import create_model
    from medscope.train.engine import build_optimizer

    def cnn() -> nn.Module:  # eval: no dropout draws between the two runs
        return create_model("simple_cnn", 2, img_size=16).eval().to(
            memory_format=torch.channels_last)

    torch.manual_seed(0)
    model = cnn()
    x = torch.randn(4, 3, 16, 16).to(memory_format=torch.channels_last)
    cfg = TrainConfig(optimizer=name, lr=1e-2)

    def step(m, opt):
        opt.zero_grad()
        m(x).square().mean().backward()
        opt.step()

    opt = build_optimizer(model, cfg)
    assert all(g["fused"] for g in opt.param_groups)
    for _ in range(2):
        step(model, opt)
    stem = tmp_path / "last"
    save_checkpoint(stem, model, _meta(2), optimizer=opt)
    resumed = cnn()
    resumed_opt = build_optimizer(resumed, cfg)
    resume_state(stem, resumed, resumed_opt)
    step(model, opt)
    step(resumed, resumed_opt)
    for a, b in zip(model.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(a, b)


def _saved_twice(tmp_path: Path) -> Path:
    stem = tmp_path / "checkpoints" / "last"
    for value in (1.0, 2.0):
        model = _model(value)
        save_checkpoint(stem, model, _meta(int(value)),
                        optimizer=torch.optim.SGD(model.parameters(), lr=0.1))
    return stem


def test_each_save_keeps_the_previous_complete_pair(tmp_path):
    stem = _saved_twice(tmp_path)
    tensors, meta = load_checkpoint(stem)
    prev_tensors, prev_meta = load_checkpoint(previous_stem(stem))
    assert meta.epoch == 2 and float(model_state(tensors)["weight"][0, 0]) == 2.0
    assert prev_meta.epoch == 1 and float(model_state(prev_tensors)["weight"][0, 0]) == 1.0
    assert not list(stem.parent.glob(".*.tmp"))  # no temporary file left behind


def test_crash_between_the_two_renames_is_detected_and_previous_is_intact(tmp_path,
                                                                          monkeypatch):
    stem = _saved_twice(tmp_path)
    real, calls = os.replace, []

    def crash_before_json(src, dst):
        calls.append(dst)
        if str(dst).endswith("last.json"):
            raise SystemExit("killed")  # the process dies here: weights renamed, JSON not
        real(src, dst)

    monkeypatch.setattr(ckpt.os, "replace", crash_before_json)
    with pytest.raises(SystemExit):
        save_checkpoint(stem, _model(3.0), _meta(3))
    monkeypatch.setattr(ckpt.os, "replace", real)
    with pytest.raises(MedscopeError) as err:
        load_checkpoint(stem)
    message = str(err.value)
    assert "last.safetensors: does not belong to last.json" in message
    assert "previous good checkpoint is kept as" in message and "\n" not in message
    assert checkpoint_problem(previous_stem(stem)) is None
    assert load_checkpoint(previous_stem(stem))[1].epoch == 2


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_damaged_weights_are_one_line_naming_file_and_fallback(tmp_path, damage):
    stem = _saved_twice(tmp_path)
    weights = stem.with_suffix(".safetensors")
    data = weights.read_bytes()
    weights.write_bytes({"truncate": data[: len(data) // 2], "garbage": os.urandom(300),
                         "empty": b""}[damage])
    with pytest.raises(MedscopeError) as err:
        load_checkpoint(stem)
    message = str(err.value)
    assert message.startswith(f"{weights}: not a valid safetensors file")
    assert str(previous_stem(stem).with_suffix(".safetensors")) in message
    assert "\n" not in message


def test_damaged_without_previous_says_there_is_none(tmp_path, caplog):
    stem = tmp_path / "checkpoints" / "last"
    save_checkpoint(stem, _model(1.0), _meta(1))
    stem.with_suffix(".safetensors").write_bytes(b"\x00" * 10)
    with pytest.raises(MedscopeError, match="no previous good checkpoint to fall back to"):
        resume_state(stem, _model(0.0), torch.optim.SGD(_model(0.0).parameters(), lr=0.1))


def test_resume_state_falls_back_to_previous_and_says_so(tmp_path, caplog):
    stem = _saved_twice(tmp_path)
    stem.with_suffix(".json").write_text("{ half a")
    model = _model(0.0)
    with caplog.at_level(logging.WARNING, logger="medscope"):
        state = resume_state(stem, model, torch.optim.SGD(model.parameters(), lr=0.1))
    assert state.epoch == 1 and float(model.weight.detach()[0, 0]) == 1.0
    assert "resuming from the previous checkpoint" in caplog.text
    assert "last.json: not valid JSON" in caplog.text


def test_failed_write_leaves_the_old_pair_and_no_temporary_file(tmp_path, monkeypatch):
    stem = _saved_twice(tmp_path)

    def disk_full(path, data):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ckpt, "write_synced_temp", disk_full)
    with pytest.raises(OSError):
        save_checkpoint(stem, _model(3.0), _meta(3))
    monkeypatch.undo()
    assert load_checkpoint(stem)[1].epoch == 2
    assert not list(stem.parent.glob(".*.tmp"))


# ---------------------------------------------------------------- through the CLI


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("ck") / "stripes", per_class=6, size=16)


def _train(data: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "-q", "--data", str(data), "--out", str(out), "--img-size", "16",
            "--batch-size", "4", "--model", "simple_cnn", "--device", "cpu", *extra]


@pytest.mark.slow  # two short trainings
def test_resume_from_a_damaged_last_uses_the_previous_one(data, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    interrupt_after_epoch(monkeypatch, 2)
    assert main(_train(data, out, "--epochs", "3")) == 130
    monkeypatch.undo()
    (out / "checkpoints" / "last.safetensors").write_bytes(b"torn")
    capsys.readouterr()
    assert main(["train", "--resume", str(out)]) == 0
    err = capsys.readouterr().err
    assert "last.safetensors: not a valid safetensors file" in err
    assert "resuming from the previous checkpoint" in err
    assert [r["epoch"] for r in read_json(out / "checkpoints" / "last.json")["fit_state"]
            ["history"]] == [1, 2, 3]


@pytest.mark.slow  # a whole run with evaluation
def test_nan_policy_skip_batch_skips_and_finishes(data, tmp_path, capsys, monkeypatch):
    nan_loss_at_call(monkeypatch, 2)
    out = tmp_path / "run"
    code = main(_train(data, out, "--epochs", "1", "--nan-policy", "skip-batch"))
    err = capsys.readouterr().err
    assert code == 0, err
    assert "in epoch 1, step 2: batch skipped" in err
    assert RunDir(out).is_finished()
    assert not list((out / "checkpoints").glob("*-previous.*"))  # finished: no spare pairs


def test_too_little_disk_is_refused_before_anything_is_written(data, tmp_path, capsys,
                                                              monkeypatch):
    import medscope.train.preflight as preflight

    monkeypatch.setattr(preflight.shutil, "disk_usage",
                        lambda p: shutil._ntuple_diskusage(10**9, 10**9 - 4096, 4096))
    out = tmp_path / "run"
    assert main(_train(data, out, "--epochs", "1")) == 2
    err = capsys.readouterr().err.strip()
    assert "only 0 MB free on this disk, the run needs checkpoints" in err
    assert "\n" not in err and not out.exists()


def test_unwritable_output_is_refused_before_training(data, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    assert main(_train(data, blocker / "run", "--epochs", "1")) == 2
    err = capsys.readouterr().err.strip()
    assert "cannot write the run directory" in err and "\n" not in err


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_read_only_output_dir_is_refused_before_training(data, tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o500)
    assert main(_train(data, ro / "run", "--epochs", "1")) == 2
    assert "cannot write the run directory" in capsys.readouterr().err


def test_resume_flag_forms(tmp_path, capsys):
    assert main(["train", "-q", "--resume", str(tmp_path / "a"), "--out",
                 str(tmp_path / "b")]) == 2
    assert "two different runs" in capsys.readouterr().err
    assert main(["train", "-q", "--resume"]) == 2
    assert "--resume needs the run to continue" in capsys.readouterr().err
    assert main(["train", "-q", "--resume", str(tmp_path / "nothing")]) == 2
    assert "nothing to resume" in capsys.readouterr().err


def test_disk_full_while_writing_is_one_line_and_keeps_the_old_file(tmp_path, monkeypatch):
    import medscope.run as run_module
    from medscope.run import atomic_write_text

    target = tmp_path / "history.csv"
    atomic_write_text(target, "epoch\n1\n")

    def no_space(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(run_module.os, "fsync", no_space)
    with pytest.raises(MedscopeError) as err:
        atomic_write_text(target, "epoch\n1\n2\n")
    assert str(err.value) == (f"{target}: cannot write (No space left on device); the previous "
                              "version, if any, is unchanged")
    assert target.read_text() == "epoch\n1\n" and not list(tmp_path.glob(".*.tmp"))
