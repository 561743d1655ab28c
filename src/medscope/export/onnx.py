"""ONNX export of a trained model, and a predictor that runs it with onnxruntime (CPU).

The graph takes **float32 pixels on the 0-255 scale**, N x C x S x S (an image read by
``read_image``, transposed and cast; no scaling by the caller): the checkpoint's normalisation
``(x / 255 - mean) / std`` is folded into the graph, so a consumer only has to resize and can
never normalise twice or with the wrong statistics. The graph outputs raw logits; the
temperature (``model.json``) is applied outside, as ``Predictor`` does. ``model.json`` is the
checkpoint metadata plus an ``onnx`` section describing this contract; it is written last, so
its presence means the export is complete. Nothing is ever unpickled.

Exporter: ``torch.onnx.export(dynamo=True)`` (torch.export + onnxscript), the supported path
since torch 2.9; the TorchScript exporter is deprecated.

A checkpoint with stain normalisation (``stain_norm``, ``medscope.data.stain``) has it folded
in too, before ``Normalize``: the graph still takes raw pixels, and ``model.json`` carries the
state.

``int8``: the exported graph statically quantized by ``onnxruntime.quantization`` (QDQ, int8
weights per channel, uint8 activations), its activation ranges calibrated on images of the
run's own training split; same input contract, ``model.json`` says how it was quantized. The
input normalisation's nodes stay float (``input_nodes``): the stain normalisation's colour
maths (powers, cube roots, per-image statistics) would not survive 8-bit activations.
"""

from __future__ import annotations

import ast
import hashlib
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from medscope.errors import MedscopeError, first_line
from medscope.predictor import MetaClassifier, Predictor, checkpoint_stem
from medscope.run import atomic_write_json, read_json

log = logging.getLogger(__name__)

FORMAT = "medscope-onnx/1"
MODEL_FILE, META_FILE = "model.onnx", "model.json"
INPUT, OUTPUT = "pixels", "logits"
DEFAULT_OPSET = 18  # the oldest opset the dynamo exporter emits natively
CALIBRATION_IMAGES = 256  # int8: activation ranges settle well before this on CNNs
# Training-only metadata that does not describe the exported model.
_DROP_META = ("optimizer_param_groups", "fit_state")


class _NormalisedModel(nn.Module):
    """0-255 float pixels -> logits: the checkpoint's normalisation, then the network."""

    def __init__(self, normalize: nn.Module, model: nn.Module) -> None:
        super().__init__()
        self.normalize, self.model = normalize, model

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model(self.normalize(pixels))


def default_export_dir(source: Path | str, int8: bool = False) -> Path:
    """Where an export of ``source`` goes unless told: ``RUN/onnx`` (``RUN/onnx-int8``) for a
    run directory, ``<stem>_onnx`` (``<stem>_onnx_int8``) beside a checkpoint pair."""

    source = Path(source)
    stem = checkpoint_stem(source)
    if source.is_dir():
        return source / ("onnx-int8" if int8 else "onnx")
    return stem.parent / f"{stem.name}_onnx{'_int8' if int8 else ''}"


