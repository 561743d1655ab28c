"""Stain normalisation end to end (issue #42): ``data.stain_norm: reinhard`` is fitted on the
training images, kept in the checkpoint, and applied identically by predict, the Predictor and
the ONNX export (fp32 to 1e-3; int8 with the stain nodes left in float)."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch

from medscope.cli._training import add_train_args, train_config
from medscope.config import load_config
from medscope.core.checkpoint import read_meta
from medscope.data.io import read_image
from medscope.data.stain import StainNormalize, stain_normalised_pixels
from medscope.data.transforms import channel_stats
from medscope.errors import MedscopeError
from medscope.export import OnnxPredictor, export_onnx
from medscope.export.onnx import input_nodes
from medscope.predictor import Predictor
from tests.conftest import tiny_config


@pytest.fixture(scope="module")
def stain_run(image_folder, tmp_path_factory):
    from medscope.api import train

    config = tiny_config(image_folder, tmp_path_factory.mktemp("runs") / "stain",
                         **{"data.stain_norm": "reinhard"})
    return train(config, progress=False)


@pytest.fixture(scope="module")
def images(image_folder):
    return sorted(image_folder.rglob("*.png"))[::6]


def _pixels(paths) -> np.ndarray:
    return np.stack([read_image(p, 32, 3) for p in paths])


def test_the_checkpoint_keeps_the_fitted_state_and_statistics_of_normalised_images(
        stain_run):
    meta = read_meta(stain_run.best)
    state = meta.stain_norm
    assert state is not None and state["method"] == "reinhard"
    assert len(state["mean"]) == 3 and len(state["std"]) == 3
    assert 0 < state["mean"][0] < 100  # L* of the training images
    # Normalize's statistics are those of the stain-normalised training images
    from medscope.data.prepare import run_split

    samples, _, _ = run_split(stain_run, meta.classes, "train")
    train = _pixels([s.path for s in samples])
    mean, std = channel_stats(stain_normalised_pixels(train, state))
    np.testing.assert_allclose(meta.mean, mean, atol=0.02)
    np.testing.assert_allclose(meta.std, std, atol=0.02)
    assert "stain_norm: reinhard" in stain_run.config.read_text()


def test_predict_gives_the_probabilities_of_the_predictor_applying_it(stain_run, images):
    from medscope.api import predict

    predictor = Predictor.load(stain_run.root, precision="fp32", device="cpu")
    assert isinstance(predictor.normalize[0], StainNormalize)
    rows = predict(stain_run.root, images, progress=False, precision="fp32", device="cpu")
    got = np.array([[r[f"p_{c}"] for c in predictor.classes] for r in rows])
    want = predictor.probs_from_pixels(_pixels(images))
    np.testing.assert_allclose(got, want, atol=1e-5)
    # ... and the normalisation matters: without it the same weights answer otherwise
    bare = Predictor(predictor.model, predictor.info.model_copy(update={"stain_norm": None}),
                     predictor.runtime)
    assert np.abs(bare.probs_from_pixels(_pixels(images)) - want).max() > 1e-3


@pytest.mark.slow
def test_onnx_export_folds_it_in_and_matches_pytorch(stain_run, images, tmp_path):
    path = export_onnx(stain_run.root, tmp_path / "onnx")
    meta = json.loads(path.with_name("model.json").read_text())
    torch_side = Predictor.load(stain_run.root, precision="fp32", device="cpu")
    assert meta["stain_norm"] == torch_side.info.stain_norm
    assert "reinhard stain normalisation" in meta["onnx"]["input"]["normalization"]
    pixels = np.concatenate([
        _pixels(images),
        np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)])
    onnx_side = OnnxPredictor.load(path)
    np.testing.assert_allclose(onnx_side.probs_from_pixels(pixels),
                               torch_side.probs_from_pixels(pixels), atol=1e-3)
    x = torch.from_numpy(pixels).permute(0, 3, 1, 2)
    with torch.no_grad():
        logits = torch_side.model(torch_side.normalize(x)).numpy()
    assert np.abs(onnx_side.logits_from_pixels(pixels) - logits).max() < 1e-3


@pytest.mark.slow
def test_int8_export_leaves_the_stain_nodes_in_float(stain_run, images, tmp_path):
    import onnx

    fp32 = export_onnx(stain_run.root, tmp_path / "fp32")
    stain_nodes = input_nodes(str(fp32))
    assert {"Pow", "Where", "ReduceMean"} <= {
        n.op_type for n in onnx.load(str(fp32)).graph.node if n.name in stain_nodes}
    path = export_onnx(stain_run.root, tmp_path / "int8", int8=True, calibration_images=16)
    graph = onnx.load(str(path)).graph
    dequantized = {n.output[0] for n in graph.node if n.op_type == "DequantizeLinear"}
    kept = [n for n in graph.node if n.name in stain_nodes]
    assert len(kept) == len(stain_nodes)
    assert not any(set(n.input) & dequantized for n in kept)  # fed by float tensors only
    assert any(n.op_type == "QuantizeLinear" for n in graph.node)
    meta = json.loads(path.with_name("model.json").read_text())
    assert meta["onnx"]["quantization"]["float_nodes"].endswith(f"({len(stain_nodes)} nodes)")
    pixels = _pixels(images)
    ref = Predictor.load(stain_run.root, precision="fp32", device="cpu").probs_from_pixels(pixels)
    got = OnnxPredictor.load(path).probs_from_pixels(pixels)
    assert np.abs(got - ref).max() < 0.15


def test_the_cli_flag_and_its_checks(tmp_path):
    parser = argparse.ArgumentParser()
    add_train_args(parser)
    args = parser.parse_args(["--stain-norm", "reinhard", "--data", str(tmp_path)])
    assert train_config(args).data.stain_norm == "reinhard"
    assert parser.parse_args([]).opt_data_stain_norm is None  # the recipe's value stands
    with pytest.raises(SystemExit):
        parser.parse_args(["--stain-norm", "macenko"])
    with pytest.raises(MedscopeError, match=r"data\.stain_norm: .*data\.in_chans 3") as err:
        load_config(overrides={"data.stain_norm": "reinhard", "data.in_chans": 1})
    assert "\n" not in str(err.value)
