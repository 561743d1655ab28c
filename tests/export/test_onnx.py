"""ONNX export: parity with PyTorch, the metadata contract, the CLI and user mistakes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from medscope.cli import main
from medscope.data.io import read_image
from medscope.errors import MedscopeError
from medscope.export import OnnxPredictor, export_onnx
from medscope.predictor import Predictor


@pytest.fixture(scope="module")
def exported(trained_run, tmp_path_factory):
    return export_onnx(trained_run.root, tmp_path_factory.mktemp("onnx") / "dyn")


def _torch_logits(predictor: Predictor, pixels: np.ndarray) -> np.ndarray:
    x = torch.from_numpy(pixels).permute(0, 3, 1, 2)
    with torch.no_grad():
        return predictor.model(predictor.normalize(x)).numpy()


def _folder_pixels(image_folder, n: int) -> np.ndarray:
    paths = sorted(image_folder.rglob("*.png"))[:: 36 // n][:n]
    return np.stack([read_image(p, 32, 3) for p in paths])


@pytest.mark.parametrize("batch", [1, 8])
@pytest.mark.parametrize("kind", ["random", "folder"])
def test_onnxruntime_matches_pytorch_logits(trained_run, exported, image_folder, batch, kind):
    torch_side = Predictor.load(trained_run.root, precision="fp32", device="cpu")
    onnx_side = OnnxPredictor.load(exported)
    pixels = (np.random.default_rng(batch).integers(0, 256, (batch, 32, 32, 3), dtype=np.uint8)
              if kind == "random" else _folder_pixels(image_folder, batch))
    diff = np.abs(onnx_side.logits_from_pixels(pixels) - _torch_logits(torch_side, pixels))
    assert diff.max() < 1e-4
    np.testing.assert_allclose(onnx_side.probs_from_pixels(pixels),
                               torch_side.probs_from_pixels(pixels), atol=1e-5)


def test_model_json_records_the_input_contract(trained_run, exported):
    meta = json.loads(exported.with_name("model.json").read_text())
    ckpt = json.loads(trained_run.best.with_suffix(".json").read_text())
    assert meta["format"] == "medscope-onnx/1" and meta["classes"] == ckpt["classes"]
    assert meta["mean"] == ckpt["mean"] and meta["std"] == ckpt["std"]
    assert meta["temperature"] == ckpt["temperature"]  # fitted on validation at training end
    spec = meta["onnx"]["input"]
    assert spec["shape"] == ["N", 3, 32, 32] and spec["range"] == [0, 255]
    assert "in graph" in spec["normalization"]
    assert len(meta["onnx"]["source_checkpoint"]) == 64


def test_temperature_from_model_json_softens_probabilities(exported, tmp_path):
    folder = tmp_path / "hot"
    folder.mkdir()
    (folder / "model.onnx").write_bytes(exported.read_bytes())
    meta = json.loads(exported.with_name("model.json").read_text())
    (folder / "model.json").write_text(json.dumps({**meta, "temperature": 4.0}))
    pixels = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    cold, hot = OnnxPredictor.load(exported), OnnxPredictor.load(folder)
    logits = cold.logits_from_pixels(pixels)
    expected = torch.softmax(torch.from_numpy(logits) / 4.0, 1).numpy()
    np.testing.assert_allclose(hot.probs_from_pixels(pixels), expected, atol=1e-6)
    # Softer than the raw logits' softmax (T = 1); the run's own fitted temperature, which
    # ``cold`` applies, may be above 4 for a tiny over-confident model.
    raw = torch.softmax(torch.from_numpy(logits), 1).numpy()
    assert hot.probs_from_pixels(pixels).max() < raw.max()


@pytest.mark.slow
def test_cli_static_batch_export_runs_one_by_one(trained_run, tmp_path, capsys):
    out = tmp_path / "static"
    rc = main(["export", str(trained_run.root), "--format", "onnx", "--static-batch",
               "--out", str(out), "-q"])
    assert rc == 0 and "model.onnx" in capsys.readouterr().out
    onnx_side = OnnxPredictor.load(out / "model.json")
    assert onnx_side.session.get_inputs()[0].shape == [1, 3, 32, 32]
    pixels = np.random.default_rng(3).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    torch_side = Predictor.load(trained_run.root, precision="fp32", device="cpu")
    assert np.abs(onnx_side.logits_from_pixels(pixels)
                  - _torch_logits(torch_side, pixels)).max() < 1e-4


def test_loading_something_else_is_a_user_error(tmp_path, trained_run, capsys):
    with pytest.raises(MedscopeError, match="model.json: not found"):
        OnnxPredictor.load(tmp_path)
    (tmp_path / "model.json").write_text(json.dumps({"classes": ["a"]}))
    with pytest.raises(MedscopeError, match="not a medscope ONNX export"):
        OnnxPredictor.load(tmp_path)
    rc = main(["export", str(trained_run.root), "--opset", "11", "--out", str(tmp_path), "-q"])
    assert rc == 2 and "--opset 11" in capsys.readouterr().err


@pytest.mark.slow
def test_int8_export_agrees_with_fp32_and_says_how_it_was_quantized(trained_run, image_folder,
                                                                    tmp_path):
    path = export_onnx(trained_run.root, tmp_path / "int8", int8=True, calibration_images=16)
    meta = json.loads(path.with_name("model.json").read_text())
    assert meta["onnx"]["quantization"]["calibration_images"] == 16
    assert meta["onnx"]["quantization"]["calibration_split"] == "train"
    graph_ops = {node.op_type for node in __import__("onnx").load(str(path)).graph.node}
    assert "QuantizeLinear" in graph_ops and "DequantizeLinear" in graph_ops
    pixels = _folder_pixels(image_folder, 36)
    fp32 = Predictor.load(trained_run.root, precision="fp32", device="cpu")
    ref = fp32.probs_from_pixels(pixels)
    got = OnnxPredictor.load(path).probs_from_pixels(pixels)
    assert (got.argmax(1) == ref.argmax(1)).mean() >= 0.9
    assert np.abs(got - ref).max() < 0.15


@pytest.mark.slow
def test_predict_backend_onnx_int8_exports_once_into_the_run(trained_run, image_folder,
                                                             tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained_run.root, run)
    images = sorted(image_folder.rglob("*.png"))[:4]
    assert main(["predict", str(run), *map(str, images), "--backend", "onnx-int8",
                 "--out", str(tmp_path / "p.csv")]) in (0, None)
    assert (run / "onnx-int8" / "model.onnx").is_file()
    assert len((tmp_path / "p.csv").read_text().splitlines()) == 5


def test_int8_export_of_a_bare_checkpoint_is_a_user_error(trained_run, tmp_path):
    with pytest.raises(MedscopeError, match="int8 export needs a run directory"):
        export_onnx(trained_run.best.with_suffix(".safetensors"), tmp_path / "x", int8=True)