def export_onnx(run_or_ckpt: Path | str, out_dir: Path | str | None = None, *,
                opset: int = DEFAULT_OPSET, dynamic_batch: bool = True, int8: bool = False,
                calibration_images: int = CALIBRATION_IMAGES) -> Path:
    """Write ``model.onnx`` and ``model.json`` to ``out_dir``; returns the ``model.onnx`` path.
    With ``dynamic_batch`` the batch dimension is free, else fixed to 1. With ``int8`` the
    graph is statically quantized, calibrated on up to ``calibration_images`` images of the
    run's training split (``run_or_ckpt`` must then be a run directory)."""

    if opset < DEFAULT_OPSET:
        raise MedscopeError(f"--opset {opset}: the exporter needs {DEFAULT_OPSET} or newer")
    stem = checkpoint_stem(run_or_ckpt)
    predictor = Predictor.load(run_or_ckpt, precision="fp32", device="cpu")
    out = Path(out_dir) if out_dir is not None else default_export_dir(run_or_ckpt, int8)
    calibration = (calibration_pixels(run_or_ckpt, predictor, calibration_images) if int8
                   else None)
    graph = _NormalisedModel(predictor.normalize, predictor.model).eval()
    graph = graph.to(memory_format=torch.contiguous_format)
    chans, size = predictor.in_chans, predictor.img_size
    example = torch.full((2 if dynamic_batch else 1, chans, size, size), 127.0)
    dynamic = {INPUT: {0: torch.export.Dim("batch", min=1, max=65536)}} if dynamic_batch else None
    out.mkdir(parents=True, exist_ok=True)
    (out / META_FILE).unlink(missing_ok=True)  # incomplete until model.json is back
    fd, tmp = tempfile.mkstemp(dir=out, prefix=".model.", suffix=".onnx")
    os.close(fd)
    quantized = f"{tmp}.int8.onnx"
    keep_float: list[str] = []
    try:
        _export(graph, example, tmp, opset, dynamic, predictor.meta["model"])
        if calibration is not None:
            keep_float = input_nodes(tmp)
            quantize_int8(tmp, quantized, calibration, batch=8 if dynamic_batch else 1,
                          keep_float=keep_float)
            os.replace(quantized, tmp)
        os.replace(tmp, out / MODEL_FILE)
    finally:
        Path(tmp).unlink(missing_ok=True)
        Path(quantized).unlink(missing_ok=True)
    meta = export_meta(predictor, stem, opset, dynamic_batch)
    if calibration is not None:
        meta["onnx"]["quantization"] = {
            "tool": "onnxruntime.quantization.quantize_static", "format": "QDQ",
            "weights": "int8, per channel", "activations": "uint8", "calibration": "MinMax",
            "calibration_images": len(calibration), "calibration_split": "train",
            "float_nodes": f"the input normalisation ({len(keep_float)} nodes)"}
    atomic_write_json(out / META_FILE, meta)
    return out / MODEL_FILE


def calibration_pixels(run_dir: Path | str, predictor: Any, n: int) -> np.ndarray:
    """Up to ``n`` images of a run's training split (seeded random pick), decoded as the
    model sees them: what int8 calibration measures activation ranges on."""
    from medscope.data.prepare import run_split
    from medscope.run import RunDir

    run = RunDir(run_dir)
    if not Path(run_dir).is_dir() or not run.splits.is_file() or not run.config.is_file():
        raise MedscopeError(f"{run_dir}: int8 export needs a run directory (its training "
                            "split calibrates the quantization)")
    if n < 1:
        raise MedscopeError(f"calibration images {n}: must be at least 1")
    samples, _, _ = run_split(run, predictor.classes, "train")
    if not samples:
        raise MedscopeError(f"{run.splits}: no training images to calibrate int8 on")
    pick = np.random.default_rng(0).permutation(len(samples))[:n]
    decoded = predictor.decode([samples[i] for i in sorted(pick)], progress=False)
    if not len(decoded.pixels):
        raise MedscopeError(f"{run_dir}: none of the training images could be read")
    return np.asarray(decoded.pixels)


def input_nodes(path: str) -> list[str]:
    """The names of the exported graph's nodes that come from the input normalisation
    (``_NormalisedModel.normalize``: stain normalisation and ``Normalize``), by the module
    scopes the dynamo exporter records in each node's metadata."""
    import onnx

    names = []
    for node in onnx.load(path).graph.node:
        scopes = next((p.value for p in node.metadata_props
                       if p.key == "pkg.torch.onnx.name_scopes"), "[]")
        try:
            scope = ast.literal_eval(scopes)
        except (ValueError, SyntaxError):
            continue
        if isinstance(scope, list) and len(scope) > 1 and scope[1] == "normalize":
            names.append(node.name)
    return names


