import pytest
import torch

from medscope.api import train
from medscope.config import TrainConfig
from medscope.core.checkpoint import load_checkpoint, model_state
from medscope.models import create_model
from medscope.train.engine import FitState, _improves, build_optimizer, lr_factor
from tests.conftest import tiny_config


def test_warmup_then_cosine_to_zero():
    assert lr_factor(0, 100, 10, "cosine") == pytest.approx(0.1)
    assert lr_factor(9, 100, 10, "cosine") == pytest.approx(1.0)
    assert lr_factor(55, 100, 10, "cosine") == pytest.approx(0.5)
    assert lr_factor(100, 100, 10, "cosine") == pytest.approx(0.0)
    assert lr_factor(70, 100, 0, "none") == 1.0


def test_optimizer_groups_head_lr_and_no_decay_on_norms():
    model = create_model("simple_cnn", 3, img_size=32)
    opt = build_optimizer(model, TrainConfig(lr=1e-3, head_lr_mult=10, weight_decay=0.05))
    by_param = {id(p): g for g in opt.param_groups for p in g["params"]}
    head_weight = model.head[-1].weight
    assert by_param[id(head_weight)]["lr"] == pytest.approx(1e-2)
    assert by_param[id(head_weight)]["weight_decay"] == 0.05
    conv, bn = model.features[0].weight, model.features[1].weight
    assert by_param[id(conv)]["lr"] == pytest.approx(1e-3)
    assert by_param[id(bn)]["weight_decay"] == 0.0
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw"])
def test_cpu_optimizers_are_fused_and_step_as_the_per_tensor_loop(name):
    models = []
    for _ in range(2):
        torch.manual_seed(0)
        models.append(create_model("simple_cnn", 3, img_size=32).eval())  # no dropout draws
    cfg = TrainConfig(optimizer=name, lr=1e-2, weight_decay=0.05)
    fused = build_optimizer(models[0], cfg)
    assert all(g["fused"] for g in fused.param_groups)
    loop = build_optimizer(models[1], cfg)
    for group in loop.param_groups:  # torch's default on CPU: one tensor at a time
        group["fused"], group["foreach"] = False, False
    x = torch.randn(4, 3, 32, 32)
    for model, opt in zip(models, (fused, loop), strict=True):
        for _ in range(3):
            opt.zero_grad()
            model(x).square().mean().backward()
            opt.step()
    for a, b in zip(models[0].parameters(), models[1].parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)  # same maths, other rounding


@pytest.mark.slow
def test_frozen_backbone_is_bit_identical_after_training(image_folder, tmp_path):
    cfg = tiny_config(image_folder, tmp_path / "frozen", **{"train.freeze": "backbone"})
    run = train(cfg, progress=False)
    torch.manual_seed(cfg.train.seed)  # the run built its model right after this seeding
    initial = create_model("simple_cnn", 3, img_size=32).state_dict()
    trained = model_state(load_checkpoint(run.last)[0])
    for name, tensor in initial.items():
        if name.startswith("features."):  # weights and BatchNorm running statistics
            assert torch.equal(trained[name], tensor), name
    assert not torch.equal(trained["head.4.weight"], initial["head.4.weight"])


@pytest.mark.slow
def test_unfreeze_at_trains_the_backbone_later(image_folder, tmp_path):
    torch.manual_seed(0)
    initial = create_model("simple_cnn", 3, img_size=32).state_dict()
    runs = {}
    for name, extra in (("frozen", {}), ("two-phase", {"train.unfreeze_at": 2})):
        cfg = tiny_config(image_folder, tmp_path / name, **{"train.freeze": "backbone", **extra})
        runs[name] = model_state(load_checkpoint(train(cfg, progress=False).last)[0])
    from medscope.models.transfer import head_param_names

    head = head_param_names(create_model("simple_cnn", 3, img_size=32))
    # Frozen for both epochs: the backbone is bit-identical to its initialisation (this fails
    # when freezing is ignored), while the head learned.
    assert torch.equal(runs["frozen"]["features.0.weight"], initial["features.0.weight"])
    assert not torch.equal(runs["frozen"][head[0]], initial[head[0]])
    # Unfrozen from epoch 2: the backbone moved.
    assert not torch.equal(runs["two-phase"]["features.0.weight"], initial["features.0.weight"])


