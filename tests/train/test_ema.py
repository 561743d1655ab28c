"""train.ema: the weight average is validated, saved as best, evaluated and resumed exactly."""

import csv

import pytest
import torch

from medscope.api import train
from medscope.config import TrainConfig
from medscope.core.checkpoint import extra_state, load_checkpoint, model_state
from medscope.models import create_model
from medscope.run import RunDir
from medscope.train.ema import EMA_PREFIX, make_ema, split_ema, update_ema
from medscope.train.engine import lr_factor, one_cycle_factor
from tests.conftest import interrupt_after_epoch, tiny_config


def test_one_cycle_matches_torch_one_cycle_lr_step_for_step():
    for total, rise in [(100, 25), (100, 0), (37, 10)]:
        param = torch.nn.Parameter(torch.zeros(1))
        opt = torch.optim.SGD([param], lr=1.0)
        sched = torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=1.0, total_steps=total, pct_start=(rise or total / 4) / total,
            cycle_momentum=False)
        for step in range(total):
            assert lr_factor(step, total, rise, "onecycle") == pytest.approx(
                opt.param_groups[0]["lr"], abs=1e-12)
            opt.step()
            if step < total - 1:
                sched.step()
    assert one_cycle_factor(0, 100, 0) == pytest.approx(1 / 25)
    assert one_cycle_factor(99, 100, 0) == pytest.approx(1 / 250_000)


def test_average_warms_up_then_follows_the_decay():
    model = torch.nn.Linear(4, 2)
    ema = make_ema(model, TrainConfig(ema=0.5, ema_warmup=False))
    start = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    update_ema(ema, model, step=2)  # decay 0.5: halfway to the new weights
    torch.testing.assert_close(ema.module.weight, start + 0.5)
    warm = make_ema(model, TrainConfig(ema=0.999))
    with torch.no_grad():
        model.weight.add_(1.0)
    update_ema(warm, model, step=1)  # warm-up: the first update copies the weights
    torch.testing.assert_close(warm.module.weight, model.weight)
    assert make_ema(model, TrainConfig()) is None


def test_best_checkpoint_holds_the_average_and_last_the_raw_weights(image_folder, tmp_path):
    seen = []

    def record(model, _opt, state, _row, is_best):
        copy = {k: v.detach().clone() for k, v in state.validated(model).state_dict().items()}
        seen.append((is_best, copy))

    run = train(tiny_config(image_folder, tmp_path / "ema", **{"train.ema": 0.9,
                                                                 "train.epochs": 3}),
                progress=False, callbacks=[record])
    last, _ = load_checkpoint(run.last)
    raw = model_state(last)
    _, average = split_ema(extra_state(last))
    assert average.keys() == raw.keys()
    floats = [k for k in raw if raw[k].is_floating_point()]
    assert any(not torch.equal(average[k], raw[k]) for k in floats)
    assert all(torch.equal(average[k], seen[-1][1][k]) for k in raw)  # the final average
    best_weights = [w for is_best, w in seen if is_best][-1]
    best = model_state(load_checkpoint(run.best)[0])
    assert all(torch.equal(best[k], best_weights[k]) for k in best)  # the validated average
    assert not any(k.startswith(EMA_PREFIX) for k in best)


@pytest.mark.slow
def test_resumed_ema_run_is_the_uninterrupted_one(image_folder, tmp_path, monkeypatch):
    extra = {"train.ema": 0.9, "train.epochs": 3, "train.scheduler": "onecycle",
             "train.precision": "fp32"}
    full = train(tiny_config(image_folder, tmp_path / "full", **extra), progress=False)
    cfg = tiny_config(image_folder, tmp_path / "r", **extra)
    restore_writer = interrupt_after_epoch(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, progress=False)
    restore_writer()
    resumed = train(cfg, resume=True, progress=False)
    assert RunDir(resumed.root).is_finished()
    a, b = (list(csv.DictReader(r.history.open())) for r in (full, resumed))
    assert [r["val_loss"] for r in a] == [r["val_loss"] for r in b]
    ea, eb = (split_ema(extra_state(load_checkpoint(r.last)[0]))[1] for r in (full, resumed))
    assert all(torch.equal(ea[k], eb[k]) for k in ea)


@pytest.mark.slow
def test_cli_takes_ema_and_scheduler(image_folder, tmp_path):
    from medscope.cli import main

    out = tmp_path / "cli"
    assert main(["train", "-q", "--data", str(image_folder), "--out", str(out),
                 "--img-size", "32", "--epochs", "1", "--batch-size", "8",
                 "--ema", "0.99", "--scheduler", "onecycle", "--warmup-epochs", "0"]) == 0
    saved = RunDir(out).config.read_text()
    assert "ema: 0.99" in saved and "scheduler: onecycle" in saved
    assert main(["train", "-q", "--data", str(image_folder), "--out", str(tmp_path / "bad"),
                 "--ema", "1.5"]) != 0
    assert not (tmp_path / "bad").exists()


def test_model_unaffected_by_averaging():
    model = create_model("simple_cnn", 3, img_size=32)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ema = make_ema(model, TrainConfig(ema=0.99))
    update_ema(ema, model, step=5)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