def quantize_int8(src: str, dst: str, pixels: np.ndarray, batch: int,
                  keep_float: list[str] | None = None) -> None:
    """Static int8 quantization of ``src`` into ``dst``, ranges calibrated on ``pixels``; the
    nodes named in ``keep_float`` are left in float."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{INPUT: _nchw(pixels[i:i + batch])}
                                 for i in range(0, len(pixels), batch)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.batches, None)

    try:
        quantize_static(src, dst, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax,
                        nodes_to_exclude=list(keep_float or ()))
    except Exception as exc:  # onnxruntime raises many types; the user needs the first line
        first = first_line(exc)
        raise MedscopeError(f"int8 quantization failed ({first})") from exc


def _export(graph: nn.Module, example: torch.Tensor, path: str, opset: int,
            dynamic: dict | None, name: str) -> None:
    try:
        with torch.no_grad():
            torch.onnx.export(graph, (example,), path, input_names=[INPUT],
                              output_names=[OUTPUT], opset_version=opset, dynamo=True,
                              dynamic_shapes=dynamic, external_data=False, verbose=False)
    except Exception as exc:  # the exporter raises many types; the user needs the first line
        first = first_line(exc)
        raise MedscopeError(f"{name}: ONNX export failed ({first})") from exc


def export_meta(predictor: Any, stem: Path, opset: int, dynamic_batch: bool) -> dict[str, Any]:
    meta = {k: v for k, v in predictor.meta.items() if k not in _DROP_META}
    chans, size = predictor.in_chans, predictor.img_size
    batch = "N" if dynamic_batch else 1
    meta.update({
        "checkpoint_format": meta.get("format"),
        "format": FORMAT,
        "temperature": float(predictor.temperature),
        "onnx": {
            "file": MODEL_FILE, "opset": opset, "exporter": "torch.onnx.export(dynamo=True)",
            "torch": torch.__version__, "dynamic_batch": dynamic_batch,
            "input": {"name": INPUT, "shape": [batch, chans, size, size], "dtype": "float32",
                      "layout": "NCHW", "range": [0, 255],
                      "normalization": _normalisation_note(meta)},
            "output": {"name": OUTPUT, "shape": [batch, len(predictor.classes)],
                       "probabilities": ("sigmoid(logits) >= thresholds" if predictor.multilabel
                                         else "softmax(logits / temperature)")},
            "source_checkpoint": checkpoint_digest(stem),
        },
    })
    return meta


def _normalisation_note(meta: dict[str, Any]) -> str:
    stain = meta.get("stain_norm")
    if not stain:
        return "in graph: (x / 255 - mean) / std"
    return (f"in graph: {stain['method']} stain normalisation (stain_norm), then "
            "(x / 255 - mean) / std")


def checkpoint_digest(stem: Path) -> str:
    """sha256 of the checkpoint's weights and metadata: tells whether an export is still that
    model's. The metadata counts because the export copies its temperature, thresholds and
    classes, which can change while the weights do not."""
    stem = Path(stem)
    meta = stem.with_suffix(".json")
    digest = hashlib.sha256()
    for path in (stem.with_suffix(".safetensors"), *([meta] if meta.is_file() else [])):
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


class OnnxPredictor(MetaClassifier):
    """A ``Classifier`` over an exported model, run by onnxruntime (CPU); properties, calibration
    and decoding are ``Predictor``'s own (``MetaClassifier``)."""

    def __init__(self, session: Any, meta: dict[str, Any]) -> None:
        self.session, self._meta = session, meta
        self.dynamic_batch = bool(meta["onnx"]["dynamic_batch"])

    @classmethod
    def load(cls, path: Path | str) -> OnnxPredictor:
        """From an export directory, its ``model.onnx`` or its ``model.json``."""
        import onnxruntime as ort

        path = Path(path)
        folder = path if path.is_dir() else path.parent
        meta_path, model_path = folder / META_FILE, folder / MODEL_FILE
        if not meta_path.is_file():
            raise MedscopeError(f"{meta_path}: not found (export with `medscope export`)")
        meta = read_json(meta_path)
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise MedscopeError(f"{meta_path}: not a medscope ONNX export ({FORMAT})")
        if not model_path.is_file():
            raise MedscopeError(f"{model_path}: not found")
        try:
            session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
            raise MedscopeError(f"{model_path}: not a loadable ONNX model ({exc})") from None
        return cls(session, meta)

    def logits_from_pixels(self, pixels: np.ndarray, batch_size: int = 64) -> np.ndarray:
        """N x K float32 logits (before temperature) for N x S x S x C uint8 pixels."""
        step = batch_size if self.dynamic_batch else 1
        outs = [self.session.run([OUTPUT], {INPUT: _nchw(pixels[i:i + step])})[0]
                for i in range(0, len(pixels), step)]
        k = len(self.classes)
        return np.concatenate(outs).astype(np.float32) if outs else np.empty((0, k), np.float32)


def _nchw(pixels: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(pixels.transpose(0, 3, 1, 2), dtype=np.float32)