def _sgd_weights(image_folder, out, **extra):
    cfg = tiny_config(image_folder, out, **{"train.optimizer": "sgd", "train.lr": 0.1,
                                            "train.warmup_epochs": 0, "train.epochs": 1,
                                            "train.weight_decay": 0.0, **extra})
    run = train(cfg, progress=False)
    torch.manual_seed(cfg.train.seed)
    initial = create_model("simple_cnn", 3, img_size=32).state_dict()["features.0.weight"]
    return initial, model_state(load_checkpoint(run.last)[0])["features.0.weight"]


@pytest.mark.slow
def test_clip_grad_bounds_every_step(image_folder, tmp_path):
    # SGD moves a weight by at most lr x (clipped norm) x (1 + momentum terms) per step, so a tiny
    # clip keeps the weights within a hair of their start; without it they move visibly.
    initial, clipped = _sgd_weights(image_folder, tmp_path / "clip", **{"train.clip_grad": 1e-6})
    _, free = _sgd_weights(image_folder, tmp_path / "free")
    assert (clipped - initial).abs().max() < 1e-5
    assert (free - initial).abs().max() > 1e-3


def test_adam_is_plain_adam_with_l2_weight_decay(image_folder, tmp_path):
    cfg = tiny_config(image_folder, tmp_path, **{"train.optimizer": "adam",
                                                 "train.weight_decay": 0.01})
    model = create_model("simple_cnn", 3, img_size=32)
    opt = build_optimizer(model, cfg.train)
    assert type(opt) is torch.optim.Adam  # AdamW subclasses Adam: the exact type matters
    assert {g["weight_decay"] for g in opt.param_groups} == {0.0, 0.01}


def test_epoch_line_counts_epochs_and_estimates_the_rest_from_recent_epochs():
    from medscope.train.engine import _epoch_line, duration_text

    history = [{"seconds": s} for s in (900.0, 400.0, 420.0, 410.0)]  # epoch 1 warmed up
    row = {"epoch": 4, "train_loss": 1.0, "train_accuracy": 0.5, "val_loss": 0.9,
           "val_accuracy": 0.6, "val_f1_macro": 0.55, "lr": 1e-3, "seconds": 410.0}
    line = _epoch_line(row, True, 60, history)
    assert line.startswith("epoch   4/60  train loss 1.0000")
    assert "eta 6h22m" in line and line.endswith("*best*")  # 56 x 410 s = 22,960 s
    assert "eta" not in _epoch_line({**row, "epoch": 60}, False, 60, history)
    assert [duration_text(s) for s in (5.4, 245, 7620)] == ["5s", "4m05s", "2h07m"]


def _row(epoch, f1, loss):
    return {"epoch": epoch, "val_f1_macro": f1, "val_loss": loss}


def test_a_tie_of_the_monitored_score_goes_to_the_lower_validation_loss():
    """A validation split at 1.000 for many epochs must not freeze ``best`` at the first."""
    state = FitState(best_score=1.0, best_epoch=3, history=[_row(3, 1.0, 0.20)])
    assert _improves(1.0, _row(4, 1.0, 0.05), state, higher_is_better=True)
    assert not _improves(1.0, _row(4, 1.0, 0.30), state, higher_is_better=True)
    assert not _improves(0.9, _row(4, 0.9, 0.01), state, higher_is_better=True)
    assert _improves(1.0, _row(4, 1.0, 9.99), FitState(), higher_is_better=True)
    # Monitoring the loss itself, or training without validation: a tie is no improvement.
    loss_state = FitState(best_score=0.2, best_epoch=3, history=[_row(3, 1.0, 0.2)])
    assert not _improves(0.2, _row(4, 1.0, 0.2), loss_state, higher_is_better=False)
    assert not _improves(-0.5, {"epoch": 4, "val_loss": None},
                         FitState(best_score=-0.5, best_epoch=3,
                                  history=[{"epoch": 3, "val_loss": None}]),
                         higher_is_better=True)


@pytest.mark.slow
def test_the_best_checkpoint_is_the_best_f1_then_the_lowest_loss(image_folder, tmp_path):
    import csv

    run = train(tiny_config(image_folder, tmp_path / "r", **{"train.epochs": 5}),
                progress=False)
    rows = list(csv.DictReader(run.history.open()))
    expected = max(rows, key=lambda r: (float(r["val_f1_macro"]), -float(r["val_loss"])))
    _, meta = load_checkpoint(run.root / "checkpoints" / "best")
    assert meta.epoch == int(expected["epoch"])
