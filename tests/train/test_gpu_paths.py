"""The GPU paths: what CPU can test (torch.compile, the fp16 refusal, backends left alone), and
the CUDA-only ones, skipped without a GPU."""

from __future__ import annotations

import shutil

import pytest
import torch

from medscope.api import train
from medscope.cli import build_parser
from medscope.core.checkpoint import load_checkpoint, model_state, read_meta
from medscope.core.runtime import select_runtime, tune_backends
from medscope.errors import MedscopeError
from tests.conftest import tiny_config

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU here")


def test_compile_flag_sets_the_config_field():
    args = build_parser().parse_args(["train", "--data", "d", "--compile"])
    assert args.opt_train_compile is True


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("c++") is None and shutil.which("g++") is None,
                    reason="torch.compile (inductor) needs a C++ compiler on CPU")
def test_compiled_model_trains_and_saves_plain_weights(image_folder, tmp_path):
    run = train(tiny_config(image_folder, tmp_path / "run", **{
        "train.compile": True, "train.epochs": 1, "train.precision": "fp32",
        "train.batch_size": 10,  # 20 training images: two equal batches, one compilation
        "train.device": "cpu"}), progress=False)
    tensors, meta = load_checkpoint(run.best)
    names = list(model_state(tensors))
    assert meta.epoch == 1 and run.metrics.is_file()
    assert names and not any("_orig_mod" in n or n.startswith("module.") for n in names)


def test_fp16_needs_cuda_and_says_so():
    if torch.cuda.is_available():
        assert select_runtime("cuda", "fp16").fp16
    with pytest.raises(MedscopeError, match="--precision fp16 needs a CUDA GPU"):
        select_runtime("cpu", "fp16")


def test_cpu_runtime_neither_pins_memory_nor_touches_cudnn():
    runtime = select_runtime("cpu", "fp32")
    before = torch.backends.cudnn.benchmark
    tune_backends(runtime, deterministic=False)
    assert not runtime.pin_memory and torch.backends.cudnn.benchmark == before
    assert not runtime.grad_scaler().is_enabled()


def test_cpu_runs_channels_last_in_every_precision_unless_told_not_to():
    # NHWC is oneDNN's fast layout on CPU in fp32 too (docs/speed.md); --set
    # train.channels_last=false still gives NCHW.
    assert select_runtime("cpu", "fp32").channels_last
    assert select_runtime("cpu", "bf16").channels_last
    assert not select_runtime("cpu", "fp32", channels_last=False).channels_last
    model = select_runtime("cpu", "fp32").prepare(torch.nn.Conv2d(3, 4, 3))
    assert model.weight.is_contiguous(memory_format=torch.channels_last)


@needs_cuda
def test_fp16_training_keeps_the_loss_scale_for_resume(image_folder, tmp_path):
    run = train(tiny_config(image_folder, tmp_path / "run", **{
        "train.precision": "fp16", "train.device": "cuda", "train.epochs": 1}), progress=False)
    scaler = read_meta(run.last).fit_state["grad_scaler"]
    assert scaler["scale"] > 0 and torch.backends.cudnn.benchmark


@needs_cuda
def test_cuda_runtime_pins_memory():
    runtime = select_runtime("cuda", "fp32")
    assert runtime.pin_memory
