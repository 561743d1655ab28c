"""Hub weights the timm way, from a Hugging Face cache the test builds in the hub's own layout
(``models--ORG--NAME/snapshots/HASH/...`` and ``refs/main``): used offline, the repo's
config.json read (mean/std, input size, ``hf_hub_filename``), one line when not cached."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

from medscope.errors import MedscopeError
from medscope.models import create_model
from medscope.models.transfer import check_weights_source
from tests.conftest import make_image_folder

SNAPSHOT = "0123456789abcdef0123456789abcdef01234567"
HUB_MEAN, HUB_STD = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]  # not timm's ImageNet defaults


def add_to_cache(home: Path, repo: str, files: dict[str, bytes]) -> Path:
    """``files`` as the snapshot of ``repo`` in the hub cache under ``home`` (HF_HOME)."""
    root = home / "hub" / f"models--{repo.replace('/', '--')}"
    snap = root / "snapshots" / SNAPSHOT
    snap.mkdir(parents=True)
    for name, data in files.items():
        (snap / name).write_bytes(data)
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text(SNAPSHOT)
    return snap


def resnet18_files(tmp_path: Path, weights_name: str = "model.safetensors",
                   **cfg_extra) -> tuple[dict[str, bytes], dict[str, torch.Tensor]]:
    """Random ImageNet-shaped resnet18 weights and a timm-style config.json."""
    torch.manual_seed(3)
    state = {k: v.contiguous() for k, v in
             timm.create_model("resnet18", num_classes=1000).state_dict().items()}
    save_file(state, str(tmp_path / "w.safetensors"))
    config = {"architecture": "resnet18", "num_classes": 1000, "num_features": 512,
              "pretrained_cfg": {"tag": "a1_in1k", "input_size": [3, 160, 160],
                                 "mean": HUB_MEAN, "std": HUB_STD, "interpolation": "bicubic",
                                 "crop_pct": 0.95, "classifier": "fc", **cfg_extra}}
    files = {weights_name: (tmp_path / "w.safetensors").read_bytes(),
             "config.json": json.dumps(config).encode()}
    return files, state


@pytest.fixture
def offline_cache(tmp_path, monkeypatch):
    home = tmp_path / "hf"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return home


@pytest.mark.parametrize("source", ["timm/resnet18.a1_in1k", "hf-hub:timm/resnet18.a1_in1k",
                                    "resnet18.a1_in1k", "imagenet"])
def test_cached_weights_load_offline_with_the_hubs_config(offline_cache, tmp_path, source):
    files, state = resnet18_files(tmp_path)
    add_to_cache(offline_cache, "timm/resnet18.a1_in1k", files)
    model = create_model("resnet18", 2, pretrained=source)
    assert torch.equal(model.conv1.weight, state["conv1.weight"])
    assert torch.equal(model.layer4[1].bn2.running_var, state["layer4.1.bn2.running_var"])
    assert model.fc.weight.shape == (2, 512)  # the 1000-class head is dropped
    assert list(model.pretrained_cfg["mean"]) == HUB_MEAN
    assert list(model.pretrained_cfg["std"]) == HUB_STD
    assert list(model.pretrained_cfg["input_size"]) == [3, 160, 160]
    assert model.pretrained_cfg["classifier"] == "fc"


def test_the_configs_hf_hub_filename_names_the_weights(offline_cache, tmp_path):
    files, state = resnet18_files(tmp_path, weights_name="open_clip_model.safetensors",
                                  hf_hub_filename="open_clip_model.safetensors")
    add_to_cache(offline_cache, "someone/resnet18-custom", files)
    model = create_model("resnet18", 3, pretrained="hf-hub:someone/resnet18-custom")
    assert torch.equal(model.conv1.weight, state["conv1.weight"])


def test_grayscale_model_from_cached_weights(offline_cache, tmp_path):
    files, state = resnet18_files(tmp_path)
    add_to_cache(offline_cache, "timm/resnet18.a1_in1k", files)
    model = create_model("resnet18", 2, in_chans=1, pretrained="timm/resnet18.a1_in1k")
    assert torch.allclose(model.conv1.weight[:, 0], state["conv1.weight"].sum(1))


def test_offline_without_the_weights_in_the_cache_is_one_line(offline_cache, tmp_path):
    for source in ("timm/resnet18.a1_in1k", "hf-hub:timm/resnet18.a1_in1k", "imagenet"):
        with pytest.raises(MedscopeError) as info:
            create_model("resnet18", 2, pretrained=source)
        message = str(info.value)
        assert "\n" not in message
        assert "not in the Hugging Face cache" in message and "HF_HUB_OFFLINE" in message
        assert str(offline_cache / "hub") in message
        assert "--pretrained path/to/weights.safetensors" in message
    # A cache holding only the config is still a missing-weights error, not a crash.
    add_to_cache(offline_cache, "timm/resnet18.a1_in1k", {"config.json": b"{}"})
    with pytest.raises(MedscopeError, match="not in the Hugging Face cache"):
        create_model("resnet18", 2, pretrained="timm/resnet18.a1_in1k")


def test_the_preflight_check_refuses_an_uncached_repo_offline(offline_cache, tmp_path):
    """check_weights_source runs before the data is prepared: the refusal comes at once."""
    with pytest.raises(MedscopeError, match="not in the Hugging Face cache"):
        check_weights_source("timm/resnet18.a1_in1k")
    files, _ = resnet18_files(tmp_path)
    add_to_cache(offline_cache, "timm/resnet18.a1_in1k", files)
    for source in ("timm/resnet18.a1_in1k", "hf-hub:timm/resnet18.a1_in1k", "resnet18.a1_in1k",
                   "imagenet"):  # imagenet: its repo depends on the model, checked at loading
        assert check_weights_source(source) is None


@pytest.mark.slow  # a CLI process: import, train one epoch, evaluate
def test_cli_trains_offline_from_cached_hub_weights(tmp_path):
    files, _ = resnet18_files(tmp_path)
    add_to_cache(tmp_path / "hf", "timm/resnet18.a1_in1k", files)
    data = make_image_folder(tmp_path / "data", per_class=8, size=32)
    out = tmp_path / "run"
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1",
           "OMP_NUM_THREADS": "1"}
    env.pop("HF_HUB_CACHE", None)
    done = subprocess.run(
        [sys.executable, "-m", "medscope", "train", "-q", "--model", "resnet18",
         "--pretrained", "timm/resnet18.a1_in1k", "--data", str(data), "--out", str(out),
         "--img-size", "32", "--epochs", "1", "--batch-size", "8", "--no-cache"],
        env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    meta = json.loads((out / "checkpoints" / "best.json").read_text())
    assert meta["pretrained"] == "timm/resnet18.a1_in1k"
    assert meta["mean"] == pytest.approx(HUB_MEAN) and meta["std"] == pytest.approx(HUB_STD)
