"""``medscope pretrain`` then ``medscope train --pretrained``: from the CLI, a recipe (config
file) and the Python API, on a tiny folder; what the run records; bad input as one line."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file

from medscope.cli import main
from tests.conftest import make_image_folder

pytestmark = pytest.mark.slow


def _pretrain_args(data: Path, out: Path, *extra: str) -> list[str]:
    return ["pretrain", "-q", "--data", str(data), "--out", str(out), "--model", "resnet10t",
            "--img-size", "32", "--epochs", "2", "--batch-size", "8", "--warmup-epochs", "0",
            "--device", "cpu", *extra]


def _train_args(data: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "-q", "--data", str(data), "--out", str(out), "--img-size", "32",
            "--epochs", "1", "--batch-size", "8", "--device", "cpu", *extra]


@pytest.fixture(scope="module")
def stripes(tmp_path_factory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("ssl") / "stripes", per_class=8, size=40)


@pytest.fixture(scope="module")
def pre(stripes, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pre") / "run"
    # Two --data folders that overlap: each image counts once.
    assert main(_pretrain_args(stripes, out, "--data", str(stripes / "alpha"))) == 0
    return out


def test_the_run_records_what_it_learnt_from_and_its_loss_curve(pre, stripes):
    meta = json.loads((pre / "checkpoints" / "best.json").read_text())
    info = meta["pretraining"]
    assert (meta["model"], meta["classes"], meta["epoch"]) == ("resnet10t", [], 2)
    assert {k: info[k] for k in ("objective", "images", "image_size", "epochs")} == \
        {"objective": "simclr", "images": 24, "image_size": 32, "epochs": 2}
    assert info["source_size"] == [40, 40] and info["data"][0] == str(stripes)
    rows = list(csv.DictReader((pre / "history.csv").open()))
    assert [r["epoch"] for r in rows] == ["1", "2"] and all(float(r["train_loss"]) > 0
                                                           for r in rows)
    config = yaml.safe_load((pre / "config.yaml").read_text())
    assert config["pretrain"]["objective"] == "simclr" and config["data"]["augment"] == "ssl"
    report = (pre / "report.html").read_text()
    assert "Pretraining loss" in report and "data:image/png;base64" in report
    assert json.loads((pre / "metrics.json").read_text())["epochs_done"] == 2


def test_the_backbone_loads_without_its_projection_head(pre):
    from medscope.models import create_model

    model = create_model("resnet10t", num_classes=3, img_size=32, pretrained=str(pre))
    saved = load_file(pre / "checkpoints" / "best.safetensors")
    state = model.state_dict()
    backbone = [k for k in state if not k.startswith("fc.")]
    assert all(torch.equal(state[k], saved[f"model.{k}"]) for k in backbone)
    assert state["fc.weight"].shape == (3, 512)  # new classifier; the projector is fc.0..fc.3
    meta = json.loads((pre / "checkpoints" / "best.json").read_text())
    assert list(model.pretrained_cfg["mean"]) == pytest.approx(meta["mean"])


def test_cli_and_recipe_fine_tune_from_the_pretraining(pre, stripes, tmp_path):
    recipe = tmp_path / "finetune.yaml"
    recipe.write_text(yaml.safe_dump({"model": {"name": "resnet10t", "pretrained": str(pre)},
                                      "train": {"lr": 1e-3}}))
    out = tmp_path / "ft"
    assert main(_train_args(stripes, out, "--config", str(recipe))) == 0
    assert json.loads((out / "checkpoints" / "best.json").read_text())["pretrained"] == str(pre)
    # The checkpoint file itself is accepted as well.
    best = pre / "checkpoints" / "best.safetensors"
    assert main(_train_args(stripes, tmp_path / "ft2", "--model", "resnet10t",
                            "--pretrained", str(best))) == 0


def test_python_api_pretrains_and_fine_tunes(stripes, tmp_path):
    from medscope import api
    from medscope.config import load_config, load_pretrain_config

    pre = api.pretrain(load_pretrain_config(None, {
        "data.paths": [str(stripes)], "out": str(tmp_path / "pre"), "model.name": "simple_cnn",
        "data.img_size": 32, "train.epochs": 1, "train.batch_size": 12, "train.device": "cpu",
        "pretrain.temperature": 0.5}), progress=False)
    run = api.train(load_config(None, {
        "data.path": str(stripes), "out": str(tmp_path / "ft"), "model.name": "simple_cnn",
        "model.pretrained": str(pre.root), "data.img_size": 32, "train.epochs": 1,
        "train.batch_size": 8, "train.device": "cpu"}), progress=False)
    assert run.is_finished()


def _mixed(tmp_path: Path, odd: dict) -> Path:
    folder = tmp_path / "mixed"
    folder.mkdir()
    Image.fromarray(np.full((32, 32, 3), 90, np.uint8)).save(folder / "a.png")
    size, mode = odd.get("size", 32), odd.get("mode", "RGB")
    shape = (size, size, 3) if mode == "RGB" else (size, size)
    Image.fromarray(np.full(shape, 90, np.uint8), mode).save(folder / "b.png")
    return folder


@pytest.mark.parametrize("case, message", [
    ("no images", "empty: no images found at any depth"),
    ("mixed sizes", "b.png: 48x48 px among 32x32 px images"),
    ("grey and RGB", "b.png: grey among colour images"),
    ("another architecture", "pretrained (self-supervised) as resnet10t, but this run's model "
                             "is simple_cnn"),
    ("predict with a pretraining", "a self-supervised pretraining checkpoint (no classes); "
                                   "fine-tune it first: medscope train --pretrained"),
])
def test_bad_input_is_one_line_and_exit_2(case, message, pre, stripes, tmp_path, capsys):
    if case == "another architecture":
        args = _train_args(stripes, tmp_path / "ft", "--model", "simple_cnn",
                           "--pretrained", str(pre))
    elif case == "predict with a pretraining":
        args = ["predict", str(pre), str(stripes), "--out", str(tmp_path / "p.csv")]
    elif case == "no images":
        (tmp_path / "empty" / "sub").mkdir(parents=True)
        (tmp_path / "empty" / "sub" / "readme.txt").write_text("x")
        args = _pretrain_args(tmp_path / "empty", tmp_path / "out")
    else:
        odd = {"size": 48} if case == "mixed sizes" else {"mode": "L"}
        args = _pretrain_args(_mixed(tmp_path, odd), tmp_path / "out")
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert err.startswith("medscope: error: ")


def test_resume_refuses_another_network(pre, capsys, tmp_path):
    assert main(["pretrain", "-q", "--resume", str(pre), "--model", "resnet18"]) == 2
    assert "cannot change model.name when resuming" in capsys.readouterr().err
