"""Progressive resizing (train.progressive_from): smaller training batches first, full size
from train.progressive_until of the run on; validation always at data.img_size."""

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from medscope.api import train
from medscope.cli import main
from medscope.config import TrainConfig
from medscope.core.runtime import select_runtime
from medscope.data.transforms import Normalize
from medscope.errors import MedscopeError
from medscope.run import RunDir
from medscope.train.engine import FitInputs, fit
from medscope.train.preflight import check_run_config
from medscope.train.setup import progressive_sizes
from tests.conftest import tiny_config


def _sizes(tmp_path, epochs, start=32, full=64, until=0.5):
    cfg = tiny_config(tmp_path, tmp_path / "run", **{
        "data.img_size": full, "train.epochs": epochs, "train.progressive_from": start,
        "train.progressive_until": until})
    size = progressive_sizes(cfg)
    return [size(e) for e in range(epochs)]


def test_side_grows_in_steps_of_8_then_stays_full(tmp_path):
    assert _sizes(tmp_path, 6) == [32, 40, 48, None, None, None]
    assert _sizes(tmp_path, 4, until=1.0) == [32, 40, 48, None]  # the last epoch is full
    assert _sizes(tmp_path, 1) == [None]
    assert progressive_sizes(tiny_config(tmp_path, tmp_path / "off")) is None


def test_fit_trains_small_then_full_and_validates_at_full_size():
    images = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8)
    labels = torch.arange(16) % 2
    loader = DataLoader(TensorDataset(images, labels), batch_size=8)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1),
                                torch.nn.Flatten(), torch.nn.Linear(4, 2))
    seen: list[tuple[bool, int]] = []
    model.register_forward_pre_hook(lambda m, args: seen.append((m.training,
                                                                 args[0].shape[-1])))
    sizes = {0: 16, 1: 24}
    fit(FitInputs(model, loader, loader,
                  cfg=TrainConfig(epochs=3, batch_size=8, precision="fp32"),
                  normalize=Normalize([0.5] * 3, [0.25] * 3),
                  runtime=select_runtime("cpu", "fp32"),
                  optimizer=torch.optim.SGD([{"params": model.parameters(),
                                              "initial_lr": 0.01}]),
                  progress=False, train_size=sizes.get))
    train_sides = [side for training, side in seen if training]
    assert train_sides == [16, 16, 24, 24, 32, 32]
    assert {side for training, side in seen if not training} == {32}


def test_refused_for_a_fixed_size_head_or_a_start_not_below_full(image_folder, tmp_path):
    fixed = tiny_config(image_folder, tmp_path / "fixed", **{"train.progressive_from": 16})
    with pytest.raises(MedscopeError, match="global pooling"):
        check_run_config(fixed)  # simple_cnn flattens a 32 px map into its classifier
    too_big = tiny_config(image_folder, tmp_path / "big", **{
        "model.name": "resnet18", "train.progressive_from": 32})
    with pytest.raises(MedscopeError, match="must be below data.img_size 32"):
        check_run_config(too_big)
    too_small = tiny_config(image_folder, tmp_path / "small", **{
        "model.name": "resnet18", "data.img_size": 64, "train.progressive_from": 16})
    with pytest.raises(MedscopeError, match="at least 32 px"):
        check_run_config(too_small)
    assert main(["train", "-q", "--data", str(image_folder), "--out", str(tmp_path / "cli"),
                 "--img-size", "32", "--set", "train.progressive_from=16"]) != 0
    assert not (tmp_path / "cli").exists()


@pytest.mark.slow
def test_a_progressive_run_finishes_and_evaluates(image_folder, tmp_path):
    run = train(tiny_config(image_folder, tmp_path / "prog", **{
        "model.name": "resnet18", "data.img_size": 48, "train.epochs": 2,
        "train.progressive_from": 32,
        "train.progressive_until": 1.0}), progress=False)
    assert RunDir(run.root).is_finished()
    assert run.metrics.is_file()
